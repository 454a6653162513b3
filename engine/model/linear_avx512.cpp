// The int8 streaming linear kernel compiled for AVX-512 VL + VNNI (vpdpbusd on 256-bit vectors;
// engine/model/CMakeLists.txt sets the flags for this file only). linear.cpp calls it only after
// checking the CPU at run time (cpu_isa.h: kAvx512Vnni).
#include "engine/model/linear_int8_kernel.h"

namespace asl::model {

void StreamingLinearInt8Avx512Vnni(const Int8LinearArgs& a) { int8k::Run(a); }

}  // namespace asl::model
