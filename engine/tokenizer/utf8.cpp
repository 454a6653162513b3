#include "engine/tokenizer/utf8.h"

#include <cstdint>

namespace asl::tok {
namespace {

// For a lead byte: the number of continuation bytes and the allowed range of the first one
// (Unicode Table 3-7, "Well-Formed UTF-8 Byte Sequences"). need < 0: not a lead byte.
struct LeadInfo {
  int need;
  uint8_t lo, hi;
};

LeadInfo Lead(uint8_t b) {
  if (b >= 0xC2 && b <= 0xDF) return {1, 0x80, 0xBF};
  if (b == 0xE0) return {2, 0xA0, 0xBF};
  if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return {2, 0x80, 0xBF};
  if (b == 0xED) return {2, 0x80, 0x9F};
  if (b == 0xF0) return {3, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {3, 0x80, 0xBF};
  if (b == 0xF4) return {3, 0x80, 0x8F};
  return {-1, 0, 0};
}

}  // namespace

size_t AppendUtf8Lossy(std::string_view s, bool hold_incomplete_tail, std::string* out) {
  const size_t n = s.size();
  size_t i = 0;
  size_t run = 0;  // start of the pending run of valid bytes not yet copied
  while (i < n) {
    const auto b = static_cast<uint8_t>(s[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    const LeadInfo li = Lead(b);
    if (li.need < 0) {
      out->append(s.data() + run, i - run);
      out->append(kReplacementChar);
      run = ++i;
      continue;
    }
    size_t j = i + 1;
    bool bad = false;
    for (int k = 0; k < li.need; ++k, ++j) {
      if (j >= n) {  // truncated: a prefix of a well-formed sequence
        out->append(s.data() + run, i - run);
        if (hold_incomplete_tail) return i;
        out->append(kReplacementChar);
        return n;
      }
      const auto c = static_cast<uint8_t>(s[j]);
      const uint8_t lo = k == 0 ? li.lo : 0x80;
      const uint8_t hi = k == 0 ? li.hi : 0xBF;
      if (c < lo || c > hi) {
        bad = true;
        break;
      }
    }
    if (bad) {  // the maximal subpart s[i, j) becomes one U+FFFD; s[j] is examined afresh
      out->append(s.data() + run, i - run);
      out->append(kReplacementChar);
      run = i = j;
      continue;
    }
    i = j;
  }
  out->append(s.data() + run, n - run);
  return n;
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  AppendUtf8Lossy(bytes, /*hold_incomplete_tail=*/false, &out);
  return out;
}

bool IsValidUtf8(std::string_view s) {
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const auto b = static_cast<uint8_t>(s[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    const LeadInfo li = Lead(b);
    if (li.need < 0 || i + static_cast<size_t>(li.need) >= n) return false;
    for (int k = 0; k < li.need; ++k) {
      const auto c = static_cast<uint8_t>(s[i + 1 + k]);
      const uint8_t lo = k == 0 ? li.lo : 0x80;
      const uint8_t hi = k == 0 ? li.hi : 0xBF;
      if (c < lo || c > hi) return false;
    }
    i += 1 + li.need;
  }
  return true;
}

char32_t NextCodePoint(std::string_view s, size_t* i) {
  const auto b = static_cast<uint8_t>(s[*i]);
  if (b < 0x80) {
    ++*i;
    return b;
  }
  int need = b >= 0xF0 ? 3 : b >= 0xE0 ? 2 : 1;
  char32_t cp = b & (0x3F >> need);
  for (int k = 1; k <= need && *i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<uint8_t>(s[*i + k]) & 0x3F);
  *i += 1 + need;
  return cp;
}

}  // namespace asl::tok
