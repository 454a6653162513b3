#include "engine/model/gguf.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "engine/model/mapped_file.h"
#include "engine/model/quant.h"

namespace asl::model {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian uint32
constexpr uint32_t kMaxDims = 4;         // GGML_MAX_DIMS
constexpr uint64_t kMaxKeyLength = 65535;  // gguf.md: keys are at most 2^16-1 bytes
constexpr int kMaxArrayDepth = 4;

// Fixed size of a scalar value type; 0 for string and array.
uint64_t ScalarSize(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8: case GgufValueType::kInt8: case GgufValueType::kBool: return 1;
    case GgufValueType::kUint16: case GgufValueType::kInt16: return 2;
    case GgufValueType::kUint32: case GgufValueType::kInt32: case GgufValueType::kFloat32: return 4;
    case GgufValueType::kUint64: case GgufValueType::kInt64: case GgufValueType::kFloat64: return 8;
    default: return 0;
  }
}

bool ValidType(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kFloat64); }

std::string Shape(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Bounds-checked cursor over the mapped header; every failure names the file and the offset.
class GgufFile::Parser {
 public:
  Parser(const std::string& path, const uint8_t* data, uint64_t size) : path_(path), data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }
  void set_pos(uint64_t p) { pos_ = p; }

  Status Corrupt(const std::string& what) const { return DataLoss(path_ + ": " + what); }
  Status Truncated(const std::string& what) const {
    return DataLoss(path_ + ": truncated: " + what + " at offset " + std::to_string(pos_) +
                    " extends past end of file (" + std::to_string(size_) + " bytes)");
  }

  template <typename T>
  Status Read(T* out, const std::string& what) {
    if (remaining() < sizeof(T)) return Truncated(what);
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::Ok();
  }

  Status Skip(uint64_t n, const std::string& what) {
    if (remaining() < n) return Truncated(what);
    pos_ += n;
    return Status::Ok();
  }

  Status ReadString(std::string_view* out, const std::string& what) {
    uint64_t len = 0;
    ASL_RETURN_IF_ERROR(Read(&len, what + " length"));
    if (len > remaining()) {
      return Corrupt(what + " at offset " + std::to_string(pos_ - 8) + " has length " + std::to_string(len) +
                     ", past end of file (" + std::to_string(size_) + " bytes)");
    }
    *out = std::string_view(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return Status::Ok();
  }

  // Walks over one value of `type`, validating lengths and nested arrays.
  Status SkipValue(GgufValueType type, const std::string& what, int depth) {
    if (const uint64_t n = ScalarSize(type)) return Skip(n, what);
    if (type == GgufValueType::kString) {
      std::string_view s;
      return ReadString(&s, what);
    }
    uint32_t elem = 0;
    uint64_t count = 0;
    ASL_RETURN_IF_ERROR(ReadArrayHeader(&elem, &count, what, depth));
    return SkipArrayElements(static_cast<GgufValueType>(elem), count, what, depth);
  }

  Status ReadArrayHeader(uint32_t* elem, uint64_t* count, const std::string& what, int depth) {
    if (depth >= kMaxArrayDepth) return Corrupt(what + ": arrays nested deeper than " + std::to_string(kMaxArrayDepth));
    ASL_RETURN_IF_ERROR(Read(elem, what + " element type"));
    if (!ValidType(*elem)) return Corrupt(what + ": unknown array element type " + std::to_string(*elem));
    ASL_RETURN_IF_ERROR(Read(count, what + " element count"));
    // Every element takes at least one byte (strings and arrays at least 8), so a count that
    // cannot fit is rejected before anything is sized from it.
    const uint64_t min_size = std::max<uint64_t>(ScalarSize(static_cast<GgufValueType>(*elem)), 1) *
                              (ScalarSize(static_cast<GgufValueType>(*elem)) ? 1 : 8);
    if (*count > remaining() / min_size) {
      return Corrupt(what + ": array of " + std::to_string(*count) + " elements at offset " +
                     std::to_string(pos_) + " extends past end of file (" + std::to_string(size_) + " bytes)");
    }
    return Status::Ok();
  }

  Status SkipArrayElements(GgufValueType elem, uint64_t count, const std::string& what, int depth) {
    if (const uint64_t n = ScalarSize(elem)) return Skip(n * count, what);  // count bounded above
    for (uint64_t i = 0; i < count; ++i) ASL_RETURN_IF_ERROR(SkipValue(elem, what + "[" + std::to_string(i) + "]", depth + 1));
    return Status::Ok();
  }

 private:
  const std::string& path_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  ASL_RETURN_IF_ERROR(MapFile(path, &f->base_, &f->size_));

  Parser in(f->path_, f->base_, f->size_);
  uint32_t magic = 0;
  ASL_RETURN_IF_ERROR(in.Read(&magic, "magic"));
  if (magic != kMagic) return in.Corrupt("not a GGUF file (bad magic)");
  ASL_RETURN_IF_ERROR(in.Read(&f->version_, "version"));
  if (f->version_ == 1) return Unimplemented(path + ": GGUF version 1 is not supported (convert to v3)");
  if (f->version_ != 2 && f->version_ != 3) {
    return in.Corrupt("unknown GGUF version " + std::to_string(f->version_) + " (expected 2 or 3)");
  }
  uint64_t tensor_count = 0, kv_count = 0;
  ASL_RETURN_IF_ERROR(in.Read(&tensor_count, "tensor count"));
  ASL_RETURN_IF_ERROR(in.Read(&kv_count, "metadata count"));
  // Minimum encoded sizes: a tensor info is name length + n_dims + type + offset (24 bytes), a
  // key-value pair is key length + type + a one-byte value (13 bytes).
  if (kv_count > in.remaining() / 13) {
    return in.Corrupt("metadata count " + std::to_string(kv_count) + " is impossible for a file of " +
                      std::to_string(f->size_) + " bytes");
  }
  if (tensor_count > in.remaining() / 24) {
    return in.Corrupt("tensor count " + std::to_string(tensor_count) + " is impossible for a file of " +
                      std::to_string(f->size_) + " bytes");
  }

  f->kvs_.reserve(kv_count);
  for (uint64_t i = 0; i < kv_count; ++i) {
    const std::string what = "metadata #" + std::to_string(i);
    std::string_view key;
    ASL_RETURN_IF_ERROR(in.ReadString(&key, what + " key"));
    if (key.empty() || key.size() > kMaxKeyLength) {
      return in.Corrupt(what + " has an invalid key length " + std::to_string(key.size()));
    }
    Kv kv;
    kv.key = std::string(key);
    const std::string kwhat = "metadata '" + kv.key + "'";
    uint32_t type = 0;
    ASL_RETURN_IF_ERROR(in.Read(&type, kwhat + " type"));
    if (!ValidType(type)) return in.Corrupt(kwhat + " has unknown value type " + std::to_string(type));
    kv.type = static_cast<GgufValueType>(type);
    if (kv.type == GgufValueType::kArray) {
      uint32_t elem = 0;
      ASL_RETURN_IF_ERROR(in.ReadArrayHeader(&elem, &kv.array_count, kwhat, 0));
      kv.array_type = static_cast<GgufValueType>(elem);
      kv.value_offset = in.pos();
      ASL_RETURN_IF_ERROR(in.SkipArrayElements(kv.array_type, kv.array_count, kwhat, 0));
    } else {
      kv.value_offset = in.pos();
      ASL_RETURN_IF_ERROR(in.SkipValue(kv.type, kwhat, 0));
    }
    if (!f->kv_index_.emplace(kv.key, f->kvs_.size()).second) return in.Corrupt("duplicate metadata key '" + kv.key + "'");
    f->kvs_.push_back(std::move(kv));
  }

  if (f->HasKey("general.alignment")) {
    const auto a = f->GetUint("general.alignment");
    if (!a || *a == 0 || (*a & (*a - 1)) != 0 || *a > (1u << 30)) {
      return in.Corrupt("general.alignment must be a power of two");
    }
    f->alignment_ = *a;
  }

  f->tensors_.reserve(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo t;
    std::string_view name;
    ASL_RETURN_IF_ERROR(in.ReadString(&name, "tensor #" + std::to_string(i) + " name"));
    t.name = std::string(name);
    const std::string what = t.name.empty() ? "tensor #" + std::to_string(i) + " (unnamed)" : "tensor '" + t.name + "'";
    uint32_t n_dims = 0;
    ASL_RETURN_IF_ERROR(in.Read(&n_dims, what + " dimension count"));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return in.Corrupt(what + " has " + std::to_string(n_dims) + " dimensions (expected 1 to 4)");
    }
    std::vector<int64_t> ne(n_dims);
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t v = 0;
      ASL_RETURN_IF_ERROR(in.Read(&v, what + " dimension"));
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (v != 0 && static_cast<uint64_t>(numel) > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / v)) {
        return in.Corrupt(what + " has an impossible dimension " + std::to_string(v));
      }
      ne[d] = static_cast<int64_t>(v);
      numel *= ne[d];
    }
    t.shape.assign(ne.rbegin(), ne.rend());
    ASL_RETURN_IF_ERROR(in.Read(&t.type, what + " type"));
    const auto traits = GgmlTypeInfo(t.type);
    if (!traits) return in.Corrupt(what + " has unknown ggml type id " + std::to_string(t.type));
    if (ne[0] % traits->block_size != 0) {
      return in.Corrupt(what + ": row length " + std::to_string(ne[0]) + " is not a multiple of the " +
                        traits->name + " block size " + std::to_string(traits->block_size));
    }
    const uint64_t num_blocks = static_cast<uint64_t>(numel / traits->block_size);
    if (num_blocks > f->size_ / static_cast<uint64_t>(traits->type_size)) {
      return in.Corrupt(what + " data extends past end of file (" + std::to_string(numel) + " " +
                        traits->name + " elements in a file of " + std::to_string(f->size_) + " bytes)");
    }
    t.nbytes = num_blocks * static_cast<uint64_t>(traits->type_size);
    ASL_RETURN_IF_ERROR(in.Read(&t.offset, what + " offset"));
    if (t.offset % f->alignment_ != 0) {
      return in.Corrupt(what + " offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                        std::to_string(f->alignment_));
    }
    if (!f->tensor_index_.emplace(t.name, f->tensors_.size()).second) {
      return in.Corrupt("duplicate tensor name '" + t.name + "'");
    }
    f->tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment; all checks below are written
  // so that no addition can overflow.
  const uint64_t pad = (f->alignment_ - in.pos() % f->alignment_) % f->alignment_;
  f->data_offset_ = in.pos() + pad;
  if (!f->tensors_.empty() && f->data_offset_ > f->size_) {
    return in.Corrupt("data section starts past end of file");
  }
  const uint64_t data_size = f->tensors_.empty() ? 0 : f->size_ - f->data_offset_;
  std::vector<const GgufTensorInfo*> by_offset;
  by_offset.reserve(f->tensors_.size());
  for (GgufTensorInfo& t : f->tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      return in.Corrupt("tensor '" + t.name + "' data extends past end of file (offset " + std::to_string(t.offset) +
                        ", " + std::to_string(t.nbytes) + " bytes, data section " + std::to_string(data_size) + " bytes)");
    }
    t.file_offset = f->data_offset_ + t.offset;
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensorInfo* prev = by_offset[i - 1];
    if (prev->nbytes > 0 && by_offset[i]->offset < prev->offset + prev->nbytes) {
      return in.Corrupt("tensor '" + by_offset[i]->name + "' data overlaps tensor '" + prev->name + "'");
    }
  }
  return f;
}

GgufFile::~GgufFile() {
  if (base_ != nullptr) UnmapFile(base_, size_);
}

const GgufFile::Kv* GgufFile::FindKv(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kvs_[it->second];
}

bool GgufFile::HasKey(std::string_view key) const { return FindKv(key) != nullptr; }

std::optional<GgufValueType> GgufFile::KeyType(std::string_view key) const {
  const Kv* kv = FindKv(key);
  return kv ? std::optional(kv->type) : std::nullopt;
}

std::vector<std::string> GgufFile::Keys() const {
  std::vector<std::string> keys;
  for (const Kv& kv : kvs_) keys.push_back(kv.key);
  return keys;
}

namespace {

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Integer scalars widened to a signed or unsigned 64-bit value; nullopt for non-integers.
struct Int {
  bool negative;
  uint64_t magnitude;  // two's complement value when !negative
  int64_t value;       // valid when negative
};
std::optional<Int> ReadInt(GgufValueType t, const uint8_t* p) {
  auto s = [](int64_t v) { return Int{v < 0, static_cast<uint64_t>(v), v}; };
  auto u = [](uint64_t v) { return Int{false, v, 0}; };
  switch (t) {
    case GgufValueType::kUint8: return u(Load<uint8_t>(p));
    case GgufValueType::kInt8: return s(Load<int8_t>(p));
    case GgufValueType::kUint16: return u(Load<uint16_t>(p));
    case GgufValueType::kInt16: return s(Load<int16_t>(p));
    case GgufValueType::kUint32: return u(Load<uint32_t>(p));
    case GgufValueType::kInt32: return s(Load<int32_t>(p));
    case GgufValueType::kUint64: return u(Load<uint64_t>(p));
    case GgufValueType::kInt64: return s(Load<int64_t>(p));
    default: return std::nullopt;
  }
}

std::optional<int64_t> AsSigned(std::optional<Int> v) {
  if (!v) return std::nullopt;
  if (v->negative) return v->value;
  if (v->magnitude > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return static_cast<int64_t>(v->magnitude);
}

std::optional<double> ReadFloat(GgufValueType t, const uint8_t* p) {
  if (t == GgufValueType::kFloat32) return Load<float>(p);
  if (t == GgufValueType::kFloat64) return Load<double>(p);
  return std::nullopt;
}

}  // namespace

std::optional<int64_t> GgufFile::GetInt(std::string_view key) const {
  const Kv* kv = FindKv(key);
  if (!kv) return std::nullopt;
  return AsSigned(ReadInt(kv->type, base_ + kv->value_offset));
}

std::optional<uint64_t> GgufFile::GetUint(std::string_view key) const {
  const Kv* kv = FindKv(key);
  if (!kv) return std::nullopt;
  const auto v = ReadInt(kv->type, base_ + kv->value_offset);
  if (!v || v->negative) return std::nullopt;
  return v->magnitude;
}

std::optional<double> GgufFile::GetFloat(std::string_view key) const {
  const Kv* kv = FindKv(key);
  if (!kv) return std::nullopt;
  return ReadFloat(kv->type, base_ + kv->value_offset);
}

std::optional<bool> GgufFile::GetBool(std::string_view key) const {
  const Kv* kv = FindKv(key);
  if (!kv || kv->type != GgufValueType::kBool) return std::nullopt;
  return base_[kv->value_offset] != 0;
}

std::optional<std::string> GgufFile::GetString(std::string_view key) const {
  const Kv* kv = FindKv(key);
  if (!kv || kv->type != GgufValueType::kString) return std::nullopt;
  const uint64_t len = Load<uint64_t>(base_ + kv->value_offset);  // validated by Open
  return std::string(reinterpret_cast<const char*>(base_ + kv->value_offset + 8), len);
}

std::optional<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  const Kv* kv = FindKv(key);
  if (!kv || kv->type != GgufValueType::kArray || kv->array_type != GgufValueType::kString) return std::nullopt;
  std::vector<std::string> out;
  out.reserve(kv->array_count);
  uint64_t pos = kv->value_offset;
  for (uint64_t i = 0; i < kv->array_count; ++i) {
    const uint64_t len = Load<uint64_t>(base_ + pos);
    out.emplace_back(reinterpret_cast<const char*>(base_ + pos + 8), len);
    pos += 8 + len;
  }
  return out;
}

std::optional<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  const Kv* kv = FindKv(key);
  if (!kv || kv->type != GgufValueType::kArray) return std::nullopt;
  const uint64_t size = ScalarSize(kv->array_type);
  const uint8_t probe[8] = {};
  if (size == 0 || !ReadInt(kv->array_type, probe)) return std::nullopt;  // not an integer element type
  std::vector<int64_t> out(kv->array_count);
  for (uint64_t i = 0; i < kv->array_count; ++i) {
    const auto v = AsSigned(ReadInt(kv->array_type, base_ + kv->value_offset + i * size));
    if (!v) return std::nullopt;
    out[i] = *v;
  }
  return out;
}

std::optional<std::vector<double>> GgufFile::GetFloatArray(std::string_view key) const {
  const Kv* kv = FindKv(key);
  if (!kv || kv->type != GgufValueType::kArray) return std::nullopt;
  if (kv->array_type != GgufValueType::kFloat32 && kv->array_type != GgufValueType::kFloat64) return std::nullopt;
  const uint64_t size = ScalarSize(kv->array_type);
  std::vector<double> out(kv->array_count);
  for (uint64_t i = 0; i < kv->array_count; ++i) out[i] = *ReadFloat(kv->array_type, base_ + kv->value_offset + i * size);
  return out;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

StatusOr<at::Tensor> GgufFile::LoadTensor(const GgufTensorInfo& info) const {
  const GgufTensorInfo* own = FindTensor(info.name);
  if (own == nullptr || own->file_offset != info.file_offset) {
    return NotFound(path_ + ": no tensor '" + info.name + "' in this file");
  }
  if (!IsDequantizable(own->type)) {
    return Unimplemented(path_ + ": tensor '" + own->name + "' has type " + GgmlTypeName(own->type) +
                         ", which cannot be dequantised (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)");
  }
  at::Tensor out = at::empty(own->shape, at::kFloat);
  const Status st = Dequantize(own->type, base_ + own->file_offset, static_cast<int64_t>(own->nbytes), own->numel(),
                               out.data_ptr<float>());
  if (!st.ok()) return Status(st.code(), path_ + ": tensor '" + own->name + "' " + Shape(own->shape) + ": " + st.message());
  return out;
}

}  // namespace asl::model
