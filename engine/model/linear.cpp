#include "engine/model/linear.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "engine/common/cpu_isa.h"
#include "engine/model/linear_int8_kernel.h"
#include "engine/model/linear_kernel.h"
#include "engine/model/quant.h"

#include <cmath>
#include <limits>
#include <vector>

namespace asl::model {
namespace {

// The AVX2+FMA+F16C copy of the kernel where the build has it and the CPU runs it.
bool UseAvx2() {
#if defined(ASL_MODEL_HAVE_AVX2)
  return ActiveCpuIsa() >= CpuIsa::kAvx2;
#else
  return false;
#endif
}

void Run(const LinearArgs& args) {
  if (args.M == 0 || args.N == 0) return;
  if (UseAvx2()) {
    StreamingLinearAvx2(args);
  } else {
    RunStreamingLinear(args);
  }
}

void RunInt8(const Int8LinearArgs& args) {
  if (args.M == 0 || args.N == 0) return;
#if defined(ASL_MODEL_HAVE_AVX512)
  if (ActiveCpuIsa() >= CpuIsa::kAvx512Vnni) return StreamingLinearInt8Avx512Vnni(args);
#endif
#if defined(ASL_MODEL_HAVE_AVX2)
  if (UseAvx2()) return StreamingLinearInt8Avx2(args);
#endif
  int8k::Run(args);
}

// x [M, K] (K a multiple of 32) quantised per block of 32 of each row: q = nearbyint(x * (1 / d)) in
// [-127, 127] with d = max|x| / 127, and s = d * sum(q). Scalar code, the one definition every
// kernel path reads. A block holding a non-finite value gets d = NaN, so the outputs it touches are
// NaN, as float32 arithmetic would give, instead of silently dropping the value.
struct QuantizedRows {
  std::vector<int8_t> q;
  std::vector<float> d, s;
};

void QuantizeRowsInt8(const float* x, int64_t M, int64_t K, QuantizedRows* out) {
  const int64_t nb = K / 32;
  out->q.resize(static_cast<size_t>(M * K));
  out->d.resize(static_cast<size_t>(M * nb));
  out->s.resize(static_cast<size_t>(M * nb));
  for (int64_t blk = 0; blk < M * nb; ++blk) {
    const float* v = x + blk * 32;
    int8_t* q = out->q.data() + blk * 32;
    float amax = 0.0f;
    bool finite = true;
    for (int j = 0; j < 32; ++j) {
      amax = std::max(amax, std::fabs(v[j]));
      finite = finite && std::isfinite(v[j]);
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int32_t sum = 0;
    for (int j = 0; j < 32; ++j) {
      const float r = finite ? std::nearbyint(v[j] * id) : 0.0f;
      const int32_t qi = static_cast<int32_t>(std::min(127.0f, std::max(-127.0f, r)));
      q[j] = static_cast<int8_t>(qi);
      sum += qi;
    }
    out->d[blk] = finite ? d : std::numeric_limits<float>::quiet_NaN();
    out->s[blk] = out->d[blk] * static_cast<float>(sum);
  }
}

void CheckInput(const at::Tensor& x, int64_t N, int64_t K, const at::Tensor& b) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, "linear: x ", x.sizes(), " does not match a weight of ", K, " columns");
  TORCH_CHECK(x.is_cpu() && x.scalar_type() == at::kFloat, "linear: the streaming kernel takes float32 CPU input");
  TORCH_CHECK(!b.defined() || (b.dim() == 1 && b.size(0) == N && b.scalar_type() == at::kFloat && b.is_cpu()),
              "linear: bias must be [", N, "] float32 on the CPU");
}

}  // namespace

bool IsPackable(uint32_t type) {
  return type == static_cast<uint32_t>(GgmlType::kQ8_0) || type == static_cast<uint32_t>(GgmlType::kQ4_0) ||
         type == static_cast<uint32_t>(GgmlType::kQ4_1);
}

int64_t PackedRowBytes(uint32_t type, int64_t cols) {
  const auto traits = GgmlTypeInfo(type);
  TORCH_CHECK(IsPackable(type) && traits && cols % traits->block_size == 0, "linear: cannot pack ", cols,
              " columns of ", GgmlTypeName(type));
  return cols / traits->block_size * traits->type_size;
}

at::Tensor StreamingLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  TORCH_CHECK(w.dim() == 2 && w.is_cpu() && w.scalar_type() == at::kFloat, "linear: w must be [N, K] float32 on the CPU");
  CheckInput(x, w.size(0), w.size(1), b);
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  const at::Tensor bc = b.defined() ? b.contiguous() : b;
  at::Tensor out = at::empty({x.size(0), w.size(0)}, x.options());
  Run(LinearArgs{x.size(0), w.size(0), x.size(1), xc.data_ptr<float>(), wc.data_ptr<float>(), nullptr, 0, 0,
                 bc.defined() ? bc.data_ptr<float>() : nullptr, out.data_ptr<float>()});
  return out;
}

bool ParseActivations(const std::string& name, Activations* out) {
  for (Activations a : {Activations::kFloat32, Activations::kInt8}) {
    if (name == ActivationsName(a)) {
      *out = a;
      return true;
    }
  }
  return false;
}

const char* ActivationsName(Activations a) { return a == Activations::kInt8 ? "int8" : "float32"; }

at::Tensor StreamingLinear(const at::Tensor& x, const PackedWeight& w, const at::Tensor& b, Activations act) {
  TORCH_CHECK(w.defined() && w.bytes.dim() == 2 && w.bytes.scalar_type() == at::kByte && w.bytes.is_contiguous() &&
                  w.bytes.size(1) == PackedRowBytes(w.type, w.cols),
              "linear: malformed packed weight");
  const int64_t N = w.bytes.size(0);
  CheckInput(x, N, w.cols, b);
  const at::Tensor xc = x.contiguous();
  const at::Tensor bc = b.defined() ? b.contiguous() : b;
  at::Tensor out = at::empty({x.size(0), N}, x.options());
  const float* bias = bc.defined() ? bc.data_ptr<float>() : nullptr;
  if (act == Activations::kInt8) {
    // Per calling thread (the engine thread), reused: a decode step quantises ~120 inputs.
    thread_local QuantizedRows rows;
    QuantizeRowsInt8(xc.data_ptr<float>(), x.size(0), w.cols, &rows);
    RunInt8(Int8LinearArgs{x.size(0), N, w.cols, rows.q.data(), rows.d.data(), rows.s.data(),
                           w.bytes.data_ptr<uint8_t>(), w.type, w.bytes.size(1), bias, out.data_ptr<float>()});
    return out;
  }
  Run(LinearArgs{x.size(0), N, w.cols, xc.data_ptr<float>(), nullptr, w.bytes.data_ptr<uint8_t>(), w.type,
                 w.bytes.size(1), bias, out.data_ptr<float>()});
  return out;
}

at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const PackedWeight& packed,
                  Rows rows, Activations act) {
  const at::ScalarType t = x.scalar_type();
  const bool streamable = rows == Rows::kPerSequence && packed.defined() && x.dim() == 2 && x.is_cpu() &&
                          (t == at::kFloat || t == at::kBFloat16 || t == at::kHalf);
  if (!streamable) return at::linear(x, w, b);
  if (x.scalar_type() == at::kFloat && (!b.defined() || b.scalar_type() == at::kFloat)) {
    return StreamingLinear(x, packed, b, act);
  }
  // A bfloat16 (or float16) run: the few per-sequence rows are widened to float32 and computed from
  // the blocks like a float32 run's (at::linear on 16-bit weights reads twice the blocks' bytes and
  // has no streaming kernel: 2.5x slower decode), then narrowed back to the run's dtype.
  const at::Tensor bf = b.defined() ? b.to(at::kFloat) : b;
  return StreamingLinear(x.to(at::kFloat), packed, bf, act).to(x.scalar_type());
}

}  // namespace asl::model
