#include "engine/model/safetensors.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "engine/model/mapped_file.h"

namespace asl::model {
namespace {

using nlohmann::json;

// The reference implementation refuses headers over 100 MB (safetensors MAX_HEADER_SIZE).
constexpr uint64_t kMaxHeaderSize = 100'000'000;

// Bytes per element of the dtypes the format defines; 0 for unknown strings.
uint64_t DtypeSize(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

std::optional<at::ScalarType> SupportedDtype(const std::string& d) {
  if (d == "F32") return at::kFloat;
  if (d == "F16") return at::kHalf;
  if (d == "BF16") return at::kBFloat16;
  return std::nullopt;
}

}  // namespace

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  auto corrupt = [&](const std::string& what) { return DataLoss(path + ": " + what); };

  ASL_RETURN_IF_ERROR(MapFile(path, &f->base_, &f->size_));

  if (f->size_ < 8) return corrupt("truncated: " + std::to_string(f->size_) + " bytes is too small for a safetensors header");
  uint64_t header_size = 0;
  std::memcpy(&header_size, f->base_, 8);
  if (header_size > kMaxHeaderSize) {
    return corrupt("header length " + std::to_string(header_size) + " exceeds the 100 MB limit");
  }
  if (header_size > f->size_ - 8) {
    return corrupt("truncated: header length " + std::to_string(header_size) + " extends past end of file (" +
                   std::to_string(f->size_) + " bytes)");
  }
  const char* hbegin = reinterpret_cast<const char*>(f->base_ + 8);
  const json header = json::parse(hbegin, hbegin + header_size, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) return corrupt("header is not a JSON object");
  const uint64_t data_offset = 8 + header_size;
  const uint64_t data_size = f->size_ - data_offset;

  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string what = "tensor '" + name + "'";
    if (!entry.is_object()) return corrupt(what + ": header entry is not an object");
    const auto dtype = entry.find("dtype");
    const auto shape = entry.find("shape");
    const auto offsets = entry.find("data_offsets");
    if (dtype == entry.end() || !dtype->is_string()) return corrupt(what + ": missing or invalid 'dtype'");
    if (shape == entry.end() || !shape->is_array()) return corrupt(what + ": missing or invalid 'shape'");
    if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
        !(*offsets)[1].is_number_unsigned()) {
      return corrupt(what + ": missing or invalid 'data_offsets'");
    }
    SafetensorsTensorInfo t;
    t.name = name;
    t.dtype = dtype->get<std::string>();
    const uint64_t elem_size = DtypeSize(t.dtype);
    if (elem_size == 0) return corrupt(what + ": unknown dtype '" + t.dtype + "'");
    uint64_t numel = 1;
    for (const json& d : *shape) {
      if (!d.is_number_unsigned()) return corrupt(what + ": shape entries must be non-negative integers");
      const uint64_t v = d.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (v != 0 && numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / elem_size / v)) {
        return corrupt(what + ": impossible shape dimension " + std::to_string(v));
      }
      numel *= v;
      t.shape.push_back(static_cast<int64_t>(v));
    }
    const uint64_t begin = (*offsets)[0].get<uint64_t>();
    const uint64_t end = (*offsets)[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return corrupt(what + " data extends past end of file (data_offsets [" + std::to_string(begin) + ", " +
                     std::to_string(end) + "], data section " + std::to_string(data_size) + " bytes)");
    }
    if (end - begin != numel * elem_size) {
      return corrupt(what + ": data_offsets span " + std::to_string(end - begin) + " bytes but shape and dtype need " +
                     std::to_string(numel * elem_size));
    }
    t.file_offset = data_offset + begin;
    t.nbytes = end - begin;
    f->tensors_.push_back(std::move(t));
  }
  std::sort(f->tensors_.begin(), f->tensors_.end(), [](const auto& a, const auto& b) { return a.name < b.name; });

  std::vector<const SafetensorsTensorInfo*> by_offset;
  for (const auto& t : f->tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->file_offset < b->file_offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto* prev = by_offset[i - 1];
    if (prev->nbytes > 0 && by_offset[i]->file_offset < prev->file_offset + prev->nbytes) {
      return corrupt("tensor '" + by_offset[i]->name + "' data overlaps tensor '" + prev->name + "'");
    }
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (base_ != nullptr) UnmapFile(base_, size_);
}

const SafetensorsTensorInfo* SafetensorsFile::FindTensor(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name, [](const auto& t, std::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

StatusOr<at::Tensor> SafetensorsFile::LoadTensor(std::string_view name) const {
  const SafetensorsTensorInfo* t = FindTensor(name);
  if (t == nullptr) return NotFound(path_ + ": no tensor '" + std::string(name) + "'");
  const auto dtype = SupportedDtype(t->dtype);
  if (!dtype) {
    return Unimplemented(path_ + ": tensor '" + t->name + "' has dtype " + t->dtype + " (supported: F32, F16, BF16)");
  }
  // A copy rather than from_blob: the data section need not be aligned for the element type.
  at::Tensor out = at::empty(t->shape, *dtype);
  if (t->nbytes > 0) std::memcpy(out.data_ptr(), base_ + t->file_offset, t->nbytes);
  return out;
}

StatusOr<std::unique_ptr<SafetensorsModel>> SafetensorsModel::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  auto m = std::make_unique<SafetensorsModel>();
  m->dir_ = dir;
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single_path = fs::path(dir) / "model.safetensors";
  std::error_code ec;
  if (fs::exists(index_path, ec)) {
    std::ifstream in(index_path);
    if (!in) return NotFound(index_path.string() + ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    const json index = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object()) return DataLoss(index_path.string() + ": not a JSON object");
    const auto wm = index.find("weight_map");
    if (wm == index.end() || !wm->is_object()) return DataLoss(index_path.string() + ": missing 'weight_map' object");
    std::map<std::string, const SafetensorsFile*> shards;
    for (const auto& [name, shard] : wm->items()) {
      if (!shard.is_string()) return DataLoss(index_path.string() + ": weight_map entry '" + name + "' is not a string");
      const std::string file = shard.get<std::string>();
      // Shards are siblings of the index; anything else would let a model read arbitrary files.
      if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
        return DataLoss(index_path.string() + ": invalid shard file name '" + file + "' for tensor '" + name + "'");
      }
      auto it = shards.find(file);
      if (it == shards.end()) {
        const std::string shard_path = (fs::path(dir) / file).string();
        auto opened = SafetensorsFile::Open(shard_path);
        if (!opened.ok()) {
          return Status(opened.status().code(),
                        opened.status().message() + " (shard listed in " + index_path.string() + ")");
        }
        m->files_.push_back(std::move(opened).value());
        it = shards.emplace(file, m->files_.back().get()).first;
      }
      if (it->second->FindTensor(name) == nullptr) {
        return DataLoss(it->second->path() + ": tensor '" + name + "' is listed in " + index_path.string() +
                        " but missing from the shard");
      }
      m->owner_.emplace(name, it->second);
    }
  } else if (fs::exists(single_path, ec)) {
    ASL_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(single_path.string()));
    for (const auto& t : f->tensors()) m->owner_.emplace(t.name, f.get());
    m->files_.push_back(std::move(f));
  } else {
    return NotFound(dir + ": no model.safetensors or model.safetensors.index.json");
  }
  return m;
}

const SafetensorsTensorInfo* SafetensorsModel::FindTensor(std::string_view name, const SafetensorsFile** file) const {
  auto it = owner_.find(name);
  if (it == owner_.end()) return nullptr;
  if (file != nullptr) *file = it->second;
  return it->second->FindTensor(name);
}

StatusOr<at::Tensor> SafetensorsModel::LoadTensor(std::string_view name) const {
  auto it = owner_.find(name);
  if (it == owner_.end()) return NotFound(dir_ + ": no tensor '" + std::string(name) + "' in the safetensors files");
  return it->second->LoadTensor(name);
}

}  // namespace asl::model
