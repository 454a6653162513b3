#include "engine/sched/block_accounting.h"

#include <algorithm>

namespace asl::sched {

RequestBlocks BlockAccounting::Bounds(const std::vector<int64_t>& prompt_kv_tokens_per_layer,
                                      int64_t max_tokens) const {
  RequestBlocks b;
  for (int64_t tokens : prompt_kv_tokens_per_layer) {
    b.prompt += BlocksForTokens(tokens);
    b.lifetime += BlocksForTokens(tokens + max_tokens);
  }
  b.lifetime = std::max(b.lifetime, b.prompt + num_layers_);
  return b;
}

int64_t BlockAccounting::Held(const Sequence& seq) const {
  int64_t held = 0;
  for (int l = 0; l < num_layers_; ++l) held += BlocksForTokens(pool_->Length(seq.id, l));
  return held;
}

int64_t BlockAccounting::ForNextToken(const Sequence& seq) const {
  int64_t need = 0;
  for (int l = 0; l < num_layers_; ++l) {
    if (pool_->Length(seq.id, l) % block_size_ == 0) need++;
  }
  return need;
}

int64_t BlockAccounting::ForStep(const Sequence& seq) const {
  if (seq.state == SeqState::kPrefilling) return std::max<int64_t>(0, seq.admission_blocks - Held(seq));
  return ForNextToken(seq);
}

int64_t BlockAccounting::ToAdmit(const Sequence& seq) const {
  const int64_t replay_blocks = BlocksForTokens(static_cast<int64_t>(seq.output_ids.size()));
  const PrefixHit hit = pool_->CachedPrefix(seq);
  return seq.admission_blocks - hit.shared_blocks + hit.evictable_blocks + num_layers_ * (1 + replay_blocks);
}

int64_t BlockAccounting::Reserved(const Sequence& seq) const { return std::max(seq.lifetime_blocks, ToAdmit(seq)); }

}  // namespace asl::sched
