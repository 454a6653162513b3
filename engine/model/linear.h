// y = x W^T + b, the projections of the decoder. Rows that stand one per sequence (decode steps, the
// logits of each sequence's last prompt token) take a streaming kernel on the CPU when the weights
// are block-quantized GGUF; a prompt's token rows (prefill, a compute-bound GEMM) take at::linear.
//
// Why: a decode step is bound by reading the weights once. at::linear only takes float weights, so
// MKL's sgemv/sgemm read the dequantised float32 copies (6.4x the bytes of Q4_1 blocks). The kernel
// here reads each weight row's blocks once per call, decodes them in registers and computes every
// input row against it while it is in cache (bench/results/latency.md measures the difference).
//
// Every output element is the same float computation whatever the batch size or thread count (one
// fixed order over k), so a sequence's decode does not depend on its batch-mates at all, however
// many there are: the kind of rows, not their count, picks the kernel.
//
// The kernel has two arithmetics (Activations): float32 activations against the exactly decoded
// weights, or, as llama.cpp computes every quantized matrix-vector product, activations quantised to
// int8 per block of 32 and integer dot products with the blocks' integers (linear_int8_kernel.h:
// VNNI on AVX-512 CPUs, maddubs on AVX2, a scalar path elsewhere; all bit-identical). int8 does a
// fraction of the work per weight, so decode is bound by reading the blocks even with many rows;
// its results differ from float32 by the activations' rounding (tests/python/test_parity.py bounds it).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "engine/model/weights.h"

namespace asl::model {

// What the rows of a projection's input are.
enum class Rows {
  kTokens,       // a prompt's tokens in prefill: at::linear
  kPerSequence,  // one row per sequence (decode, last-token logits): the streaming kernel if packed
};

// How the streaming kernel multiplies per-sequence rows by packed blocks.
enum class Activations {
  kFloat32,  // float32 rows, weights decoded exactly: bit-comparable with at::linear on float32 weights
  kInt8,     // rows quantised to int8 per block of 32 (scale max|x| / 127), integer dot products
};

// "float32" or "int8"; false for anything else.
bool ParseActivations(const std::string& name, Activations* out);
const char* ActivationsName(Activations a);

// x [M, K], w [N, K] (nn.Linear layout), b [N] or undefined -> [M, N] in x's dtype. `packed`, when
// defined, is w's GGUF blocks: per-sequence rows of a CPU run (float32, or bfloat16 widened to float32
// for the kernel) are then computed from those, with `act`'s arithmetic.
at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const PackedWeight& packed,
                  Rows rows, Activations act = Activations::kFloat32);

// The streaming kernel alone (tests and benchmarks compare it with at::linear). x [M, K] and w
// [N, K] float32 contiguous on the CPU, b [N] float32 or undefined; any M.
at::Tensor StreamingLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {});
// The same over packed blocks: with kFloat32 bit-identical to StreamingLinear(x, <packed decoded to
// float32>, b); with kInt8 the int8 kernel (bit-identical on every instruction set).
at::Tensor StreamingLinear(const at::Tensor& x, const PackedWeight& w, const at::Tensor& b = {},
                           Activations act = Activations::kFloat32);

// Whether PackedWeight can hold this ggml type (Q8_0, Q4_0, Q4_1), and its bytes per row of `cols`.
bool IsPackable(uint32_t type);
int64_t PackedRowBytes(uint32_t type, int64_t cols);

}  // namespace asl::model
