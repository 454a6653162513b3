// Sampler: the per-row pipeline documented in sampler.h. Cost per row at V = 128k: one copy when
// penalties apply, one argmax pass (greedy) or a vectorised exp pass plus one or two scalar passes
// (sampling); sorting touches only the candidates a filter can keep.
#include "engine/sample/sampler.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

namespace asl::sample {
namespace {

// Reused across steps: a 128k-row buffer allocated per call would page-fault on every step.
// Each intra-op worker thread has its own, so rows can run concurrently.
struct Scratch {
  std::vector<float> penalized;   // [V] logits after penalties
  std::vector<float> e;           // [V] exp((x - max) / T): unnormalised probabilities, max = 1
  std::vector<int32_t> cand;      // token ids a filter may keep
  std::vector<double> block_sums;
};

Scratch& ThreadScratch() {
  thread_local Scratch s;
  return s;
}

// Lowest id among the maxima (strict >). NaN never compares greater, so it is never chosen
// unless it sits at index 0 of an all-NaN row.
TokenId Argmax(const float* x, int64_t n) {
  int64_t best = 0;
  float bv = x[0];
  for (int64_t i = 1; i < n; ++i) {
    if (x[i] > bv) {
      bv = x[i];
      best = i;
    }
  }
  return static_cast<TokenId>(best);
}

// The ordering every filter uses: higher logit first, then lower id.
struct ByLogitDesc {
  const float* x;
  bool operator()(int32_t a, int32_t b) const { return x[a] > x[b] || (x[a] == x[b] && a < b); }
};

// Top-n of a row by a single scan with a size-n heap whose front is the worst kept entry. Most
// elements are rejected by one comparison with that front, so this is ~one pass for n <= 20.
std::vector<TokenLogprob> TopN(const float* x, int64_t v, int n, double lse) {
  ByLogitDesc better{x};
  std::vector<int32_t> heap;  // max-heap under `better` => front is the worst of the kept
  heap.reserve(n);
  for (int64_t i = 0; i < v; ++i) {
    const auto id = static_cast<int32_t>(i);
    if (std::isnan(x[i])) continue;
    if (static_cast<int>(heap.size()) < n) {
      heap.push_back(id);
      std::push_heap(heap.begin(), heap.end(), better);
    } else if (better(id, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), better);
      heap.back() = id;
      std::push_heap(heap.begin(), heap.end(), better);
    }
  }
  std::sort(heap.begin(), heap.end(), better);
  std::vector<TokenLogprob> out;
  out.reserve(heap.size());
  for (int32_t id : heap) {
    TokenLogprob t;
    t.token_id = id;
    t.logprob = static_cast<float>(x[id] - lse);
    out.push_back(std::move(t));
  }
  return out;
}

// Inverse-CDF draw over all of e (no filter): block sums first so the walk touches one block.
// Sums run in a fixed order, so the result depends only on e and u.
TokenId DrawUnfiltered(const float* e, int64_t v, double u, std::vector<double>& block_sums) {
  constexpr int64_t kBlock = 1024;
  const int64_t nb = (v + kBlock - 1) / kBlock;
  block_sums.resize(nb);
  double total = 0.0;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t lo = b * kBlock, hi = std::min(v, lo + kBlock);
    // Four accumulators break the add latency chain; the order is still fixed.
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int64_t i = lo;
    for (; i + 4 <= hi; i += 4) {
      a0 += e[i];
      a1 += e[i + 1];
      a2 += e[i + 2];
      a3 += e[i + 3];
    }
    for (; i < hi; ++i) a0 += e[i];
    block_sums[b] = (a0 + a1) + (a2 + a3);
    total += block_sums[b];
  }
  const double target = u * total;
  double cum = 0.0;
  int64_t last_positive = -1;
  for (int64_t b = 0; b < nb; ++b) {
    if (cum + block_sums[b] <= target) {
      cum += block_sums[b];
      continue;
    }
    const int64_t lo = b * kBlock, hi = std::min(v, lo + kBlock);
    for (int64_t i = lo; i < hi; ++i) {
      if (e[i] <= 0.f) continue;
      cum += e[i];
      last_positive = i;
      if (cum > target) return static_cast<TokenId>(i);
    }
    // The in-block walk summed in a different order than block_sums: rounding can leave it a hair
    // short. The last positive token of the block is where the draw landed.
    if (last_positive >= 0) return static_cast<TokenId>(last_positive);
  }
  for (int64_t i = v - 1; i >= 0; --i) {
    if (e[i] > 0.f) return static_cast<TokenId>(i);
  }
  return 0;
}

}  // namespace

SamplerState::SamplerState(const SamplingParams& p, const std::vector<TokenId>& prompt_ids,
                           std::unique_ptr<GrammarState> grammar)
    : temperature_(p.temperature),
      top_p_(p.top_p),
      top_k_(p.top_k),
      min_p_(p.min_p),
      repetition_penalty_(p.repetition_penalty),
      presence_penalty_(p.presence_penalty),
      frequency_penalty_(p.frequency_penalty),
      logit_bias_(p.logit_bias),
      logprobs_(p.logprobs),
      grammar_(std::move(grammar)) {
  if (p.seed) {
    seed_ = *p.seed;
  } else {
    std::random_device rd;
    seed_ = (static_cast<uint64_t>(rd()) << 32) ^ static_cast<uint64_t>(rd());
  }
  rng_.seed(seed_);
  if (repetition_penalty_ != 1.0) {  // only the repetition penalty looks at the prompt
    prompt_tokens_ = prompt_ids;
    std::sort(prompt_tokens_.begin(), prompt_tokens_.end());
    prompt_tokens_.erase(std::unique(prompt_tokens_.begin(), prompt_tokens_.end()), prompt_tokens_.end());
  }
}

SamplerState::~SamplerState() = default;

bool SamplerState::Observe(TokenId token_id) {
  ++output_counts_[token_id];
  ++num_output_tokens_;
  return !grammar_ || grammar_->Accept(token_id);
}

bool SamplerState::HasPenalties() const {
  const bool rep = repetition_penalty_ != 1.0 && (!prompt_tokens_.empty() || !output_counts_.empty());
  const bool freq = (presence_penalty_ != 0.0 || frequency_penalty_ != 0.0) && !output_counts_.empty();
  return rep || freq || !logit_bias_.empty();
}

void SamplerState::ApplyPenalties(float* logits, int64_t vocab_size) const {
  auto valid = [vocab_size](TokenId t) { return t >= 0 && t < vocab_size; };
  if (repetition_penalty_ != 1.0) {
    // Float arithmetic, as HF's RepetitionPenaltyLogitsProcessor does on float32 scores. Each
    // distinct token once, whether it occurs in the prompt, the output or both.
    const auto rp = static_cast<float>(repetition_penalty_);
    auto apply = [&](TokenId t) {
      float& v = logits[t];
      v = v < 0.f ? v * rp : v / rp;
    };
    for (TokenId t : prompt_tokens_) {
      if (valid(t)) apply(t);
    }
    for (const auto& [t, count] : output_counts_) {
      if (valid(t) && !std::binary_search(prompt_tokens_.begin(), prompt_tokens_.end(), t)) apply(t);
    }
  }
  if (presence_penalty_ != 0.0 || frequency_penalty_ != 0.0) {
    // vLLM: logits -= frequency * counts; logits -= presence * (counts > 0), in float.
    const auto fp = static_cast<float>(frequency_penalty_);
    const auto pp = static_cast<float>(presence_penalty_);
    for (const auto& [t, count] : output_counts_) {
      if (!valid(t)) continue;
      logits[t] -= fp * static_cast<float>(count);
      logits[t] -= pp;
    }
  }
  for (const auto& [t, bias] : logit_bias_) {
    if (valid(t)) logits[t] += bias;
  }
}

double SamplerState::Uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

SampleResult SamplerState::SampleRow(const at::Tensor& row) {
  const int64_t v = row.numel();
  const float* raw = row.const_data_ptr<float>();
  Scratch& s = ThreadScratch();
  const float* x = raw;
  if (HasPenalties() || grammar_) {
    s.penalized.assign(raw, raw + v);
    ApplyPenalties(s.penalized.data(), v);
    if (grammar_) grammar_->Mask(s.penalized.data(), v);
    x = s.penalized.data();
  }
  SampleResult r;
  r.token_id = temperature_ == 0.0 ? Argmax(x, v) : Draw(x, v);
  if (logprobs_ > 0) {
    // Raw distribution (vLLM "raw_logprobs"): the row as the model produced it.
    const double lse = at::logsumexp(row, 0).item<double>();
    r.logprob = static_cast<float>(raw[r.token_id] - lse);
    r.top_logprobs = TopN(raw, v, std::min<int64_t>(logprobs_, v), lse);
  }
  return r;
}

TokenId SamplerState::Draw(const float* x, int64_t v) {
  Scratch& s = ThreadScratch();
  // e = exp((x - max) / T) through ATen's vectorised kernels (a scalar loop is ~5x slower at
  // 128k: the max is a latency-bound chain, std::exp is not vectorised). Inside Sample's
  // parallel_for these run single-threaded, so the values do not depend on the batch size.
  // e[argmax] == 1 exactly, which makes min-p a plain threshold on e.
  at::Tensor xt = at::from_blob(const_cast<float*>(x), {v}, at::kFloat);
  const float xmax = xt.max().item<float>();  // NaN if any logit is NaN
  if (!(xmax > -std::numeric_limits<float>::infinity())) return Argmax(x, v);  // nothing finite to draw from
  s.e.resize(v);
  at::Tensor et = at::from_blob(s.e.data(), {v}, at::kFloat);
  at::sub_out(et, xt, at::scalar_tensor(xmax, at::kFloat));
  et.div_(temperature_).exp_();
  const float* e = s.e.data();
  const double u = Uniform();

  const bool use_k = top_k_ > 0 && top_k_ < v;
  const bool use_p = top_p_ < 1.0;
  const bool use_min_p = min_p_ > 0.0;
  if (!use_k && !use_p && !use_min_p) return DrawUnfiltered(e, v, u, s.block_sums);

  // Which tokens can survive the filters, without sorting V: histogram e by float exponent
  // (bucket ex holds [2^(ex-127), 2^(ex-126)); 0 holds zeros and denormals), then walk buckets
  // from the top until they hold >= top_k tokens and/or >= top_p of the mass. Every survivor
  // lies in those buckets because the filters keep a prefix of the descending order.
  std::array<int64_t, 256> count{};
  std::array<double, 256> mass{};
  for (int64_t i = 0; i < v; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &e[i], sizeof(bits));
    const uint32_t ex = (bits >> 23) & 0xFF;
    ++count[ex];
    mass[ex] += e[i];
  }
  double total = 0.0;
  for (double m : mass) total += m;

  // top-p after top-k is renormalised over the top-k set, so a min-p floor may cut the gather
  // only when that set is not needed for the normaliser.
  const bool floor_by_min_p = use_min_p && !(use_k && use_p);
  int cut = 0;
  {
    int64_t c = 0;
    double m = 0.0;
    // e <= 1, so buckets above 127 can only hold NaN, which no filter keeps.
    for (int ex = 127; ex >= 1; --ex) {
      c += count[ex];
      m += mass[ex];
      const bool enough = use_k ? c >= top_k_ : (use_p && m >= top_p_ * total);
      const double lower = std::ldexp(1.0, ex - 127);
      if (enough || (floor_by_min_p && lower <= min_p_)) {
        cut = ex;
        break;
      }
    }
  }
  const float cut_value = cut > 0 ? static_cast<float>(std::ldexp(1.0, cut - 127)) : 0.f;
  std::vector<int32_t>& cand = s.cand;
  cand.clear();
  for (int64_t i = 0; i < v; ++i) {
    const float ei = e[i];
    if (ei > 0.f && ei >= cut_value && (!floor_by_min_p || static_cast<double>(ei) >= min_p_)) {
      cand.push_back(static_cast<int32_t>(i));
    }
  }
  if (cand.empty()) return Argmax(x, v);  // unreachable: e[argmax] == 1 is always gathered

  ByLogitDesc order{x};
  if (use_k && static_cast<int64_t>(cand.size()) > top_k_) {
    std::partial_sort(cand.begin(), cand.begin() + top_k_, cand.end(), order);
    cand.resize(top_k_);
  } else {
    std::sort(cand.begin(), cand.end(), order);
  }
  size_t n = cand.size();
  if (use_p) {
    double norm = total;
    if (use_k) {
      norm = 0.0;
      for (size_t j = 0; j < n; ++j) norm += e[cand[j]];
    }
    // Smallest prefix whose mass reaches top_p; if rounding keeps it a hair short, keep all.
    const double want = top_p_ * norm;
    double cum = 0.0;
    for (size_t j = 0; j < n; ++j) {
      cum += e[cand[j]];
      if (cum >= want) {
        n = j + 1;
        break;
      }
    }
  }
  if (use_min_p) {
    // p_j / p_max == e_j because e[argmax] == 1. cand[0] is the argmax, so n stays >= 1.
    while (n > 1 && static_cast<double>(e[cand[n - 1]]) < min_p_) --n;
  }

  double kept = 0.0;
  for (size_t j = 0; j < n; ++j) kept += e[cand[j]];
  const double target = u * kept;
  double cum = 0.0;
  for (size_t j = 0; j < n; ++j) {
    cum += e[cand[j]];
    if (cum > target) return cand[j];
  }
  return cand[n - 1];
}

std::vector<SampleResult> Sample(const at::Tensor& logits, std::vector<SamplerState*>& states) {
  ASL_CHECK(logits.dim() == 2 && logits.size(0) == static_cast<int64_t>(states.size()),
            "Sample: logits must be [B, V] with B == states.size() (" + std::to_string(states.size()) + ")");
  at::Tensor x = logits;
  if (!x.device().is_cpu() || x.scalar_type() != at::kFloat) x = x.to(at::kCPU, at::kFloat);
  x = x.contiguous();
  const int64_t b = x.size(0);
  std::vector<SampleResult> results(static_cast<size_t>(b));
  // Rows are independent (own state, own scratch): parallel over rows, serial inside a row.
  at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) results[i] = states[i]->SampleRow(x[i]);
  });
  return results;
}

}  // namespace asl::sample
