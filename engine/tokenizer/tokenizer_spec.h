// What a tokenizer is made from, independent of where it was read (GGUF metadata or tokenizer.json).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace asl::tok {

// GGUF token types (llama.cpp's llama_token_type).
enum class TokenType : int32_t { kUndefined = 0, kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

struct TokenizerSpec {
  std::string model = "gpt2";          // only byte-level BPE ("gpt2") is supported
  std::string pre;                     // pre-tokenizer name (GGUF tokenizer.ggml.pre: "smollm", "llama-bpe", "qwen2", "gpt-2", ...)
  std::vector<std::string> pre_regexes;  // explicit split regexes (from tokenizer.json); overrides `pre` when set
  bool split_digits = false;           // Digits(individual_digits) pre-step, applied before the regexes
  bool add_prefix_space = false;       // ByteLevel(add_prefix_space): prepend ' ' to each text segment
  std::optional<bool> ignore_merges;   // whole-word vocab hit skips BPE; unset: true for pre "llama-bpe"
  std::vector<std::string> tokens;     // id -> token string (byte-level encoded)
  std::vector<TokenType> token_types;  // id -> type; empty = all normal
  std::vector<std::string> merges;     // "a b", in rank order
  std::optional<int32_t> bos_id, eos_id, eot_id, pad_id, unk_id;
  bool add_bos = false;                // prepend BOS when encoding a prompt
  std::string chat_template;           // the model's Jinja chat template text, if any
};

}  // namespace asl::tok
