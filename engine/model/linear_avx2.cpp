// The streaming linear kernel compiled for AVX2 + FMA + F16C (engine/model/CMakeLists.txt sets the flags
// for this file only). linear.cpp calls it only after checking the CPU at run time.
#include "engine/model/linear_kernel.h"

namespace asl::model {

void StreamingLinearAvx2(const LinearArgs& a) { RunStreamingLinear(a); }

}  // namespace asl::model
