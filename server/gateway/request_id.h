// x-request-id: every gateway response carries one. A client's own id is accepted when it is
// printable (only [A-Za-z0-9] and -_.:/+=@ are kept, at most kMaxRequestIdBytes); otherwise, or when
// absent, the gateway makes one. The id is sent to asl-server (GenerateRequest.request_id, and the
// x-request-id metadata of the other calls), which logs it, and the gateway logs it too.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace asl::gateway {

inline constexpr size_t kMaxRequestIdBytes = 128;

// The client's header value with every other character dropped, cut to kMaxRequestIdBytes; "" when
// nothing is left.
[[nodiscard]] std::string SanitizeRequestId(std::string_view header);

// A new id, unique across gateway processes: "<8 random hex digits>-<counter>".
[[nodiscard]] std::string NewRequestId();

// SanitizeRequestId(header), or NewRequestId() when that is empty.
[[nodiscard]] std::string RequestIdFor(std::string_view header);

}  // namespace asl::gateway
