// The streaming linear kernels (float32 and int8 activations) compiled for AVX2 + FMA + F16C (engine/model/CMakeLists.txt sets the flags
// for this file only). linear.cpp calls it only after checking the CPU at run time.
#include "engine/model/linear_int8_kernel.h"
#include "engine/model/linear_kernel.h"

namespace asl::model {

void StreamingLinearAvx2(const LinearArgs& a) { RunStreamingLinear(a); }
void StreamingLinearInt8Avx2(const Int8LinearArgs& a) { int8k::Run(a); }

}  // namespace asl::model
