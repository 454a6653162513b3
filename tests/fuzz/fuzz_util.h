// Helpers shared by the libFuzzer targets (tests/fuzz/README.md).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace asl::fuzz {

// A per-process scratch path (the readers take paths): $TMPDIR or /tmp.
inline std::string ScratchPath(const char* name) {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir && *dir ? dir : "/tmp") + "/asl-fuzz-" + std::to_string(getpid()) + "-" + name;
}

inline void WriteFile(const std::string& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

// Splits the input at the first occurrence of `sep` (two parts of one input, e.g. a template and
// its messages); without it, everything is `first`.
inline void Split(std::string_view in, std::string_view sep, std::string_view* first, std::string_view* rest) {
  size_t at = in.find(sep);
  *first = in.substr(0, at);
  *rest = at == std::string_view::npos ? std::string_view() : in.substr(at + sep.size());
}

}  // namespace asl::fuzz
