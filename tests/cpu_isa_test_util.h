// Runs a test body once per instruction set a CPU kernel is built for (engine/common/cpu_isa.h),
// with the kernels capped to it; the levels this CPU lacks are reported and skipped (they run on
// machines that have them). Restores the cap to "highest" afterwards.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <initializer_list>

#include "engine/common/cpu_isa.h"

namespace asl::testing {

template <typename F>
void ForEachCpuIsa(std::initializer_list<CpuIsa> levels, F fn) {
  for (CpuIsa isa : levels) {
    if (isa > DetectedCpuIsa()) {
      std::printf("[ SKIPPED  ] %s: this CPU lacks it\n", CpuIsaName(isa));
      continue;
    }
    SetCpuIsaCap(isa);
    SCOPED_TRACE(CpuIsaName(isa));
    fn();
  }
  SetCpuIsaCap(CpuIsa::kAvx512Vnni);
}

}  // namespace asl::testing
