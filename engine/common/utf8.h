// UTF-8 well-formedness (RFC 3629): no overlong forms, no surrogates, nothing past U+10FFFF.
// Used to validate user text at the edges (prompts, chat messages, stop strings).
#pragma once

#include <string_view>

namespace asl {
bool IsValidUtf8(std::string_view s);
}  // namespace asl
