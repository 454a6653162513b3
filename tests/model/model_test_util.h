// Shared helpers for model_loader_tests: the tiny-model fixture (generated once per process by
// tests/python/make_tiny_models.py into a temporary folder of the build tree), file helpers, and
// a GGUF byte builder for hand-made corrupt headers.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace asl::model::testing {

namespace fs = std::filesystem;

// The folder with the generated models; fails the current test (and returns "") if the
// generator could not run.
const std::string& TinyDir();
// A fresh empty scratch folder, removed at process exit.
std::string ScratchDir(const std::string& name);

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// expected/<tag>/<name>.f32 as a float32 tensor of `shape`.
at::Tensor Expected(const std::string& tag, const std::string& name, at::IntArrayRef shape);

// Max |a - b| / max(1, |b|), treating equal values (including infinities) as 0.
double MaxRelDiff(const at::Tensor& actual, const at::Tensor& expected);

inline bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Little-endian encoders for the GGUF builder.
inline std::string U32(uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); }
inline std::string U64(uint64_t v) { return std::string(reinterpret_cast<const char*>(&v), 8); }
inline std::string F32(float v) { return std::string(reinterpret_cast<const char*>(&v), 4); }
inline std::string Str(const std::string& s) { return U64(s.size()) + s; }

// Builds GGUF bytes field by field so a test can corrupt any one of them.
struct GgufBuilder {
  struct Kv {
    std::string key;
    uint32_t type;
    std::string raw_value;  // encoded value (for arrays: element type + count + elements)
  };
  struct Tensor {
    std::string name;
    std::vector<uint64_t> ne;  // GGUF order (innermost first)
    uint32_t type;
    uint64_t offset;
  };

  uint32_t magic = 0x46554747;
  uint32_t version = 3;
  std::optional<uint64_t> tensor_count;  // overrides tensors.size()
  std::optional<uint64_t> kv_count;      // overrides kvs.size()
  uint64_t alignment = 32;
  std::vector<Kv> kvs;
  std::vector<Tensor> tensors;
  std::string data;

  void AddString(const std::string& key, const std::string& v) { kvs.push_back({key, 8, Str(v)}); }
  void AddU32(const std::string& key, uint32_t v) { kvs.push_back({key, 4, U32(v)}); }
  // Appends float32 data (aligned) and a tensor info pointing at it.
  void AddF32Tensor(const std::string& name, std::vector<uint64_t> ne, float fill) {
    while (data.size() % alignment) data.push_back('\0');
    uint64_t n = 1;
    for (uint64_t d : ne) n *= d;
    const uint64_t off = data.size();
    for (uint64_t i = 0; i < n; ++i) data += F32(fill + static_cast<float>(i));
    tensors.push_back({name, std::move(ne), 0, off});
  }

  std::string Build() const {
    std::string out = U32(magic) + U32(version) + U64(tensor_count.value_or(tensors.size())) +
                      U64(kv_count.value_or(kvs.size()));
    for (const Kv& kv : kvs) out += Str(kv.key) + U32(kv.type) + kv.raw_value;
    for (const Tensor& t : tensors) {
      out += Str(t.name) + U32(static_cast<uint32_t>(t.ne.size()));
      for (uint64_t d : t.ne) out += U64(d);
      out += U32(t.type) + U64(t.offset);
    }
    while (out.size() % alignment) out.push_back('\0');
    return out + data;
  }
};

}  // namespace asl::model::testing
