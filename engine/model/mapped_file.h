// Read-only memory maps of whole model files (GGUF, safetensors): the weights are read in place.
#pragma once

#include <cstdint>
#include <string>

#include "engine/common/status.h"

namespace asl::model {

// Maps `path` read-only. On success *base and *size describe the mapping (base is null for an
// empty file); release it with UnmapFile. Errors name the file: NotFound (cannot open),
// InvalidArgument (not a regular file), Internal (mmap failed). On error nothing is mapped.
[[nodiscard]] Status MapFile(const std::string& path, const uint8_t** base, uint64_t* size);
void UnmapFile(const uint8_t* base, uint64_t size);

}  // namespace asl::model
