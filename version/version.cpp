#include "version/version.h"

#ifndef ASL_VERSION_STRING
#define ASL_VERSION_STRING "0.0.0"
#endif
#ifndef ASL_GIT_SHA_STRING
#define ASL_GIT_SHA_STRING "unknown"
#endif

namespace asl {

const char* Version() { return ASL_VERSION_STRING; }

const char* GitCommit() {
  static constexpr const char kSha[] = ASL_GIT_SHA_STRING;
  return kSha[0] == '\0' ? "unknown" : kSha;
}

std::string VersionLine(const std::string& program) {
  return program + " " + Version() + " (git " + GitCommit() + ")";
}

}  // namespace asl
