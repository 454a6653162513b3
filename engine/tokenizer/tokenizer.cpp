#include "engine/tokenizer/tokenizer.h"

#include <algorithm>

#include "engine/common/logging.h"
#include "engine/tokenizer/bpe.h"
#include "engine/tokenizer/pretokenizer.h"
#include "engine/tokenizer/utf8.h"

namespace asl::tok {
namespace {

// Control tokens that end a turn or a document in the model families we serve (llama.cpp's
// end-of-generation list, llama-vocab.cpp).
constexpr const char* kEndOfGenerationTexts[] = {"<|eot_id|>", "<|im_end|>",    "<|end|>",   "<end_of_turn>",
                                                 "<|endoftext|>", "<|end_of_text|>", "<|eom_id|>", "<EOT>"};

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Create(TokenizerSpec spec) {
  if (spec.model != "gpt2") {
    return Unimplemented("tokenizer model '" + spec.model + "': only byte-level BPE (gpt2) is supported");
  }
  if (spec.tokens.empty()) return InvalidArgument("tokenizer: empty vocabulary");
  const auto n = static_cast<int32_t>(spec.tokens.size());
  if (!spec.token_types.empty() && spec.token_types.size() != spec.tokens.size()) {
    return InvalidArgument("tokenizer token_types: " + std::to_string(spec.token_types.size()) + " entries for " +
                           std::to_string(n) + " tokens");
  }
  const std::pair<const char*, std::optional<int32_t>> ids[] = {
      {"bos_id", spec.bos_id}, {"eos_id", spec.eos_id}, {"eot_id", spec.eot_id}, {"pad_id", spec.pad_id}, {"unk_id", spec.unk_id}};
  for (const auto& [name, id] : ids) {
    if (id && (*id < 0 || *id >= n)) {
      return InvalidArgument(std::string("tokenizer ") + name + " " + std::to_string(*id) + " is outside the vocabulary of " +
                             std::to_string(n));
    }
  }

  std::unique_ptr<Tokenizer> t(new Tokenizer());
  std::vector<std::string> regexes;
  if (spec.split_digits) regexes.emplace_back(kDigitsRegex);
  if (!spec.pre_regexes.empty()) {
    regexes.insert(regexes.end(), spec.pre_regexes.begin(), spec.pre_regexes.end());
  } else {
    std::optional<std::vector<std::string>> preset = PreTokenizerRegexes(spec.pre);
    if (!preset) {
      ASL_LOG_WARN("tokenizer: unknown pre-tokenizer '{}'; using the GPT-2 split", spec.pre);
      preset = PreTokenizerRegexes("gpt2");
    }
    regexes.insert(regexes.end(), preset->begin(), preset->end());
  }
  ASL_ASSIGN_OR_RETURN(t->pre_, PreTokenizer::Create(regexes));

  const bool ignore_merges = spec.ignore_merges.value_or(spec.pre_regexes.empty() && spec.pre == "llama-bpe");
  ASL_ASSIGN_OR_RETURN(BpeModel bpe, BpeModel::Create(spec.tokens, spec.merges, ignore_merges));
  t->bpe_ = std::make_unique<BpeModel>(std::move(bpe));

  t->token_bytes_.resize(n);
  t->special_.assign(n, 0);
  for (int32_t id = 0; id < n; ++id) {
    const std::string& s = spec.tokens[id];
    const TokenType type = spec.token_types.empty() ? TokenType::kNormal : spec.token_types[id];
    // Hugging Face's ByteLevel decoder: a token maps back through the byte table when every
    // character is in it, and is taken as written otherwise.
    std::optional<std::string> raw = ByteLevelDecode(s);
    t->token_bytes_[id] = raw ? std::move(*raw) : s;
    if (type == TokenType::kControl || type == TokenType::kUserDefined) {
      if (s.empty()) continue;
      t->special_[id] = type == TokenType::kControl;
      t->added_by_first_byte_[static_cast<unsigned char>(s[0])].push_back({s, id, type == TokenType::kControl});
    }
  }
  for (auto& [byte, list] : t->added_by_first_byte_) {
    std::stable_sort(list.begin(), list.end(), [](const AddedToken& a, const AddedToken& b) { return a.text.size() > b.text.size(); });
  }

  t->spec_ = std::move(spec);
  if (!t->spec_.chat_template.empty()) {
    StatusOr<ChatTemplate> tmpl = t->CompileChatTemplate(t->spec_.chat_template);
    if (tmpl.ok()) {
      t->chat_template_ = std::move(tmpl).value();
    } else {
      ASL_LOG_WARN("tokenizer: the model's chat template does not parse ({}); chat requests need "
                   "model.chat_template",
                   tmpl.status().message());
    }
  }
  return t;
}

void Tokenizer::EncodeSegment(std::string_view segment, std::vector<int32_t>* out) const {
  if (segment.empty()) return;
  std::string prefixed;
  if (spec_.add_prefix_space && segment.front() != ' ') {
    prefixed = " " + std::string(segment);
    segment = prefixed;
  }
  std::vector<std::string_view> pieces;
  pre_->Split(segment, &pieces);
  BpeScratch scratch;
  for (std::string_view p : pieces) bpe_->EncodePiece(p, &scratch, out);
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_bos, bool parse_special) const {
  return EncodeImpl(text, add_bos, parse_special, {});
}

std::vector<int32_t> Tokenizer::EncodeChat(const RenderedChat& chat) const {
  // The rendered text is valid UTF-8 (its inputs are), so the ranges stay valid offsets.
  return EncodeImpl(chat.text, /*add_bos=*/false, /*parse_special=*/true, chat.input_ranges);
}

std::vector<int32_t> Tokenizer::EncodeImpl(std::string_view text, bool add_bos, bool parse_special,
                                           const std::vector<TextRange>& literal) const {
  std::string repaired;
  if (!IsValidUtf8(text)) {
    repaired = Utf8Lossy(text);
    text = repaired;
  }
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && spec_.bos_id) out.push_back(*spec_.bos_id);

  // Added tokens first, leftmost-longest; the text between them goes through pre-tokenizer + BPE.
  size_t seg_start = 0;
  size_t i = 0;
  size_t lit = 0;  // the first literal range that does not end before i
  if (!added_by_first_byte_.empty()) {
    while (i < text.size()) {
      auto it = added_by_first_byte_.find(static_cast<unsigned char>(text[i]));
      const AddedToken* hit = nullptr;
      if (it != added_by_first_byte_.end()) {
        while (lit < literal.size() && literal[lit].end <= i) ++lit;
        // A control token lying wholly inside request text is text (it cannot be forged there).
        const size_t lit_end = lit < literal.size() && literal[lit].begin <= i ? literal[lit].end : 0;
        for (const AddedToken& a : it->second) {
          const bool allowed = !a.special || (parse_special && i + a.text.size() > lit_end);
          if (allowed && text.compare(i, a.text.size(), a.text) == 0) {
            hit = &a;
            break;
          }
        }
      }
      if (hit == nullptr) {
        ++i;
        continue;
      }
      EncodeSegment(text.substr(seg_start, i - seg_start), &out);
      out.push_back(hit->id);
      i += hit->text.size();
      seg_start = i;
    }
  }
  EncodeSegment(text.substr(seg_start), &out);
  return out;
}

const std::string& Tokenizer::TokenText(int32_t id) const {
  static const std::string kEmpty;
  if (id < 0 || id >= vocab_size()) return kEmpty;
  return token_bytes_[id];
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const { return bpe_->Find(token); }

bool Tokenizer::IsSpecial(int32_t id) const { return id >= 0 && id < vocab_size() && special_[id] != 0; }

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || (skip_special && special_[id])) continue;
    bytes += token_bytes_[id];
  }
  return IsValidUtf8(bytes) ? bytes : Utf8Lossy(bytes);
}

std::vector<int32_t> Tokenizer::stop_token_ids() const {
  std::vector<int32_t> out;
  if (spec_.eos_id) out.push_back(*spec_.eos_id);
  if (spec_.eot_id) out.push_back(*spec_.eot_id);
  for (const char* text : kEndOfGenerationTexts) {
    std::optional<int32_t> id = bpe_->Find(text);
    if (id && IsSpecial(*id)) out.push_back(*id);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

StatusOr<ChatTemplate> Tokenizer::CompileChatTemplate(std::string source) const {
  // Like Hugging Face, {{ bos_token }} / {{ eos_token }} render the model's BOS / EOS text.
  auto text = [&](const std::optional<int32_t>& id) {
    return id && *id >= 0 && *id < vocab_size() ? spec_.tokens[*id] : std::string();
  };
  return ChatTemplate::Compile(std::move(source), text(spec_.bos_id), text(spec_.eos_id));
}

Status Tokenizer::OverrideChatTemplate(const std::string& name_or_path) {
  ASL_ASSIGN_OR_RETURN(std::string source, ResolveChatTemplateSource(name_or_path));
  ASL_ASSIGN_OR_RETURN(ChatTemplate tmpl, CompileChatTemplate(std::move(source)));
  chat_template_ = std::move(tmpl);
  return Status::Ok();
}

StatusOr<RenderedChat> Tokenizer::ApplyChatTemplate(const std::vector<ChatMessage>& messages,
                                                    const ChatRenderOptions& options) const {
  if (!chat_template_) {
    return InvalidArgument(
        "chat template: the model has none that parses; start the server with model.chat_template "
        "(chatml, llama3 or a Jinja file)");
  }
  return chat_template_->Render(messages, options);
}

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string IncrementalDecoder::Push(int32_t id) {
  if (skip_special_ && tokenizer_.IsSpecial(id)) return "";
  const std::string& bytes = tokenizer_.TokenText(id);
  if (bytes.empty()) return "";
  std::string out;
  if (pending_.empty()) {
    const size_t used = AppendUtf8Lossy(bytes, /*hold_incomplete_tail=*/true, &out);
    pending_.assign(bytes, used, std::string::npos);
  } else {
    pending_ += bytes;
    const size_t used = AppendUtf8Lossy(pending_, /*hold_incomplete_tail=*/true, &out);
    pending_.erase(0, used);
  }
  return out;
}

std::string IncrementalDecoder::Flush() {
  std::string out = Utf8Lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace asl::tok
