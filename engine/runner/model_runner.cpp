#include "engine/runner/model_runner.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <iterator>
#include <tuple>
#include <utility>

#include "engine/prune/scoring.h"

namespace asl::runner {

// A segment of the packed batch: `count` rows, in batch order, shared by every member. Sequences
// with identical tokens at identical positions (the same prompt, e.g. one prompt under several
// policies or n completions of it) share one segment: their rows are the same numbers, so the
// forward pass computes them once. A member whose policy cuts it leaves with a copy of the rows it
// selected; members that never cut share to the end.
struct ModelRunner::Active {
  std::vector<size_t> members;  // indices into the caller's seqs
  int64_t count = 0;
  at::Tensor token_ids;   // [count] int64 on CPU: which prompt tokens these rows are
  at::Tensor positions;   // [count] int64 on CPU: original positions (re-indexed in pass 2)
};

namespace {

// Per KV head, the rows `keep` [Hkv, C] of x [T, Hkv, d] -> [Hkv, C, d]; all rows when undefined.
at::Tensor GatherPerHead(const at::Tensor& x, const at::Tensor& keep) {
  at::Tensor xt = x.transpose(0, 1);  // [Hkv, T, d]
  if (!keep.defined()) return xt.contiguous();
  at::Tensor idx = keep.to(x.device()).unsqueeze(-1).expand({keep.size(0), keep.size(1), x.size(2)});
  return at::gather(xt, 1, idx);
}

at::Tensor RowRange(int64_t start, int64_t count, const at::Device& device) {
  return at::arange(start, start + count, at::TensorOptions().dtype(at::kLong).device(device));
}

}  // namespace

std::vector<ModelRunner::Active> ModelRunner::MergeIdentical(std::vector<Active> batch) {
  std::vector<Active> merged;
  for (Active& a : batch) {
    auto same = std::find_if(merged.begin(), merged.end(), [&](const Active& m) {
      return m.count == a.count && at::equal(m.token_ids, a.token_ids) && at::equal(m.positions, a.positions);
    });
    if (same == merged.end()) {
      merged.push_back(std::move(a));
    } else {
      same->members.insert(same->members.end(), a.members.begin(), a.members.end());
    }
  }
  return merged;
}

Status ModelRunner::RunPass(std::vector<Active> batch, std::vector<PrefillSeq>& seqs,
                            std::vector<at::Tensor>& final_hidden, std::vector<Active>& second_pass,
                            int64_t& token_layers) {
  const model::LlamaModel& m = *model_;
  const int num_layers = static_cast<int>(m.config().num_layers);
  const double scale = m.attention_scale();

  batch = MergeIdentical(std::move(batch));
  std::vector<at::Tensor> ids, pos;
  for (const Active& a : batch) {
    ids.push_back(a.token_ids);
    pos.push_back(a.positions);
  }
  at::Tensor x = m.Embed(at::cat(ids));      // [T, hidden]
  at::Tensor positions = at::cat(pos);       // [T]

  for (int layer = 0; layer < num_layers && !batch.empty(); ++layer) {
    token_layers += x.size(0);
    model::Rope rope = m.RopeFor(positions);
    model::Qkv qkv = m.AttentionInputs(layer, x, rope, model::Rows::kTokens);
    std::vector<at::Tensor> attn_parts;
    std::vector<std::vector<prune::LayerPlan>> plans(batch.size());  // per segment, per member
    bool changed = false;
    int64_t offset = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      const Active& a = batch[i];
      model::Qkv s{qkv.q.narrow(0, offset, a.count), qkv.k.narrow(0, offset, a.count),
                   qkv.v.narrow(0, offset, a.count)};
      offset += a.count;
      attn_parts.push_back(m.CausalAttention(s));

      // Members of one segment share its Q/K, so their scores are computed once per scoring setting.
      std::vector<std::pair<std::tuple<int, int, Pooling>, at::Tensor>> pooled_by_setting;
      at::Tensor gem_shared;
      for (size_t member : a.members) {
        prune::PruningPolicy& policy = *seqs[member].policy;
        const PruningParams& p = policy.params();
        const prune::ScoreNeeds needs = policy.Needs(layer, a.count);
        at::Tensor pooled, gem;
        if (needs.window_scores) {
          const auto setting = std::make_tuple(p.window, p.kernel, p.pooling);
          auto it = std::find_if(pooled_by_setting.begin(), pooled_by_setting.end(),
                                 [&](const auto& e) { return e.first == setting; });
          if (it == pooled_by_setting.end()) {
            pooled_by_setting.emplace_back(
                setting, prune::PooledWindowScores(s.q, s.k, p.window, p.kernel, p.pooling, scale));
            it = std::prev(pooled_by_setting.end());
          }
          pooled = it->second;
        }
        if (needs.gem_scores) {
          if (!gem_shared.defined()) gem_shared = prune::GemFilterScores(s.q, s.k, /*kernel=*/5);
          gem = gem_shared;
        }
        const bool storing = !policy.in_first_pass();
        prune::LayerPlan plan = policy.OnLayer(layer, a.count, pooled, gem);
        if (storing) {
          ASL_RETURN_IF_ERROR(kv_->Append(seqs[member].seq, layer, GatherPerHead(s.k, plan.kv_keep),
                                          GatherPerHead(s.v, plan.kv_keep)));
        }
        changed |= plan.select.defined();
        plans[i].push_back(std::move(plan));
      }
    }
    x = x + m.AttentionOutput(layer, batch.size() == 1 ? attn_parts[0] : at::cat(attn_parts), model::Rows::kTokens);
    x = x + m.Mlp(layer, x, model::Rows::kTokens);
    if (!changed) continue;

    // Shrink the packed batch: a sequence cut here keeps its selected rows (with their original
    // positions, §4) as a segment of its own; a sequence whose first pass ended leaves for pass 2
    // (§7); the segment's other members keep its rows.
    std::vector<at::Tensor> rows;
    std::vector<Active> next;
    offset = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      Active& a = batch[i];
      const int64_t start = offset;
      offset += a.count;
      std::vector<size_t> staying;
      for (size_t j = 0; j < a.members.size(); ++j) {
        const size_t member = a.members[j];
        const prune::LayerPlan& plan = plans[i][j];
        if (!plan.select.defined()) {
          staying.push_back(member);
          continue;
        }
        const at::Tensor select = plan.select.cpu();
        Active cut;
        cut.members = {member};
        at::Tensor kept = a.positions.index_select(0, select).contiguous();
        seqs[member].policy->mutable_report().selected_positions.assign(
            kept.data_ptr<int64_t>(), kept.data_ptr<int64_t>() + kept.numel());
        cut.token_ids = a.token_ids.index_select(0, select);
        cut.count = cut.token_ids.size(0);
        if (plan.end_pass) {
          cut.positions = at::arange(cut.count, at::kLong);
          second_pass.push_back(std::move(cut));
          continue;
        }
        cut.positions = std::move(kept);
        rows.push_back(select.to(x.device()) + start);
        next.push_back(std::move(cut));
      }
      if (staying.empty()) continue;
      a.members = std::move(staying);
      rows.push_back(RowRange(start, a.count, x.device()));
      next.push_back(std::move(a));
    }
    batch = std::move(next);
    if (batch.empty()) break;
    at::Tensor index = at::cat(rows);
    x = x.index_select(0, index);
    positions = positions.index_select(0, index.cpu());
  }

  int64_t offset = 0;
  for (const Active& a : batch) {
    offset += a.count;
    for (size_t member : a.members) final_hidden[member] = x[offset - 1];
  }
  return Status::Ok();
}

StatusOr<PrefillOutput> ModelRunner::Prefill(std::vector<PrefillSeq>& seqs) {
  try {
    std::vector<Active> batch;
    for (size_t i = 0; i < seqs.size(); ++i) {
      Active a;
      a.members = {i};
      a.token_ids = at::tensor(seqs[i].prompt_ids, at::kInt).to(at::kLong);
      a.count = a.token_ids.size(0);
      a.positions = at::arange(a.count, at::kLong);
      if (a.count == 0) return InvalidArgument("prefill of an empty prompt");
      batch.push_back(std::move(a));
    }
    std::vector<at::Tensor> final_hidden(seqs.size());
    std::vector<Active> second_pass, none;
    PrefillOutput out;
    ASL_RETURN_IF_ERROR(RunPass(std::move(batch), seqs, final_hidden, second_pass, out.token_layers));
    out.next_positions.resize(seqs.size());
    for (size_t i = 0; i < seqs.size(); ++i) out.next_positions[i] = static_cast<int64_t>(seqs[i].prompt_ids.size());
    if (!second_pass.empty()) {
      for (const Active& a : second_pass) {
        seqs[a.members[0]].policy->BeginSecondPass(a.count);
        out.next_positions[a.members[0]] = a.count;
      }
      ASL_RETURN_IF_ERROR(RunPass(std::move(second_pass), seqs, final_hidden, none, out.token_layers));
      ASL_CHECK(none.empty(), "a second pass cannot end another pass");
    }
    out.logits = model_->Logits(at::stack(final_hidden)).cpu();
    return out;
  } catch (const c10::Error& e) {
    return Internal(std::string("prefill failed: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(std::string("prefill failed: ") + e.what());
  }
}

StatusOr<at::Tensor> ModelRunner::Decode(const std::vector<DecodeSeq>& seqs) {
  try {
    const model::LlamaModel& m = *model_;
    const auto& c = m.config();
    std::vector<int64_t> tokens, positions;
    std::vector<kv::SeqId> ids;
    for (const DecodeSeq& s : seqs) {
      tokens.push_back(s.token);
      positions.push_back(s.position);
      ids.push_back(s.seq);
    }
    const int64_t B = static_cast<int64_t>(seqs.size());
    at::Tensor x = m.Embed(at::tensor(tokens, at::kLong));
    model::Rope rope = m.RopeFor(at::tensor(positions, at::kLong));
    for (int layer = 0; layer < c.num_layers; ++layer) {
      model::Qkv qkv = m.AttentionInputs(layer, x, rope, model::Rows::kPerSequence);
      ASL_RETURN_IF_ERROR(kv_->AppendDecode(layer, ids, qkv.k, qkv.v));
      at::Tensor attn = kv_->Attend(layer, ids, qkv.q, m.attention_scale());  // [B, H, d]
      x = x + m.AttentionOutput(layer, attn.reshape({B, c.num_heads * c.head_dim}), model::Rows::kPerSequence);
      x = x + m.Mlp(layer, x, model::Rows::kPerSequence);
    }
    return m.Logits(x).cpu();
  } catch (const c10::Error& e) {
    return Internal(std::string("decode failed: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(std::string("decode failed: ") + e.what());
  }
}

int64_t ModelRunner::KvTokens(kv::SeqId seq) const {
  int64_t total = 0;
  for (int layer = 0; layer < model_->config().num_layers; ++layer) total += kv_->Length(seq, layer);
  return total;
}

}  // namespace asl::runner
