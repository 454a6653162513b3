#include "engine/kv/block_pool.h"

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <string>
#include <unordered_set>

namespace asl::kv {
namespace {

std::string Where(SeqId seq, int layer) {
  return "(sequence " + std::to_string(seq) + ", layer " + std::to_string(layer) + ")";
}

}  // namespace

int64_t BlockPool::BytesPerBlock(int64_t num_kv_heads, int64_t head_dim, at::ScalarType dtype, int block_size) {
  return 2 * num_kv_heads * block_size * head_dim * static_cast<int64_t>(at::elementSize(dtype));
}

StatusOr<std::unique_ptr<BlockPool>> BlockPool::Create(const BlockPoolOptions& o) {
  if (o.num_layers < 1) return InvalidArgument("num_layers: must be >= 1, got " + std::to_string(o.num_layers));
  if (o.num_kv_heads < 1) return InvalidArgument("num_kv_heads: must be >= 1, got " + std::to_string(o.num_kv_heads));
  if (o.head_dim < 1) return InvalidArgument("head_dim: must be >= 1, got " + std::to_string(o.head_dim));
  if (o.block_size < 1) return InvalidArgument("block_size: must be >= 1, got " + std::to_string(o.block_size));
  if (o.dtype != at::kFloat && o.dtype != at::kBFloat16 && o.dtype != at::kHalf) {
    return InvalidArgument(std::string("dtype: KV storage must be float32, bfloat16 or float16, got ") + c10::toString(o.dtype));
  }
  if (o.num_blocks < 0 || o.bytes < 0) return InvalidArgument("num_blocks and bytes: must be >= 0");
  const int64_t per_block = BytesPerBlock(o.num_kv_heads, o.head_dim, o.dtype, o.block_size);
  const int64_t num_blocks = o.num_blocks > 0 ? o.num_blocks : o.bytes / per_block;
  if (num_blocks < 1) {
    return ResourceExhausted("kv cache: a budget of " + std::to_string(o.bytes) + " bytes holds no block of " +
                             std::to_string(per_block) + " bytes");
  }
  if (num_blocks > std::numeric_limits<BlockId>::max()) {
    return InvalidArgument("num_blocks: " + std::to_string(num_blocks) + " exceeds the block id range");
  }
  try {
    return std::unique_ptr<BlockPool>(new BlockPool(o, num_blocks, per_block));
  } catch (const c10::Error& e) {
    return ResourceExhausted("kv cache: cannot allocate " + std::to_string(num_blocks) + " blocks (" +
                             std::to_string(num_blocks * per_block) + " bytes) on " + o.device.str() + ": " +
                             e.what_without_backtrace());
  }
}

BlockPool::BlockPool(const BlockPoolOptions& o, int64_t num_blocks, int64_t bytes_per_block)
    : num_layers_(o.num_layers),
      num_kv_heads_(o.num_kv_heads),
      head_dim_(o.head_dim),
      block_size_(o.block_size),
      dtype_(o.dtype),
      device_(o.device),
      num_blocks_(num_blocks),
      bytes_per_block_(bytes_per_block) {
  const auto opts = at::TensorOptions().dtype(dtype_).device(device_);
  // On devices the gather path multiplies padding slots by 0, so they must not hold NaN bit
  // patterns: zero them (a fast device memset). The CPU kernel reads only stored tokens, so the CPU
  // pool stays uninitialised: the OS commits its pages as blocks are first written, and a large
  // pool costs neither start-up time nor resident memory until it is used.
  const std::vector<int64_t> shape{num_blocks_, num_kv_heads_, block_size_, head_dim_};
  k_cache_ = device_.is_cpu() ? at::empty(shape, opts) : at::zeros(shape, opts);
  v_cache_ = device_.is_cpu() ? at::empty(shape, opts) : at::zeros(shape, opts);
  free_list_.reserve(static_cast<size_t>(num_blocks_));
  for (int64_t b = num_blocks_ - 1; b >= 0; --b) free_list_.push_back(static_cast<BlockId>(b));
}

Status BlockPool::AddSequence(SeqId seq) {
  if (HasSequence(seq)) return InvalidArgument("kv cache: sequence " + std::to_string(seq) + " already exists");
  seqs_.emplace(seq, std::vector<LayerState>(static_cast<size_t>(num_layers_)));
  return Status::Ok();
}

void BlockPool::FreeSequence(SeqId seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  for (auto layer = it->second.rbegin(); layer != it->second.rend(); ++layer) {
    for (auto b = layer->block_table.rbegin(); b != layer->block_table.rend(); ++b) free_list_.push_back(*b);
  }
  seqs_.erase(it);
}

const BlockPool::LayerState* BlockPool::Find(SeqId seq, int layer) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end() || layer < 0 || layer >= num_layers_) return nullptr;
  return &it->second[static_cast<size_t>(layer)];
}

BlockPool::LayerState* BlockPool::Find(SeqId seq, int layer) {
  return const_cast<LayerState*>(static_cast<const BlockPool*>(this)->Find(seq, layer));
}

int64_t BlockPool::Length(SeqId seq, int layer) const {
  const LayerState* s = Find(seq, layer);
  return s ? s->length : 0;
}

const std::vector<BlockId>& BlockPool::block_table(SeqId seq, int layer) const {
  const LayerState* s = Find(seq, layer);
  ASL_CHECK(s != nullptr, "block_table: unknown " + Where(seq, layer));
  return s->block_table;
}

int64_t BlockPool::BlocksToGrow(SeqId seq, int layer, int64_t num_new_tokens) const {
  const LayerState* s = Find(seq, layer);
  const int64_t length = s ? s->length : 0;
  const int64_t held = s ? static_cast<int64_t>(s->block_table.size()) : 0;
  return std::max<int64_t>(0, BlocksForTokens(length + num_new_tokens) - held);
}

Status BlockPool::Grow(int layer, const std::vector<SeqId>& seqs, int64_t num_new_tokens) {
  if (layer < 0 || layer >= num_layers_) {
    return InvalidArgument("kv cache: layer " + std::to_string(layer) + " outside [0, " + std::to_string(num_layers_) + ")");
  }
  if (num_new_tokens < 0) return InvalidArgument("kv cache: negative token count");
  std::unordered_set<SeqId> seen;
  int64_t needed = 0;
  for (SeqId seq : seqs) {
    if (!HasSequence(seq)) return NotFound("kv cache: unknown sequence " + std::to_string(seq));
    if (!seen.insert(seq).second) return InvalidArgument("kv cache: sequence " + std::to_string(seq) + " listed twice");
    needed += BlocksToGrow(seq, layer, num_new_tokens);
  }
  if (!CanAllocate(needed)) {
    return ResourceExhausted("kv cache: need " + std::to_string(needed) + " blocks at layer " + std::to_string(layer) +
                             ", " + std::to_string(num_blocks_free()) + " free of " + std::to_string(num_blocks_));
  }
  for (SeqId seq : seqs) {
    LayerState& s = *Find(seq, layer);
    s.length += num_new_tokens;
    while (static_cast<int64_t>(s.block_table.size()) < BlocksForTokens(s.length)) {
      s.block_table.push_back(free_list_.back());
      free_list_.pop_back();
    }
  }
  return Status::Ok();
}

Status BlockPool::Truncate(SeqId seq, int layer, int64_t new_length) {
  LayerState* s = Find(seq, layer);
  if (s == nullptr) return NotFound("kv cache: unknown " + Where(seq, layer));
  if (new_length < 0 || new_length > s->length) {
    return InvalidArgument("kv cache: cannot truncate " + Where(seq, layer) + " of length " +
                           std::to_string(s->length) + " to " + std::to_string(new_length));
  }
  s->length = new_length;
  while (static_cast<int64_t>(s->block_table.size()) > BlocksForTokens(new_length)) {
    free_list_.push_back(s->block_table.back());
    s->block_table.pop_back();
  }
  return Status::Ok();
}

std::pair<at::Tensor, at::Tensor> BlockPool::Gather(SeqId seq, int layer) const {
  const std::vector<BlockId>& table = block_table(seq, layer);
  const int64_t len = Length(seq, layer);
  const int64_t nb = static_cast<int64_t>(table.size());
  at::Tensor ids = at::tensor(std::vector<int64_t>(table.begin(), table.end()), at::kLong).to(device_);
  auto gather = [&](const at::Tensor& cache) {
    // [nb, Hkv, bs, d] -> [Hkv, nb * bs, d] -> first len tokens.
    return cache.index_select(0, ids).permute({1, 0, 2, 3}).reshape({num_kv_heads_, nb * block_size_, head_dim_})
        .narrow(1, 0, len).contiguous();
  };
  return {gather(k_cache_), gather(v_cache_)};
}

Status BlockPool::CheckInvariants() const {
  std::vector<uint8_t> owned(static_cast<size_t>(num_blocks_), 0);
  auto claim = [&](BlockId b, const std::string& who) -> Status {
    if (b < 0 || b >= num_blocks_) return Internal("kv pool: block " + std::to_string(b) + " out of range in " + who);
    if (owned[static_cast<size_t>(b)]) return Internal("kv pool: block " + std::to_string(b) + " owned twice (" + who + ")");
    owned[static_cast<size_t>(b)] = 1;
    return Status::Ok();
  };
  for (BlockId b : free_list_) ASL_RETURN_IF_ERROR(claim(b, "free list"));
  int64_t held = 0;
  for (const auto& [seq, layers] : seqs_) {
    if (static_cast<int>(layers.size()) != num_layers_) return Internal("kv pool: sequence " + std::to_string(seq) + " has wrong layer count");
    for (int l = 0; l < num_layers_; ++l) {
      const LayerState& s = layers[static_cast<size_t>(l)];
      if (s.length < 0 || static_cast<int64_t>(s.block_table.size()) != BlocksForTokens(s.length)) {
        return Internal("kv pool: " + Where(seq, l) + " holds " + std::to_string(s.block_table.size()) +
                        " blocks for " + std::to_string(s.length) + " tokens");
      }
      for (BlockId b : s.block_table) ASL_RETURN_IF_ERROR(claim(b, Where(seq, l)));
      held += static_cast<int64_t>(s.block_table.size());
    }
  }
  if (held != num_blocks_used()) {
    return Internal("kv pool: tables hold " + std::to_string(held) + " blocks, accounting says " +
                    std::to_string(num_blocks_used()));
  }
  const auto leaked = std::count(owned.begin(), owned.end(), uint8_t{0});
  if (leaked != 0) return Internal("kv pool: " + std::to_string(leaked) + " blocks neither free nor owned");
  return Status::Ok();
}

int64_t FreeDeviceMemory(at::Device device) {
  if (!device.is_cuda() || !at::hasCUDA()) return 0;
  try {
    return static_cast<int64_t>(at::accelerator::getMemoryInfo(device.has_index() ? device.index() : 0).first);
  } catch (const c10::Error&) {
    return 0;
  }
}

int64_t DeviceMemoryAllocated(at::Device device) {
  if (!device.is_cuda() || !at::hasCUDA()) return 0;
  try {
    const auto stats = at::accelerator::getDeviceStats(device.has_index() ? device.index() : 0);
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].current;
  } catch (const c10::Error&) {
    return 0;
  }
}

}  // namespace asl::kv
