#pragma once
// The instruction sets our CPU kernels are built for, and which one runs (the streaming linear
// kernel, engine/model/linear.h; the paged decode attention, engine/kv/paged_attention.h). Each
// kernel is compiled once per level and dispatches on ActiveCpuIsa() at every call.
//
// The active level is the highest the CPU supports, capped by the environment variable
// ASL_CPU_ISA (baseline, avx2, avx512 or avx512vnni) when the process starts, or by SetCpuIsaCap (tests and
// benchmarks force the lower paths down with it). A cap above what the CPU has changes nothing.
#include <string>

namespace asl {

enum class CpuIsa : int {
  kBaseline = 0,  // the build's default flags (x86-64: SSE2)
  kAvx2 = 1,      // AVX2 + FMA + F16C
  kAvx512 = 2,    // AVX-512 F, BW, VL and DQ (+ AVX2, FMA, F16C)
  kAvx512Vnni = 3,  // kAvx512 + AVX512_VNNI (int8 dot products: the int8 streaming linear kernel)
};

// What this CPU runs (and the build has kernels for: on other architectures, kBaseline).
CpuIsa DetectedCpuIsa();
// min(DetectedCpuIsa(), the cap).
CpuIsa ActiveCpuIsa();
// Sets the cap; returns the active level it gives.
CpuIsa SetCpuIsaCap(CpuIsa cap);
const char* CpuIsaName(CpuIsa isa);
// Whether the CPU has native bfloat16 dot products (AVX512_BF16 or AMX-BF16), which oneDNN's bf16
// GEMMs use: there a bfloat16 prefill is 1.7-3x faster than float32 (model.dtype: auto). Not
// affected by the ISA cap, which governs our own kernels only.
bool CpuHasNativeBf16();
// "baseline", "avx2", "avx512" or "avx512vnni"; false for anything else.
bool ParseCpuIsa(const std::string& name, CpuIsa* out);

}  // namespace asl
