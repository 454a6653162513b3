#include "engine/kv/dense_kv_cache.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <string>
#include <unordered_set>

namespace asl::kv {

Status DenseKvCache::AddSequence(SeqId seq) {
  if (seqs_.count(seq)) return InvalidArgument("kv cache: sequence " + std::to_string(seq) + " already exists");
  seqs_.emplace(seq, std::vector<Layer>(static_cast<size_t>(num_layers_)));
  return Status::Ok();
}

const DenseKvCache::Layer* DenseKvCache::Find(SeqId seq, int layer) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end() || layer < 0 || layer >= num_layers_) return nullptr;
  return &it->second[static_cast<size_t>(layer)];
}

int64_t DenseKvCache::Length(SeqId seq, int layer) const {
  const Layer* l = Find(seq, layer);
  return l && l->k.defined() ? l->k.size(1) : 0;
}

// k, v: [Hkv, n, d], matching what (seq, layer) already stores.
Status DenseKvCache::Check(SeqId seq, int layer, const at::Tensor& k, const at::Tensor& v) const {
  if (!seqs_.count(seq)) return NotFound("kv cache: unknown sequence " + std::to_string(seq));
  const Layer* l = Find(seq, layer);
  if (l == nullptr) return InvalidArgument("kv cache: layer " + std::to_string(layer) + " out of range");
  if (!k.defined() || !v.defined() || k.dim() != 3 || v.sizes() != k.sizes() || !k.is_floating_point() ||
      !v.is_floating_point()) {
    return InvalidArgument("kv cache: k and v must be floating point [Hkv, n, d] of the same shape");
  }
  if (l->k.defined() && (k.size(0) != l->k.size(0) || k.size(2) != l->k.size(2))) {
    return InvalidArgument("kv cache: Hkv or d differ from what (sequence " + std::to_string(seq) + ", layer " +
                           std::to_string(layer) + ") stores");
  }
  return Status::Ok();
}

Status DenseKvCache::Append(SeqId seq, int layer, const at::Tensor& k, const at::Tensor& v) {
  ASL_RETURN_IF_ERROR(Check(seq, layer, k, v));
  if (k.size(1) == 0) return Status::Ok();
  Layer& l = seqs_.at(seq)[static_cast<size_t>(layer)];
  try {
    if (!l.k.defined()) {
      at::Tensor nk = k.contiguous().clone();
      at::Tensor nv = v.to(k.device(), k.scalar_type()).contiguous().clone();
      l.k = std::move(nk);
      l.v = std::move(nv);
    } else {
      at::Tensor nk = at::cat({l.k, k.to(l.k.device(), l.k.scalar_type())}, 1);
      at::Tensor nv = at::cat({l.v, v.to(l.v.device(), l.v.scalar_type())}, 1);
      l.k = std::move(nk);
      l.v = std::move(nv);
    }
  } catch (const c10::Error& e) {
    return Internal(std::string("kv cache: Append failed: ") + e.what_without_backtrace());
  }
  return Status::Ok();
}

Status DenseKvCache::AppendDecode(int layer, const std::vector<SeqId>& seqs, const at::Tensor& k,
                                  const at::Tensor& v) {
  if (!k.defined() || !v.defined() || k.dim() != 3 || v.sizes() != k.sizes() ||
      k.size(0) != static_cast<int64_t>(seqs.size())) {
    return InvalidArgument("kv cache: AppendDecode: k and v must be [B=" + std::to_string(seqs.size()) + ", Hkv, d]");
  }
  std::unordered_set<SeqId> seen;
  for (size_t b = 0; b < seqs.size(); ++b) {
    if (!seen.insert(seqs[b]).second) {
      return InvalidArgument("kv cache: sequence " + std::to_string(seqs[b]) + " listed twice");
    }
    ASL_RETURN_IF_ERROR(Check(seqs[b], layer, k[static_cast<int64_t>(b)].unsqueeze(1), v[static_cast<int64_t>(b)].unsqueeze(1)));
  }
  // Build every new tensor first, then commit, so an exception leaves all sequences as they were.
  std::vector<Layer> next(seqs.size());
  try {
    for (size_t b = 0; b < seqs.size(); ++b) {
      const Layer& l = seqs_.at(seqs[b])[static_cast<size_t>(layer)];
      at::Tensor kb = k[static_cast<int64_t>(b)].unsqueeze(1);
      at::Tensor vb = v[static_cast<int64_t>(b)].unsqueeze(1);
      if (!l.k.defined()) {
        next[b] = {kb.contiguous().clone(), vb.to(kb.device(), kb.scalar_type()).contiguous().clone()};
      } else {
        next[b] = {at::cat({l.k, kb.to(l.k.device(), l.k.scalar_type())}, 1),
                   at::cat({l.v, vb.to(l.v.device(), l.v.scalar_type())}, 1)};
      }
    }
  } catch (const c10::Error& e) {
    return Internal(std::string("kv cache: AppendDecode failed: ") + e.what_without_backtrace());
  }
  for (size_t b = 0; b < seqs.size(); ++b) seqs_.at(seqs[b])[static_cast<size_t>(layer)] = std::move(next[b]);
  return Status::Ok();
}

at::Tensor DenseKvCache::Attend(int layer, const std::vector<SeqId>& seqs, const at::Tensor& q, double scale) const {
  const int64_t B = static_cast<int64_t>(seqs.size());
  TORCH_CHECK(q.dim() == 3 && q.size(0) == B, "kv cache: Attend: q must be [B=", B, ", H, d], got ", q.sizes());
  const int64_t H = q.size(1), d = q.size(2);
  std::vector<at::Tensor> rows;
  rows.reserve(seqs.size());
  for (int64_t b = 0; b < B; ++b) {
    const SeqId seq = seqs[static_cast<size_t>(b)];
    TORCH_CHECK(seqs_.count(seq), "kv cache: Attend: unknown sequence ", seq);
    const Layer* l = Find(seq, layer);
    TORCH_CHECK(l != nullptr, "kv cache: Attend: layer ", layer, " out of range");
    if (!l->k.defined()) {
      rows.push_back(at::zeros({H, d}, q.options().dtype(at::kFloat)));
      continue;
    }
    const int64_t Hkv = l->k.size(0);
    TORCH_CHECK(H % Hkv == 0 && l->k.size(2) == d, "kv cache: Attend: q [", H, ", ", d, "] does not fit K ",
                l->k.sizes());
    at::Tensor qf = q[b].to(at::kFloat).reshape({Hkv, H / Hkv, d});                    // [Hkv, G, d]
    at::Tensor kf = l->k.to(q.device(), at::kFloat);                                     // [Hkv, len, d]
    at::Tensor vf = l->v.to(q.device(), at::kFloat);
    at::Tensor p = at::softmax(at::matmul(qf, kf.transpose(1, 2)) * scale, -1);         // [Hkv, G, len]
    rows.push_back(at::matmul(p, vf).reshape({H, d}));
  }
  if (rows.empty()) return at::empty({0, H, d}, q.options());
  return at::stack(rows).to(q.scalar_type());
}

std::pair<at::Tensor, at::Tensor> DenseKvCache::Gather(SeqId seq, int layer) const {
  const Layer* l = Find(seq, layer);
  TORCH_CHECK(l != nullptr, "kv cache: Gather: unknown sequence or layer");
  return {l->k, l->v};
}

}  // namespace asl::kv
