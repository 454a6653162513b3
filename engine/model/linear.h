// y = x W^T + b, the projections of the decoder. Few-row inputs on the CPU (decode steps: one row
// per sequence in the batch) take a streaming kernel; everything else is at::linear.
//
// Why: a decode step is bound by reading the weights once. at::linear sends one row to MKL's sgemv
// and a few rows to sgemm, which repacks the whole weight matrix on every call; both reached less
// than half of this machine's memory bandwidth (bench/results/latency.md). The kernel here reads
// each weight row once per call and computes every input row against it while it is in cache.
//
// Every output element is the same float computation whatever the batch size or thread count (one
// fixed order over k), so a sequence's decode does not depend on its batch-mates at all.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "engine/model/weights.h"

namespace asl::model {

// Inputs with at most this many rows take the streaming kernel (CPU, float32, contiguous).
inline constexpr int64_t kStreamingLinearMaxRows = 32;

// x [M, K], w [N, K] (nn.Linear layout), b [N] or undefined -> [M, N] in x's dtype. `packed`, when
// defined, is w's GGUF blocks: the streaming kernel then reads those instead of w.
at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {},
                  const PackedWeight& packed = {});

// The streaming kernel alone (tests and benchmarks compare it with at::linear). x [M, K] and w
// [N, K] float32 contiguous on the CPU, b [N] float32 or undefined; any M.
at::Tensor StreamingLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {});
// The same over packed blocks: bit-identical to StreamingLinear(x, <packed decoded to float32>, b).
at::Tensor StreamingLinear(const at::Tensor& x, const PackedWeight& w, const at::Tensor& b = {});

// Whether PackedWeight can hold this ggml type (Q8_0, Q4_0, Q4_1), and its bytes per row of `cols`.
bool IsPackable(uint32_t type);
int64_t PackedRowBytes(uint32_t type, int64_t cols);

}  // namespace asl::model
