// Tokenizer::SpecFromTokenizerJson: a TokenizerSpec from Hugging Face's tokenizer.json and
// tokenizer_config.json. The only JSON in the tokenizer; nothing outside this file sees it.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/common/logging.h"
#include "engine/tokenizer/pretokenizer.h"
#include "engine/tokenizer/tokenizer.h"

namespace asl::tok {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

StatusOr<json> ReadJson(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return NotFound("cannot read " + path.string());
  try {
    return json::parse(f);
  } catch (const std::exception& e) {
    return DataLoss(path.string() + ": " + e.what());
  }
}

std::string QuoteRegex(const std::string& literal) {  // \Q...\E, with any \E inside split out
  std::string out = "\\Q";
  for (size_t i = 0; i < literal.size(); ++i) {
    if (literal.compare(i, 2, "\\E") == 0) {
      out += "\\E\\\\E\\Q";
      ++i;
    } else {
      out += literal[i];
    }
  }
  return out + "\\E";
}

// Flattens a pre_tokenizer into the chain of split regexes the PreTokenizer applies.
Status PreTokenizerToRegexes(const json& pt, const std::string& where, TokenizerSpec* spec) {
  if (pt.is_null()) return Status::Ok();
  const std::string type = pt.value("type", "");
  if (type == "Sequence") {
    const json& list = pt.at("pretokenizers");
    for (size_t i = 0; i < list.size(); ++i) {
      ASL_RETURN_IF_ERROR(PreTokenizerToRegexes(list[i], where + ".pretokenizers[" + std::to_string(i) + "]", spec));
    }
    return Status::Ok();
  }
  if (type == "ByteLevel") {
    if (pt.value("add_prefix_space", false)) spec->add_prefix_space = true;
    if (pt.value("use_regex", true)) spec->pre_regexes.emplace_back(kGpt2Regex);
    return Status::Ok();
  }
  if (type == "Digits") {
    spec->pre_regexes.emplace_back(pt.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)");
    return Status::Ok();
  }
  if (type == "Split") {
    const std::string behavior = pt.value("behavior", "Isolated");
    if (behavior != "Isolated") return Unimplemented(where + ".behavior '" + behavior + "': only Isolated is supported");
    if (pt.value("invert", false)) return Unimplemented(where + ".invert: only false is supported");
    const json& pattern = pt.at("pattern");
    if (pattern.contains("Regex")) {
      spec->pre_regexes.push_back(pattern.at("Regex").get<std::string>());
    } else if (pattern.contains("String")) {
      spec->pre_regexes.push_back(QuoteRegex(pattern.at("String").get<std::string>()));
    } else {
      return Unimplemented(where + ".pattern: expected Regex or String");
    }
    return Status::Ok();
  }
  return Unimplemented(where + ".type '" + type + "' is not supported (ByteLevel, Split, Digits, Sequence are)");
}

// tokenizer_config.json names tokens either as "text" or as {"content": "text", ...}.
std::optional<std::string> TokenName(const json& config, const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const json& v = config.at(key);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content")) return v.at("content").get<std::string>();
  return std::nullopt;
}

// A post-processor that writes a special token before the sequence adds BOS (Llama 3's
// TemplateProcessing: [SpecialToken <|begin_of_text|>, Sequence A]).
std::optional<std::string> PostProcessorBos(const json& pp) {
  if (pp.is_null()) return std::nullopt;
  const std::string type = pp.value("type", "");
  if (type == "Sequence") {
    for (const json& p : pp.at("processors")) {
      if (auto bos = PostProcessorBos(p)) return bos;
    }
    return std::nullopt;
  }
  if (type == "TemplateProcessing" && pp.contains("single") && !pp.at("single").empty()) {
    const json& first = pp.at("single")[0];
    if (first.contains("SpecialToken")) return first.at("SpecialToken").at("id").get<std::string>();
  }
  return std::nullopt;
}

StatusOr<TokenizerSpec> ParseTokenizerJson(const json& tj, const json& config, const fs::path& dir,
                                           const std::string& file) {
  TokenizerSpec spec;
  spec.model = "gpt2";
  const json& model = tj.at("model");
  const std::string type = model.value("type", "");
  if (type != "BPE") return Unimplemented(file + ": model.type '" + type + "': only byte-level BPE is supported");
  if (model.value("byte_fallback", false)) {
    return Unimplemented(file + ": model.byte_fallback (SentencePiece-style BPE) is not supported");
  }
  if (!model.value("continuing_subword_prefix", json("")).is_null() &&
      !model.value("continuing_subword_prefix", json("")).get<std::string>().empty()) {
    return Unimplemented(file + ": model.continuing_subword_prefix is not supported");
  }
  spec.ignore_merges = model.value("ignore_merges", false);

  // id -> token from the vocabulary and the added tokens; gaps stay unused.
  // Ids are checked as JSON integers before any narrowing, and bounded: the table below has
  // max_id + 1 entries, so one id of 10^14 (silently truncated by get<int32_t>()) asked for tens of
  // GB (found by tests/fuzz/tokenizer_json_fuzz). Real vocabularies are under 2^18 tokens.
  constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;
  auto token_id = [&](const json& id, const std::string& tok) -> StatusOr<int32_t> {
    if (!id.is_number_integer()) return DataLoss(file + ": token id for '" + tok + "' is not an integer");
    if (id.is_number_unsigned() ? id.get<uint64_t>() > static_cast<uint64_t>(kMaxTokenId)
                                : (id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId)) {
      return DataLoss(file + ": token id " + id.dump() + " for '" + tok + "' is outside [0, " +
                      std::to_string(kMaxTokenId) + "]");
    }
    return static_cast<int32_t>(id.get<int64_t>());
  };
  std::vector<std::pair<int32_t, std::string>> entries;
  for (const auto& [tok, id] : model.at("vocab").items()) {
    ASL_ASSIGN_OR_RETURN(int32_t checked, token_id(id, tok));
    entries.emplace_back(checked, tok);
  }
  std::vector<std::pair<int32_t, bool>> added;  // id, special
  if (tj.contains("added_tokens")) {
    for (const json& a : tj.at("added_tokens")) {
      const std::string content = a.at("content").get<std::string>();
      ASL_ASSIGN_OR_RETURN(const int32_t id, token_id(a.at("id"), content));
      entries.emplace_back(id, content);
      added.emplace_back(id, a.value("special", false));
    }
  }
  int32_t max_id = -1;
  for (const auto& [id, tok] : entries) max_id = std::max(max_id, id);
  // The id space must be nearly dense: the tables below have max_id + 1 entries, so a handful of
  // tokens with an id near 2^24 asked for 16M slots (F4, tests/fuzz/tokenizer_json_fuzz). Real
  // vocabularies have no gaps, or a few padding ids at the end.
  const int64_t max_dense = 2 * static_cast<int64_t>(entries.size()) + 1024;
  if (max_id > max_dense) {
    return DataLoss(file + ": token ids are sparse: the largest is " + std::to_string(max_id) + " but there are only " +
                    std::to_string(entries.size()) + " tokens (at most " + std::to_string(max_dense) + " allowed)");
  }
  spec.tokens.assign(max_id + 1, "");
  spec.token_types.assign(max_id + 1, TokenType::kUnused);
  for (const auto& [id, tok] : entries) {
    spec.tokens[id] = tok;
    spec.token_types[id] = TokenType::kNormal;
  }
  for (const auto& [id, special] : added) spec.token_types[id] = special ? TokenType::kControl : TokenType::kUserDefined;

  const json& merges = model.at("merges");
  spec.merges.reserve(merges.size());
  for (const json& m : merges) {
    if (m.is_string()) {
      spec.merges.push_back(m.get<std::string>());
    } else {
      spec.merges.push_back(m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
    }
  }

  const json normalizer = tj.value("normalizer", json());
  if (!normalizer.is_null()) {
    const std::string ntype = normalizer.value("type", "");
    if (ntype == "NFC") {
      // Text that is already NFC (nearly all) tokenizes identically; the rest may differ.
      ASL_LOG_WARN("{}: normalizer NFC is not applied", file);
    } else {
      return Unimplemented(file + ": normalizer.type '" + ntype + "' is not supported");
    }
  }
  ASL_RETURN_IF_ERROR(PreTokenizerToRegexes(tj.value("pre_tokenizer", json()), file + ": pre_tokenizer", &spec));
  if (spec.pre_regexes.empty()) spec.pre_regexes.emplace_back(kGpt2Regex);

  auto find_id = [&](const std::string& text) -> std::optional<int32_t> {
    for (int32_t id = static_cast<int32_t>(spec.tokens.size()) - 1; id >= 0; --id) {
      if (spec.tokens[id] == text) return id;
    }
    return std::nullopt;
  };
  auto set_id = [&](const char* key, std::optional<int32_t>* dst) -> Status {
    std::optional<std::string> name = TokenName(config, key);
    if (!name) return Status::Ok();
    *dst = find_id(*name);
    if (!*dst) return DataLoss((dir / "tokenizer_config.json").string() + ": " + key + " '" + *name + "' is not a token");
    return Status::Ok();
  };
  ASL_RETURN_IF_ERROR(set_id("bos_token", &spec.bos_id));
  ASL_RETURN_IF_ERROR(set_id("eos_token", &spec.eos_id));
  ASL_RETURN_IF_ERROR(set_id("pad_token", &spec.pad_id));
  ASL_RETURN_IF_ERROR(set_id("unk_token", &spec.unk_id));
  if (model.contains("unk_token") && model.at("unk_token").is_string()) spec.unk_id = find_id(model.at("unk_token").get<std::string>());

  const std::optional<std::string> pp_bos = PostProcessorBos(tj.value("post_processor", json()));
  if (config.contains("add_bos_token") && config.at("add_bos_token").is_boolean()) {
    spec.add_bos = config.at("add_bos_token").get<bool>();
  } else {
    spec.add_bos = pp_bos.has_value();
  }
  if (pp_bos && !spec.bos_id) spec.bos_id = find_id(*pp_bos);
  if (spec.add_bos && !spec.bos_id) return DataLoss(file + ": adds a BOS token but names none");
  if (auto eot = find_id("<|eot_id|>"); eot && spec.token_types[*eot] == TokenType::kControl) spec.eot_id = eot;

  if (config.contains("chat_template")) {
    const json& ct = config.at("chat_template");
    if (ct.is_string()) {
      spec.chat_template = ct.get<std::string>();
    } else if (ct.is_array()) {  // [{"name": "default", "template": ...}, ...]
      for (const json& t : ct) {
        if (t.value("name", "") == "default") spec.chat_template = t.value("template", "");
      }
    }
  }
  if (spec.chat_template.empty()) {
    std::ifstream f(dir / "chat_template.jinja", std::ios::binary);
    if (f) spec.chat_template.assign(std::istreambuf_iterator<char>(f), {});
  }
  return spec;
}

}  // namespace

StatusOr<TokenizerSpec> Tokenizer::SpecFromTokenizerJson(const std::string& path) {
  fs::path file(path);
  fs::path dir = file;
  if (file.extension() == ".json") {
    dir = file.parent_path();
  } else {
    file = dir / "tokenizer.json";
  }
  ASL_ASSIGN_OR_RETURN(json tj, ReadJson(file));
  json config = json::object();
  if (fs::exists(dir / "tokenizer_config.json")) {
    ASL_ASSIGN_OR_RETURN(config, ReadJson(dir / "tokenizer_config.json"));
  }
  try {
    return ParseTokenizerJson(tj, config, dir, file.string());
  } catch (const std::exception& e) {  // a missing or mistyped field
    return DataLoss(file.string() + ": " + e.what());
  }
}

}  // namespace asl::tok
