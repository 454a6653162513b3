#include "engine/common/cpu_isa.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>

namespace asl {
namespace {

CpuIsa Detect() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  const bool avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const bool vnni = avx512 && __builtin_cpu_supports("avx512vnni");
  return vnni ? CpuIsa::kAvx512Vnni : avx512 ? CpuIsa::kAvx512 : avx2 ? CpuIsa::kAvx2 : CpuIsa::kBaseline;
#else
  return CpuIsa::kBaseline;
#endif
}

int InitialCap() {
  CpuIsa cap = CpuIsa::kAvx512Vnni;
  if (const char* env = std::getenv("ASL_CPU_ISA")) ParseCpuIsa(env, &cap);
  return static_cast<int>(cap);
}

std::atomic<int>& Cap() {
  static std::atomic<int> cap{InitialCap()};
  return cap;
}

}  // namespace

CpuIsa DetectedCpuIsa() {
  static const CpuIsa detected = Detect();
  return detected;
}

bool CpuHasNativeBf16() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#else
  return false;
#endif
}

CpuIsa ActiveCpuIsa() {
  return static_cast<CpuIsa>(std::min(static_cast<int>(DetectedCpuIsa()), Cap().load(std::memory_order_relaxed)));
}

CpuIsa SetCpuIsaCap(CpuIsa cap) {
  Cap().store(static_cast<int>(cap), std::memory_order_relaxed);
  return ActiveCpuIsa();
}

const char* CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kBaseline: return "baseline";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx512Vnni: return "avx512vnni";
  }
  return "?";
}

bool ParseCpuIsa(const std::string& name, CpuIsa* out) {
  for (CpuIsa isa : {CpuIsa::kBaseline, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Vnni}) {
    if (name == CpuIsaName(isa)) {
      *out = isa;
      return true;
    }
  }
  return false;
}

}  // namespace asl
