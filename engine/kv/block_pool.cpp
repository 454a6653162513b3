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

// splitmix64's finaliser: every input bit affects every output bit.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

BlockHash HashBlock(BlockHash parent, const std::vector<int32_t>& ids, int64_t first, int block_size) {
  BlockHash h = Mix(parent);
  for (int64_t i = first; i < first + block_size; ++i) h = Mix(h ^ static_cast<uint32_t>(ids[static_cast<size_t>(i)]));
  return h;
}

const std::vector<BlockId> kNoBlocks;

}  // namespace

std::vector<BlockHash> ChainHashes(BlockHash salt, const std::vector<int32_t>& ids, int block_size) {
  std::vector<BlockHash> out;
  BlockHash h = salt;
  for (int64_t first = 0; first + block_size <= static_cast<int64_t>(ids.size()); first += block_size) {
    h = HashBlock(h, ids, first, block_size);
    out.push_back(h);
  }
  return out;
}

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
  meta_.resize(static_cast<size_t>(num_blocks_));
}

Status BlockPool::AddSequence(SeqId seq) {
  if (HasSequence(seq)) return InvalidArgument("kv cache: sequence " + std::to_string(seq) + " already exists");
  SeqState state;
  state.layers.resize(static_cast<size_t>(num_layers_));
  seqs_.emplace(seq, std::move(state));
  return Status::Ok();
}

void BlockPool::Ref(BlockId b) {
  BlockMeta& m = meta_[static_cast<size_t>(b)];
  if (m.ref == 0 && m.cached) evictable_.erase(EvictKey{m.tick, -m.depth, m.layer, b});
  m.ref++;
}

void BlockPool::Unref(BlockId b) {
  BlockMeta& m = meta_[static_cast<size_t>(b)];
  ASL_CHECK(m.ref > 0, "kv pool: block " + std::to_string(b) + " released more often than referenced");
  if (--m.ref > 0) return;
  if (m.cached) {
    m.tick = tick_;
    evictable_.insert(EvictKey{m.tick, -m.depth, m.layer, b});
  } else {
    free_list_.push_back(b);
  }
}

void BlockPool::Uncache(BlockId b) {
  BlockMeta& m = meta_[static_cast<size_t>(b)];
  if (!m.cached) return;
  auto it = nodes_.find(m.hash);
  ASL_CHECK(it != nodes_.end() && it->second.blocks[static_cast<size_t>(m.layer)] == b, "kv pool: cache index lost a block");
  it->second.blocks[static_cast<size_t>(m.layer)] = -1;
  if (--it->second.num_present == 0) nodes_.erase(it);
  m.cached = false;
  num_cached_--;
}

BlockId BlockPool::EvictOne() {
  ASL_CHECK(!evictable_.empty(), "kv pool: no free block");
  const BlockId b = std::get<3>(*evictable_.begin());
  evictable_.erase(evictable_.begin());
  Uncache(b);
  num_evictions_++;
  return b;
}

BlockId BlockPool::TakeBlock() {
  if (free_list_.empty()) return EvictOne();
  const BlockId b = free_list_.back();
  free_list_.pop_back();
  return b;
}

void BlockPool::FreeSequence(SeqId seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  ++tick_;
  for (auto layer = it->second.layers.rbegin(); layer != it->second.layers.rend(); ++layer) {
    for (auto b = layer->block_table.rbegin(); b != layer->block_table.rend(); ++b) Unref(*b);
  }
  for (auto layer = it->second.pins.rbegin(); layer != it->second.pins.rend(); ++layer) {
    for (auto b = layer->rbegin(); b != layer->rend(); ++b) Unref(*b);
  }
  seqs_.erase(it);
}

const BlockPool::LayerState* BlockPool::Find(SeqId seq, int layer) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end() || layer < 0 || layer >= num_layers_) return nullptr;
  return &it->second.layers[static_cast<size_t>(layer)];
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
      const BlockId b = TakeBlock();
      meta_[static_cast<size_t>(b)].ref = 1;
      s.block_table.push_back(b);
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
  ++tick_;
  while (static_cast<int64_t>(s->block_table.size()) > BlocksForTokens(new_length)) {
    Unref(s->block_table.back());
    s->block_table.pop_back();
  }
  return Status::Ok();
}

std::pair<at::Tensor, at::Tensor> BlockPool::Gather(SeqId seq, int layer) const {
  return GatherBlocks(block_table(seq, layer), Length(seq, layer));
}

std::pair<at::Tensor, at::Tensor> BlockPool::GatherBlocks(const std::vector<BlockId>& table, int64_t len) const {
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
  // References counted from the tables and pins; where each unreferenced block is.
  std::vector<int32_t> refs(static_cast<size_t>(num_blocks_), 0);
  std::vector<uint8_t> placed(static_cast<size_t>(num_blocks_), 0);  // on the free list or evictable
  auto in_range = [&](BlockId b, const std::string& who) -> Status {
    if (b < 0 || b >= num_blocks_) return Internal("kv pool: block " + std::to_string(b) + " out of range in " + who);
    return Status::Ok();
  };
  auto place = [&](BlockId b, const std::string& who) -> Status {
    ASL_RETURN_IF_ERROR(in_range(b, who));
    if (placed[static_cast<size_t>(b)]) return Internal("kv pool: block " + std::to_string(b) + " listed twice (" + who + ")");
    placed[static_cast<size_t>(b)] = 1;
    return Status::Ok();
  };
  for (BlockId b : free_list_) {
    ASL_RETURN_IF_ERROR(place(b, "free list"));
    if (meta_[static_cast<size_t>(b)].cached) return Internal("kv pool: cached block " + std::to_string(b) + " on the free list");
  }
  for (const EvictKey& key : evictable_) {
    const BlockId b = std::get<3>(key);
    ASL_RETURN_IF_ERROR(place(b, "evictable set"));
    const BlockMeta& m = meta_[static_cast<size_t>(b)];
    if (!m.cached || key != EvictKey{m.tick, -m.depth, m.layer, b}) {
      return Internal("kv pool: evictable block " + std::to_string(b) + " is not cached as keyed");
    }
  }
  for (const auto& [seq, state] : seqs_) {
    if (static_cast<int>(state.layers.size()) != num_layers_) return Internal("kv pool: sequence " + std::to_string(seq) + " has wrong layer count");
    for (int l = 0; l < num_layers_; ++l) {
      const LayerState& s = state.layers[static_cast<size_t>(l)];
      if (s.length < 0 || static_cast<int64_t>(s.block_table.size()) != BlocksForTokens(s.length)) {
        return Internal("kv pool: " + Where(seq, l) + " holds " + std::to_string(s.block_table.size()) +
                        " blocks for " + std::to_string(s.length) + " tokens");
      }
      for (BlockId b : s.block_table) {
        ASL_RETURN_IF_ERROR(in_range(b, Where(seq, l)));
        refs[static_cast<size_t>(b)]++;
      }
    }
    if (!state.pins.empty() && static_cast<int>(state.pins.size()) != num_layers_) return Internal("kv pool: bad pins");
    for (const std::vector<BlockId>& pins : state.pins) {
      if (static_cast<int64_t>(pins.size()) * block_size_ != state.pinned_tokens) return Internal("kv pool: pins disagree with pinned tokens");
      for (BlockId b : pins) {
        ASL_RETURN_IF_ERROR(in_range(b, "pins of sequence " + std::to_string(seq)));
        refs[static_cast<size_t>(b)]++;
      }
    }
  }
  int64_t referenced = 0;
  for (int64_t b = 0; b < num_blocks_; ++b) {
    const BlockMeta& m = meta_[static_cast<size_t>(b)];
    if (m.ref != refs[static_cast<size_t>(b)]) {
      return Internal("kv pool: block " + std::to_string(b) + " counts " + std::to_string(m.ref) + " references, holds " +
                      std::to_string(refs[static_cast<size_t>(b)]));
    }
    if ((m.ref > 0) == (placed[static_cast<size_t>(b)] != 0)) {
      return Internal("kv pool: block " + std::to_string(b) + (m.ref > 0 ? " referenced and free" : " neither free nor referenced"));
    }
    referenced += m.ref > 0;
  }
  if (referenced != num_blocks_used()) {
    return Internal("kv pool: " + std::to_string(referenced) + " blocks referenced, accounting says " +
                    std::to_string(num_blocks_used()));
  }
  int64_t indexed = 0;
  for (const auto& [h, node] : nodes_) {
    int present = 0;
    for (int l = 0; l < num_layers_; ++l) {
      const BlockId b = node.blocks[static_cast<size_t>(l)];
      if (b < 0) continue;
      present++;
      const BlockMeta& m = meta_[static_cast<size_t>(b)];
      if (!m.cached || m.hash != h || m.layer != l) return Internal("kv pool: cache index disagrees with block " + std::to_string(b));
    }
    if (present == 0 || present != node.num_present) return Internal("kv pool: cache node with a wrong count");
    indexed += present;
  }
  if (indexed != num_cached_) return Internal("kv pool: cache index holds " + std::to_string(indexed) + " blocks, counter says " + std::to_string(num_cached_));
  if (max_cached_blocks_ > 0 && num_cached_ > max_cached_blocks_) return Internal("kv pool: cache over its capacity");
  return Status::Ok();
}

// ---- Prefix cache.

void BlockPool::SetCacheCapacity(int64_t max_cached_blocks, BlockHash salt) {
  if (max_cached_blocks <= 0 || salt != salt_) ResetCache();
  max_cached_blocks_ = std::max<int64_t>(0, std::min(max_cached_blocks, num_blocks_));
  salt_ = salt;
  while (num_cached_ > max_cached_blocks_ && !evictable_.empty()) free_list_.push_back(EvictOne());
}

const BlockPool::CacheNode* BlockPool::Node(BlockHash h, BlockHash parent, const std::vector<int32_t>& ids,
                                            int64_t first) const {
  auto it = nodes_.find(h);
  if (it == nodes_.end() || it->second.parent != parent) return nullptr;
  if (!std::equal(it->second.tokens.begin(), it->second.tokens.end(), ids.begin() + first)) return nullptr;
  return &it->second;
}

CachedPrefix BlockPool::LookupPrefix(const std::vector<int32_t>& ids, int64_t max_tokens) const {
  CachedPrefix out;
  if (!cache_enabled()) return out;
  max_tokens = std::min<int64_t>(max_tokens, static_cast<int64_t>(ids.size()));
  BlockHash parent = salt_;
  for (int64_t first = 0; first + block_size_ <= max_tokens; first += block_size_) {
    const BlockHash h = HashBlock(parent, ids, first, block_size_);
    const CacheNode* node = Node(h, parent, ids, first);
    if (node == nullptr || node->num_present != num_layers_) break;
    for (BlockId b : node->blocks) out.num_blocks_evictable += meta_[static_cast<size_t>(b)].ref == 0;
    out.num_tokens = first + block_size_;
    parent = h;
  }
  return out;
}

Status BlockPool::PinPrefix(SeqId seq, const std::vector<int32_t>& ids, int64_t num_tokens, bool share_into_tables) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return NotFound("kv cache: unknown sequence " + std::to_string(seq));
  SeqState& state = it->second;
  if (!state.pins.empty()) return InvalidArgument("kv cache: sequence " + std::to_string(seq) + " already pins a prefix");
  if (num_tokens <= 0) return Status::Ok();
  if (num_tokens % block_size_ != 0 || num_tokens > static_cast<int64_t>(ids.size())) {
    return InvalidArgument("kv cache: a pinned prefix is whole blocks of the prompt");
  }
  if (share_into_tables) {
    for (const LayerState& l : state.layers) {
      if (l.length != 0) return InvalidArgument("kv cache: sharing a prefix into non-empty tables");
    }
  }
  std::vector<std::vector<BlockId>> pins(static_cast<size_t>(num_layers_));
  BlockHash parent = salt_;
  for (int64_t first = 0; first < num_tokens; first += block_size_) {
    const BlockHash h = HashBlock(parent, ids, first, block_size_);
    const CacheNode* node = Node(h, parent, ids, first);
    if (node == nullptr || node->num_present != num_layers_) {
      return NotFound("kv cache: the prefix of " + std::to_string(num_tokens) + " tokens is no longer cached");
    }
    for (int l = 0; l < num_layers_; ++l) pins[static_cast<size_t>(l)].push_back(node->blocks[static_cast<size_t>(l)]);
    parent = h;
  }
  for (const auto& layer : pins) {
    for (BlockId b : layer) Ref(b);
  }
  if (share_into_tables) {
    for (int l = 0; l < num_layers_; ++l) {
      LayerState& ls = state.layers[static_cast<size_t>(l)];
      ls.block_table = pins[static_cast<size_t>(l)];
      ls.length = num_tokens;
      ls.in_order = true;
      for (BlockId b : ls.block_table) Ref(b);
    }
  }
  state.pins = std::move(pins);
  state.pinned_tokens = num_tokens;
  return Status::Ok();
}

int64_t BlockPool::PinnedTokens(SeqId seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? 0 : it->second.pinned_tokens;
}

const std::vector<BlockId>& BlockPool::pinned_blocks(SeqId seq, int layer) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end() || it->second.pins.empty() || layer < 0 || layer >= num_layers_) return kNoBlocks;
  return it->second.pins[static_cast<size_t>(layer)];
}

Status BlockPool::SharePinned(SeqId seq, int layer) {
  LayerState* s = Find(seq, layer);
  if (s == nullptr) return NotFound("kv cache: unknown " + Where(seq, layer));
  const std::vector<BlockId>& pins = pinned_blocks(seq, layer);
  if (pins.empty()) return InvalidArgument("kv cache: " + Where(seq, layer) + " pins no prefix");
  if (s->length != 0) return InvalidArgument("kv cache: " + Where(seq, layer) + " is not empty");
  s->block_table = pins;
  s->length = PinnedTokens(seq);
  for (BlockId b : pins) Ref(b);
  return Status::Ok();
}

void BlockPool::ReleasePins(SeqId seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end() || it->second.pins.empty()) return;
  ++tick_;
  for (auto layer = it->second.pins.rbegin(); layer != it->second.pins.rend(); ++layer) {
    for (auto b = layer->rbegin(); b != layer->rend(); ++b) Unref(*b);
  }
  it->second.pins.clear();
  it->second.pinned_tokens = 0;
}

bool BlockPool::MakeCacheRoom() {
  if (num_cached_ < max_cached_blocks_) return true;
  if (evictable_.empty()) return false;
  free_list_.push_back(EvictOne());
  return true;
}

bool BlockPool::Register(BlockId b, int layer, BlockHash h, BlockHash parent, const std::vector<int32_t>& ids,
                         int64_t depth) {
  const int64_t first = depth * block_size_;
  auto it = nodes_.find(h);
  if (it != nodes_.end()) {
    if (Node(h, parent, ids, first) == nullptr) return false;  // a hash collision: cache neither
    if (it->second.blocks[static_cast<size_t>(layer)] >= 0) return false;
  }
  if (!MakeCacheRoom()) return false;
  it = nodes_.find(h);  // MakeCacheRoom may have erased it
  if (it == nodes_.end()) {
    CacheNode node;
    node.parent = parent;
    node.tokens.assign(ids.begin() + first, ids.begin() + first + block_size_);
    node.blocks.assign(static_cast<size_t>(num_layers_), -1);
    it = nodes_.emplace(h, std::move(node)).first;
  }
  it->second.blocks[static_cast<size_t>(layer)] = b;
  it->second.num_present++;
  BlockMeta& m = meta_[static_cast<size_t>(b)];
  m.cached = true;
  m.hash = h;
  m.layer = layer;
  m.depth = static_cast<int32_t>(depth);
  num_cached_++;
  return true;
}

void BlockPool::CacheTable(SeqId seq, int layer, const std::vector<int32_t>& ids) {
  LayerState* s = Find(seq, layer);
  if (s == nullptr) return;
  s->in_order = true;
  if (!cache_enabled()) return;
  const int64_t tokens = std::min<int64_t>(s->length, static_cast<int64_t>(ids.size()));
  BlockHash parent = salt_;
  for (int64_t depth = 0; (depth + 1) * block_size_ <= tokens; ++depth) {
    const BlockHash h = HashBlock(parent, ids, depth * block_size_, block_size_);
    const BlockId b = s->block_table[static_cast<size_t>(depth)];
    const BlockMeta& m = meta_[static_cast<size_t>(b)];
    if (!(m.cached && m.hash == h && m.layer == layer)) {
      if (m.cached) return;  // holds other tokens: the table is not what the caller said
      if (!Register(b, layer, h, parent, ids, depth) && num_cached_ >= max_cached_blocks_) return;
    }
    parent = h;
  }
}

void BlockPool::CacheSequence(SeqId seq, const std::vector<int32_t>& ids) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end() || !cache_enabled()) return;
  for (int l = 0; l < num_layers_; ++l) {
    if (it->second.layers[static_cast<size_t>(l)].in_order) CacheTable(seq, l, ids);
  }
}

void BlockPool::CacheRows(int layer, const std::vector<int32_t>& ids, int64_t first, const at::Tensor& k,
                          const at::Tensor& v) {
  if (!cache_enabled() || layer < 0 || layer >= num_layers_ || first % block_size_ != 0) return;
  const int64_t end = first + std::min<int64_t>(k.size(1), static_cast<int64_t>(ids.size()) - first);
  std::vector<int64_t> rows_from;  // first row (in k) of each block to write
  std::vector<BlockId> blocks;
  ++tick_;
  // Room for one more cached block without evicting what this call wrote (the newest tick).
  auto has_room = [&] {
    const bool old_evictable = !evictable_.empty() && std::get<0>(*evictable_.begin()) != tick_;
    if (num_cached_ >= max_cached_blocks_) return old_evictable;
    return !free_list_.empty() || old_evictable;
  };
  BlockHash parent = salt_;
  for (int64_t depth = 0; (depth + 1) * block_size_ <= end; ++depth) {
    const int64_t start = depth * block_size_;
    const BlockHash h = HashBlock(parent, ids, start, block_size_);
    if (start >= first) {
      auto it = nodes_.find(h);
      if (it != nodes_.end() && Node(h, parent, ids, start) == nullptr) break;  // a hash collision
      const bool present = it != nodes_.end() && it->second.blocks[static_cast<size_t>(layer)] >= 0;
      if (!present) {
        if (!has_room()) break;
        if (num_cached_ >= max_cached_blocks_) free_list_.push_back(EvictOne());  // the cap holds
        const BlockId b = TakeBlock();
        const bool ok = Register(b, layer, h, parent, ids, depth);
        ASL_CHECK(ok, "kv pool: a cache slot made room for was refused");
        meta_[static_cast<size_t>(b)].tick = tick_;
        evictable_.insert(EvictKey{tick_, -static_cast<int32_t>(depth), layer, b});
        rows_from.push_back(start - first);
        blocks.push_back(b);
      }
    }
    parent = h;
  }
  if (blocks.empty()) return;
  // One copy per layer: rows [Hkv, nb * bs, d] gathered block by block -> [nb, Hkv, bs, d].
  at::Tensor starts = at::tensor(rows_from, at::kLong);
  at::Tensor idx = (starts.unsqueeze(1) + at::arange(block_size_, at::kLong).unsqueeze(0)).reshape({-1}).to(k.device());
  at::Tensor ids_t = at::tensor(std::vector<int64_t>(blocks.begin(), blocks.end()), at::kLong).to(device_);
  const int64_t nb = static_cast<int64_t>(blocks.size());
  auto to_blocks = [&](const at::Tensor& x) {
    return x.index_select(1, idx).to(device_, dtype_).view({num_kv_heads_, nb, block_size_, head_dim_}).permute({1, 0, 2, 3});
  };
  k_cache_.index_copy_(0, ids_t, to_blocks(k));
  v_cache_.index_copy_(0, ids_t, to_blocks(v));
}

void BlockPool::ResetCache() {
  std::vector<BlockId> drop;
  for (const EvictKey& key : evictable_) drop.push_back(std::get<3>(key));
  evictable_.clear();
  for (BlockMeta& m : meta_) m.cached = false;
  nodes_.clear();
  num_cached_ = 0;
  for (BlockId b : drop) free_list_.push_back(b);
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
