// UTF-8 validation and lossy repair, shared by the tokenizer (input sanitising, Decode) and the
// incremental decoder. Invalid input is repaired the way Rust's String::from_utf8_lossy (and so
// Hugging Face tokenizers' ByteLevel decoder) does: each maximal invalid subpart becomes one U+FFFD
// (the WHATWG / Unicode 6.0 "substitution of maximal subparts" practice).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace asl::tok {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Appends the repaired form of `bytes` to `out`. Returns the number of bytes consumed: all of them,
// unless `hold_incomplete_tail` is set and the input ends inside a sequence that could still become
// valid (a prefix of a well-formed sequence); that tail is then left unconsumed.
size_t AppendUtf8Lossy(std::string_view bytes, bool hold_incomplete_tail, std::string* out);

// The repaired copy of `bytes` (`bytes` itself when already valid).
std::string Utf8Lossy(std::string_view bytes);

bool IsValidUtf8(std::string_view bytes);

// Decodes one code point starting at s[i] of VALID UTF-8; advances i.
char32_t NextCodePoint(std::string_view s, size_t* i);

}  // namespace asl::tok
