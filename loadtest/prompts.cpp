#include "loadtest/prompts.h"

#include <grpcpp/grpcpp.h>

#include <fstream>
#include <limits>
#include <random>

namespace asl::loadtest {
namespace {

// Plain expository prose (written for this tool), so that prefill sees natural-language
// attention patterns rather than repeated tokens.
constexpr const char* kEssay =
    "The history of the printing press is often told as the story of one machine, but it is better "
    "understood as the meeting of several older crafts. Metalworkers had long known how to cast small "
    "objects in molds, vintners and papermakers used screw presses, and scribes had refined inks that "
    "would cling to parchment. What changed in the fifteenth century was that these skills were brought "
    "together in one workshop, with a steady demand for books from universities, churches and merchants. "
    "The result was not only cheaper books but a different relation between readers and texts. A scholar "
    "in one city could now be confident that a colleague far away was reading the same words on the same "
    "page, and errors, once corrected, stayed corrected across an entire edition.\n\n"
    "Rivers shape the land they cross in ways that are slow to see and easy to underestimate. A river "
    "carries sediment from the mountains to the sea, dropping the heaviest grains where the current slows "
    "and carrying the finest clay to its mouth. Over centuries the channel wanders across its plain, "
    "cutting into the outer bank of each bend and building up the inner one, until a meander is cut off "
    "and left behind as a quiet lake. Farmers have always valued these plains for their rich soil, and "
    "engineers have spent fortunes trying to hold rivers in place with levees and concrete, often only to "
    "move the flooding somewhere else downstream.\n\n"
    "Learning a second language as an adult is less a matter of memorising words than of retraining "
    "attention. The ear must learn which differences in sound matter and which can be ignored, the mouth "
    "must find positions it has never used, and the mind must stop translating and start predicting. "
    "Researchers who study this process note that regular, spaced practice beats long sessions, that "
    "comprehensible input matters more than drills, and that the fear of making mistakes is one of the "
    "largest obstacles. Those who succeed tend to treat the language as a way of doing things with people "
    "rather than as a subject to be mastered.\n\n"
    "Cities grow in layers. Beneath the streets of an old town lie the foundations of earlier buildings, "
    "the lines of forgotten walls and the courses of streams that were covered over long ago. Planners "
    "who ignore this history are often surprised by it: a new tunnel meets a medieval well, or a park "
    "floods because it sits in the bed of a buried brook. The most successful renewals treat the past as "
    "a resource, keeping the street pattern that people already know while changing what happens inside "
    "the buildings, so that a warehouse district becomes a neighbourhood without losing its character.\n\n";

}  // namespace

Tokenizer GrpcTokenizer(v1::Generation::Stub& stub) {
  return [&stub](const std::string& text, bool add_bos, std::vector<int32_t>* ids, std::string* error) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::TokenizeRequest req;
    req.set_text(text);
    req.set_add_bos(add_bos);
    v1::TokenizeResponse resp;
    const grpc::Status st = stub.Tokenize(&ctx, req, &resp);
    if (!st.ok()) {
      *error = "Tokenize failed: " + st.error_message();
      return false;
    }
    ids->assign(resp.token_ids().begin(), resp.token_ids().end());
    return true;
  };
}

bool MakePrompts(const PromptOptions& options, const Tokenizer& tokenize, std::vector<Prompt>* out,
                 std::string* error) {
  std::vector<std::string> texts;
  if (!options.file.empty()) {
    std::ifstream in(options.file);
    if (!in) {
      *error = "--prompt-file: cannot open " + options.file;
      return false;
    }
    for (std::string line; std::getline(in, line);) {
      if (!line.empty()) texts.push_back(line);
    }
    if (texts.empty()) {
      *error = "--prompt-file: no prompts in " + options.file;
      return false;
    }
  } else {
    texts.emplace_back(kEssay);
  }
  std::mt19937_64 rng(options.seed);
  out->clear();
  if (options.num_tokens <= 0) {
    for (int64_t i = 0; i < options.count; ++i) out->push_back({texts[static_cast<size_t>(i) % texts.size()], {}});
    return true;
  }
  // One token stream of all texts, repeated until a window of any offset fits.
  std::string all;
  for (const std::string& t : texts) all += t + "\n\n";
  std::vector<int32_t> with_bos, ids;
  if (!tokenize(all, /*add_bos=*/true, &with_bos, error) || !tokenize(all, /*add_bos=*/false, &ids, error)) {
    return false;
  }
  if (ids.empty()) {
    *error = "the prompt text tokenizes to nothing";
    return false;
  }
  const bool has_bos = with_bos.size() == ids.size() + 1;
  const size_t period = ids.size();
  const size_t body = static_cast<size_t>(options.num_tokens) - (has_bos ? 1 : 0);
  while (ids.size() < body + period) ids.insert(ids.end(), ids.begin(), ids.begin() + static_cast<long>(period));
  for (int64_t i = 0; i < options.count; ++i) {
    const size_t offset = options.count == 1 ? 0 : rng() % period;
    Prompt p;
    if (has_bos) p.token_ids.push_back(with_bos.front());
    p.token_ids.insert(p.token_ids.end(), ids.begin() + static_cast<long>(offset),
                       ids.begin() + static_cast<long>(offset + body));
    out->push_back(std::move(p));
  }
  return true;
}

bool ReadPromptsFile(const std::string& path, std::vector<Prompt>* out, std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = "--prompt-ids: cannot open " + path;
    return false;
  }
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  const nlohmann::json* list = &j;
  if (j.is_object() && j.contains("prompts")) list = &j["prompts"];
  if (j.is_discarded() || !list->is_array() || list->empty()) {
    *error = "--prompt-ids: " + path + " is not {\"prompts\": [[ids...], ...]}";
    return false;
  }
  out->clear();
  for (size_t i = 0; i < list->size(); ++i) {
    const nlohmann::json& p = (*list)[i];
    Prompt prompt;
    if (p.is_string() && !p.get<std::string>().empty()) {
      prompt.text = p.get<std::string>();
    } else if (p.is_array() && !p.empty()) {
      for (const nlohmann::json& t : p) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
          *error = "--prompt-ids: prompt " + std::to_string(i) + " has a bad token id " + t.dump();
          return false;
        }
        prompt.token_ids.push_back(t.get<int32_t>());
      }
    } else {
      *error = "--prompt-ids: prompt " + std::to_string(i) + " is neither a non-empty id array nor a string";
      return false;
    }
    out->push_back(std::move(prompt));
  }
  return true;
}

bool WritePromptsFile(const std::string& path, const std::vector<Prompt>& prompts, const nlohmann::json& meta,
                      std::string* error) {
  nlohmann::json list = nlohmann::json::array();
  for (const Prompt& p : prompts) {
    if (p.token_ids.empty()) {
      list.push_back(p.text);
    } else {
      list.push_back(p.token_ids);
    }
  }
  nlohmann::json j = meta.is_object() ? meta : nlohmann::json::object();
  j["prompts"] = std::move(list);
  std::ofstream f(path);
  f << j.dump() << "\n";
  if (!f) {
    *error = "--save-prompts: cannot write " + path;
    return false;
  }
  return true;
}

}  // namespace asl::loadtest
