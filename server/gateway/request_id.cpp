#include "server/gateway/request_id.h"

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <random>

namespace asl::gateway {

std::string SanitizeRequestId(std::string_view header) {
  std::string out;
  for (char c : header) {
    if (out.size() == kMaxRequestIdBytes) break;
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                    c == '_' || c == '.' || c == ':' || c == '/' || c == '+' || c == '=' || c == '@';
    if (ok) out += c;
  }
  return out;
}

std::string NewRequestId() {
  // A per-process random prefix keeps ids unique across gateway restarts and replicas.
  static const std::string prefix = [] {
    std::random_device rd;
    char buf[16];
    std::snprintf(buf, sizeof(buf), "%08x", rd());
    return std::string(buf);
  }();
  static std::atomic<uint64_t> counter{0};
  return prefix + "-" + std::to_string(counter.fetch_add(1) + 1);
}

std::string RequestIdFor(std::string_view header) {
  std::string id = SanitizeRequestId(header);
  return id.empty() ? NewRequestId() : id;
}

}  // namespace asl::gateway
