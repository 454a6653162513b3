// A read-only view of a GGUF file (v2 and v3): metadata, tensor infos and dequantised tensors.
// Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
//
// Open validates the whole header against the file size up front (magic, version, counts, string
// lengths, array sizes, tensor dims, types, offsets, alignment, overlaps), so no later accessor
// can read outside the mapping. Every error is a Status whose message starts with the path.
//
// Thread: after Open, all methods are const and safe to call from any thread. The file stays
// mapped until the GgufFile is destroyed; tensors returned by LoadTensor own their memory.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/common/status.h"

namespace asl::model {

// Hash for heterogeneous (string_view) lookups in string-keyed maps.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// GGUF metadata value types (gguf.md "gguf_metadata_value_type").
enum class GgufValueType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6,
  kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // PyTorch row-major order: GGUF's ne[] reversed
  uint32_t type = 0;           // ggml type id (quant.h GgmlType)
  uint64_t offset = 0;         // relative to the start of the data section, as stored
  uint64_t file_offset = 0;    // absolute offset in the file
  uint64_t nbytes = 0;         // encoded size
  int64_t numel() const;
};

class GgufFile {
 public:
  // Maps and validates `path`. kNotFound if it cannot be opened, kDataLoss if it is truncated or
  // corrupt, kUnimplemented for a valid but unsupported version (v1).
  [[nodiscard]] static StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }

  // Metadata. Each getter returns nullopt when the key is absent or holds another type; integer
  // getters accept any integer width and return nullopt when the value does not fit.
  bool HasKey(std::string_view key) const;
  std::optional<GgufValueType> KeyType(std::string_view key) const;
  std::vector<std::string> Keys() const;  // in file order
  std::optional<int64_t> GetInt(std::string_view key) const;
  std::optional<uint64_t> GetUint(std::string_view key) const;
  std::optional<double> GetFloat(std::string_view key) const;  // float32 or float64
  std::optional<bool> GetBool(std::string_view key) const;
  std::optional<std::string> GetString(std::string_view key) const;
  std::optional<std::vector<std::string>> GetStringArray(std::string_view key) const;
  std::optional<std::vector<int64_t>> GetIntArray(std::string_view key) const;  // any integer elements
  std::optional<std::vector<double>> GetFloatArray(std::string_view key) const;  // float32/float64 elements

  // Tensors, in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;  // null when absent

  // The tensor as a contiguous float32 CPU tensor of info.shape. kUnimplemented for types
  // quant.h cannot dequantise (message names the tensor, the type and the file).
  [[nodiscard]] StatusOr<at::Tensor> LoadTensor(const GgufTensorInfo& info) const;
  // Raw encoded bytes of a tensor (inside the mapping; valid while this object lives).
  const uint8_t* TensorData(const GgufTensorInfo& info) const { return base_ + info.file_offset; }

 private:
  struct Kv {
    std::string key;
    GgufValueType type;
    GgufValueType array_type = GgufValueType::kUint8;  // element type when type == kArray
    uint64_t array_count = 0;
    uint64_t value_offset = 0;  // file offset of the scalar, or of the first array element
  };
  class Parser;

  GgufFile() = default;
  const Kv* FindKv(std::string_view key) const;

  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<Kv> kvs_;
  std::unordered_map<std::string, size_t, StringHash, std::equal_to<>> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t, StringHash, std::equal_to<>> tensor_index_;
};

}  // namespace asl::model
