// KvCache's defaults for a cache without a prefix cache: no sequence ever has a prefix.
#include "engine/kv/kv_cache.h"

#include <c10/util/Exception.h>

#include <string>

namespace asl::kv {

std::pair<at::Tensor, at::Tensor> KvCache::PrefixKv(SeqId seq, int /*layer*/) const {
  TORCH_CHECK(false, "kv cache: sequence ", seq, " has no cached prefix");
}

Status KvCache::SharePrefix(SeqId seq, int /*layer*/) {
  return InvalidArgument("kv cache: sequence " + std::to_string(seq) + " has no cached prefix");
}

}  // namespace asl::kv
