// libFuzzer target: the safetensors reader (8-byte header length, JSON header, dtypes, shapes and
// offsets checked against the file) and loading each small tensor.
#include <ATen/ATen.h>

#include "engine/model/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = asl::fuzz::ScratchPath("model.safetensors");
  asl::fuzz::WriteFile(path, data, size);
  auto file = asl::model::SafetensorsFile::Open(path);
  if (!file.ok()) return 0;
  for (const auto& t : (*file)->tensors()) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    if (n <= (1 << 16)) {
      auto loaded = (*file)->LoadTensor(t.name);
      if (loaded.ok() && static_cast<uint64_t>(loaded->nbytes()) != t.nbytes) __builtin_trap();
    }
  }
  return 0;
}
