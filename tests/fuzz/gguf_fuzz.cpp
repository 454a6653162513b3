// libFuzzer target: the GGUF reader (GgufFile::Open validates the whole header against the file
// size), every metadata getter, and the dequantisation of each small tensor.
#include <ATen/ATen.h>

#include "engine/model/gguf.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = asl::fuzz::ScratchPath("model.gguf");
  asl::fuzz::WriteFile(path, data, size);
  auto file = asl::model::GgufFile::Open(path);
  if (!file.ok()) return 0;
  const auto& f = **file;
  for (const std::string& key : f.Keys()) {
    (void)f.KeyType(key);
    (void)f.GetInt(key);
    (void)f.GetUint(key);
    (void)f.GetFloat(key);
    (void)f.GetBool(key);
    (void)f.GetString(key);
    (void)f.GetStringArray(key);
    (void)f.GetIntArray(key);
    (void)f.GetFloatArray(key);
  }
  for (const auto& t : f.tensors()) {
    if (f.FindTensor(t.name) == nullptr) __builtin_trap();
    // Open checked every tensor's bytes against the file; dequantise the small ones.
    if (t.numel() <= (1 << 16)) {
      auto loaded = f.LoadTensor(t);
      if (loaded.ok() && loaded->numel() != t.numel()) __builtin_trap();
    }
  }
  return 0;
}
