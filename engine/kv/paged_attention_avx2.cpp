// The CPU paged attention kernel compiled for AVX2 + FMA + F16C (engine/kv/CMakeLists.txt sets the
// flags and CPU_CAPABILITY=AVX2 for this file only). paged_attention.cpp calls it only after
// checking the CPU at run time.
#include "engine/kv/paged_attention_kernel.h"

namespace asl::kv {

void PagedAttentionCpuAvx2(const PagedCpuArgs& args) { RunPagedAttentionCpu(args); }

}  // namespace asl::kv
