// Byte-level BPE tokenizer (GPT-2 family: SmolLM2, Llama 3, Qwen2), token-for-token identical to
// Hugging Face tokenizers on the model's own vocabulary, and the per-request incremental decoder.
//
// Threads: a Tokenizer is immutable after Create; every const method may run on many threads at
// once (the server tokenizes on gRPC threads while the engine thread detokenizes). An
// IncrementalDecoder belongs to one request and one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/common/status.h"
#include "engine/tokenizer/chat_template.h"
#include "engine/tokenizer/tokenizer_spec.h"

namespace asl::tok {

class BpeModel;
class PreTokenizer;

class Tokenizer {
 public:
  // Fails (InvalidArgument / DataLoss / Unimplemented, naming the field) on a spec it cannot honour:
  // a model other than byte-level BPE, an unknown pre-tokenizer regex, a merge outside the vocabulary,
  // a special id out of range.
  [[nodiscard]] static StatusOr<std::unique_ptr<Tokenizer>> Create(TokenizerSpec spec);

  // Reads `dir`/tokenizer.json (or `dir` itself when it names a .json file) plus, when present,
  // tokenizer_config.json (bos/eos/pad/unk tokens, add_bos_token, chat_template) and
  // chat_template.jinja. Supports BPE models with ByteLevel / Split(Isolated) / Digits
  // pre-tokenizers; anything else is Unimplemented naming the JSON field.
  [[nodiscard]] static StatusOr<TokenizerSpec> SpecFromTokenizerJson(const std::string& dir);

  ~Tokenizer();

  // Text -> ids. With parse_special, control and added tokens written in the text ("<|im_start|>")
  // become their ids (leftmost-longest match, like Hugging Face's added vocabulary); without it only
  // non-special added tokens do, and control-token text is encoded as plain text. Invalid UTF-8 in
  // `text` is first repaired (each invalid subpart -> U+FFFD).
  std::vector<int32_t> Encode(std::string_view text, bool add_bos, bool parse_special = true) const;
  // A rendered chat -> ids, like Encode(text, false, true) except that a control token lying wholly
  // inside one of its input ranges (request text) is encoded as plain text. Equal to Hugging
  // Face's tokenization of the rendered text whenever the request writes no control tokens.
  std::vector<int32_t> EncodeChat(const RenderedChat& chat) const;

  // Ids -> text; invalid UTF-8 (a sequence cut at the end, ids out of order) becomes U+FFFD.
  // Ids out of range are skipped. skip_special drops control tokens.
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const;

  // The raw bytes of one token (possibly an incomplete UTF-8 sequence); "" when out of range.
  const std::string& TokenText(int32_t id) const;
  // The vocabulary string (byte-level encoded, e.g. "Ġhello") -> id.
  std::optional<int32_t> TokenToId(std::string_view token) const;

  int32_t vocab_size() const { return static_cast<int32_t>(token_bytes_.size()); }
  std::optional<int32_t> bos_id() const { return spec_.bos_id; }
  std::optional<int32_t> eos_id() const { return spec_.eos_id; }
  bool add_bos() const { return spec_.add_bos; }
  // Control tokens (GGUF token type 3; "special": true in tokenizer.json).
  bool IsSpecial(int32_t id) const;
  // Where generation ends: eos, eot, and the control tokens that close a turn or a document
  // ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", ...), sorted, unique.
  std::vector<int32_t> stop_token_ids() const;

  const TokenizerSpec& spec() const { return spec_; }
  // The chat template in use: the model's own (spec().chat_template) when it parses, or the
  // override; nullopt when neither.
  const std::optional<ChatTemplate>& chat_template() const { return chat_template_; }
  // Replaces the model's template with a built-in ("chatml", "llama3") or a Jinja file's; an error
  // (naming the file, or the template's syntax error) leaves the current one.
  [[nodiscard]] Status OverrideChatTemplate(const std::string& name_or_path);

  // Renders a conversation with the chat template (ChatTemplate::Render); InvalidArgument when
  // there is none.
  [[nodiscard]] StatusOr<RenderedChat> ApplyChatTemplate(const std::vector<ChatMessage>& messages,
                                                         const ChatRenderOptions& options) const;

 private:
  struct AddedToken {
    std::string text;
    int32_t id;
    bool special;
  };
  Tokenizer();
  void EncodeSegment(std::string_view segment, std::vector<int32_t>* out) const;
  std::vector<int32_t> EncodeImpl(std::string_view text, bool add_bos, bool parse_special,
                                  const std::vector<TextRange>& literal) const;
  StatusOr<ChatTemplate> CompileChatTemplate(std::string source) const;

  TokenizerSpec spec_;
  std::unique_ptr<BpeModel> bpe_;
  std::unique_ptr<PreTokenizer> pre_;
  std::vector<std::string> token_bytes_;                      // id -> raw bytes
  std::vector<uint8_t> special_;                              // id -> control token
  std::unordered_map<unsigned char, std::vector<AddedToken>> added_by_first_byte_;  // longest first
  std::optional<ChatTemplate> chat_template_;
};

// Streaming detokenization for one request: Push returns only complete UTF-8, holding back a
// sequence cut at the end; the concatenation of all Push results and Flush equals
// Tokenizer::Decode of all ids pushed. The tokenizer must outlive the decoder.
class IncrementalDecoder {
 public:
  IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special);

  // The text completed by `id` (may be empty).
  std::string Push(int32_t id);
  // What is held back, with an incomplete sequence replaced by U+FFFD; the decoder is then empty.
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;  // bytes of an incomplete UTF-8 sequence (at most 3)
};

}  // namespace asl::tok
