#include "tools/eval/scoring.h"

#include "tools/eval/haystack.h"

namespace asl::eval {

std::string PostprocessPrediction(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    out.push_back(static_cast<unsigned char>(c) < 0x20 ? '\n' : c);
  }
  const char* ws = " \t\n\r\v\f";
  const size_t b = out.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return out.substr(b, out.find_last_not_of(ws) - b + 1);
}

double StringMatchAll(std::string_view prediction, const std::vector<std::string>& references) {
  if (references.empty()) return 0.0;
  const std::string pred = ToLowerAscii(PostprocessPrediction(prediction));
  int found = 0;
  for (const auto& r : references) found += pred.find(ToLowerAscii(r)) != std::string::npos;
  return static_cast<double>(found) / static_cast<double>(references.size());
}

double NiahScore(std::string_view prediction, const std::string& number) {
  return prediction.find(number) != std::string_view::npos ? 1.0 : 0.0;
}

}  // namespace asl::eval
