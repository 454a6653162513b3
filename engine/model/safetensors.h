// Read-only views of safetensors weights: one file, and a Hugging Face model directory
// (model.safetensors, or model.safetensors.index.json with its shards).
// Format: https://github.com/huggingface/safetensors ("Format"): an 8-byte little-endian header
// length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}}, then the data.
//
// Open validates the header against the file size (length sanity, JSON, dtypes, shapes, offsets
// inside the data section, sizes matching shapes, no overlaps); errors name the file.
// Thread: after Open, all methods are const and safe from any thread. Returned tensors own their
// memory; the files stay mapped until the object is destroyed.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/status.h"

namespace asl::model {

struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype;           // as stored: "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;  // row-major
  uint64_t file_offset = 0;    // absolute offset of the first byte
  uint64_t nbytes = 0;
};

class SafetensorsFile {
 public:
  // kNotFound if the file cannot be opened, kDataLoss if it is truncated or corrupt.
  [[nodiscard]] static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }  // sorted by name
  const SafetensorsTensorInfo* FindTensor(std::string_view name) const;           // null when absent
  // The tensor in its stored dtype (F32, F16 or BF16) as a contiguous CPU tensor.
  // kNotFound for an unknown name; kUnimplemented for other dtypes.
  [[nodiscard]] StatusOr<at::Tensor> LoadTensor(std::string_view name) const;

 private:
  SafetensorsFile() = default;

  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  std::vector<SafetensorsTensorInfo> tensors_;
};

class SafetensorsModel {
 public:
  // dir holds model.safetensors.index.json (preferred) or model.safetensors. A shard listed in the
  // index but missing is kNotFound naming the shard and the index.
  [[nodiscard]] static StatusOr<std::unique_ptr<SafetensorsModel>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // The info of a tensor and the file holding it; null when absent.
  const SafetensorsTensorInfo* FindTensor(std::string_view name, const SafetensorsFile** file = nullptr) const;
  // As SafetensorsFile::LoadTensor; kNotFound names the directory.
  [[nodiscard]] StatusOr<at::Tensor> LoadTensor(std::string_view name) const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*, std::less<>> owner_;  // tensor name -> file
};

}  // namespace asl::model
