// Byte-level BPE: GPT-2's byte <-> unicode mapping and the merge loop over token ids. Internal to
// asl_tokenizer.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/common/status.h"

namespace asl::tok {

// GPT-2's bytes_to_unicode(): byte b -> the UTF-8 text of the printable character standing for it.
const std::array<std::string, 256>& ByteToUnicode();

// The raw bytes a byte-level token string stands for; nullopt when a character lies outside the
// mapping (added tokens such as "<|im_start|>" map to themselves, since '<', '|', ... are their own
// characters).
std::optional<std::string> ByteLevelDecode(std::string_view token);

// Reusable buffers of the merge loop; one per encoding thread.
struct BpeScratch {
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // neighbours in the linked list, -1 at the ends
    bool alive;
  };
  struct Merge {
    int32_t rank, pos, new_id;
  };
  std::vector<Symbol> symbols;
  std::vector<Merge> heap;
  std::string mapped;
};

class BpeModel {
 public:
  // tokens: id -> byte-level token string; merges: "left right" (or left '\0' right) in rank order.
  // A merge whose parts or result are not in the vocabulary is an error naming it.
  [[nodiscard]] static StatusOr<BpeModel> Create(const std::vector<std::string>& tokens,
                                                 const std::vector<std::string>& merges, bool ignore_merges);

  // Appends the ids of one pre-tokenizer piece (raw UTF-8 bytes). Merges the lowest-ranked adjacent
  // pair first, the leftmost among equals, exactly like Hugging Face's Word::merge_all; a heap makes
  // it O(n log n) in the piece length. A byte whose character is not in the vocabulary is dropped,
  // as Hugging Face's BPE does without unk_token (SmolLM2 lacks e.g. 0x04 and 0xF1).
  void EncodePiece(std::string_view piece, BpeScratch* scratch, std::vector<int32_t>* out) const;

  std::optional<int32_t> Find(std::string_view token) const;

 private:
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  struct MergeValue {
    int32_t rank, new_id;
  };
  std::unordered_map<std::string, int32_t> vocab_;          // byte-level token string -> id
  std::unordered_map<uint64_t, MergeValue> merges_;          // PairKey(left, right) -> merge
  std::array<int32_t, 256> byte_id_{};                       // raw byte -> id of its character, -1: none
  bool ignore_merges_ = false;
};

}  // namespace asl::tok
