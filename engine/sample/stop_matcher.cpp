// StopMatcher: see stop_matcher.h for the contract.
//
// Why holding back the longest "suffix that is a proper prefix of a stop string" is enough: a
// match that completes in future text and starts at position s means held_[s:] is a proper prefix
// of that stop string, so s lies inside the held suffix. Text before it can be emitted for good.
// The held suffix is shorter than the longest stop string (<= 256 bytes), so each step scans at
// most 255 bytes of old text plus the new chunk.
#include "engine/sample/stop_matcher.h"

#include <algorithm>
#include <cstring>

namespace asl::sample {
namespace {

bool IsContinuationByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

}  // namespace

StopMatcher::StopMatcher(std::vector<std::string> stop_strings) : stop_strings_(std::move(stop_strings)) {
  // Empty stop strings are rejected by ValidateSamplingParams; ignore them here rather than
  // matching at every position.
  stop_strings_.erase(std::remove(stop_strings_.begin(), stop_strings_.end(), std::string()), stop_strings_.end());
  for (const std::string& s : stop_strings_) max_stop_len_ = std::max(max_stop_len_, s.size());
}

StopMatcher::Result StopMatcher::Push(std::string_view text) {
  Result r;
  if (!matched_) r.text = Process(text, /*final=*/false);
  r.matched = matched_;
  if (matched_) r.stop_string = stop_strings_[match_index_];
  return r;
}

std::string StopMatcher::Flush(std::string_view text) {
  if (matched_) return {};
  return Process(text, /*final=*/true);
}

std::string StopMatcher::Process(std::string_view text, bool final) {
  if (stop_strings_.empty()) return std::string(text);
  held_.append(text);

  // Earliest end, then earliest start. Only matches ending inside the new text are possible: any
  // other would have been found by an earlier call.
  size_t best_end = std::string::npos, best_start = 0, best_index = 0;
  for (size_t k = 0; k < stop_strings_.size(); ++k) {
    const size_t pos = held_.find(stop_strings_[k]);
    if (pos == std::string::npos) continue;
    const size_t end = pos + stop_strings_[k].size();
    if (end < best_end || (end == best_end && pos < best_start)) {
      best_end = end;
      best_start = pos;
      best_index = k;
    }
  }
  // find() returns the first occurrence of each string; an earlier-ending match of the same
  // string cannot start later, so the first occurrence is that string's earliest end.
  if (best_end != std::string::npos) {
    matched_ = true;
    match_index_ = best_index;
    std::string out = held_.substr(0, best_start);
    held_.clear();
    return out;
  }
  if (final) {
    std::string out = std::move(held_);
    held_.clear();
    return out;
  }

  // Longest suffix of held_ that is a proper prefix of some stop string.
  size_t keep = 0;
  const size_t limit = std::min(held_.size(), max_stop_len_ - 1);
  for (const std::string& s : stop_strings_) {
    for (size_t len = std::min(limit, s.size() - 1); len > keep; --len) {
      if (std::memcmp(held_.data() + held_.size() - len, s.data(), len) == 0) {
        keep = len;
        break;
      }
    }
  }
  // Never split a character: with valid UTF-8 stop strings the suffix already starts on a
  // character boundary; this only matters for input that is not.
  size_t split = held_.size() - keep;
  while (split > 0 && split < held_.size() && IsContinuationByte(held_[split])) --split;
  std::string out = held_.substr(0, split);
  held_.erase(0, split);
  return out;
}

}  // namespace asl::sample
