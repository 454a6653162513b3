// The one version string of every asl-serve binary (`--version`): the CMake project version and the
// git commit given at configure time (-DASL_GIT_SHA=..., default `git rev-parse` of the source
// tree, "unknown" without git; the images pass their build argument ASL_GIT_SHA).
// Standard library only, so every binary links it (asl_version).
#pragma once

#include <string>

namespace asl {

// "0.1.0" (CMake's PROJECT_VERSION).
const char* Version();
// The commit, e.g. "d92bc29a1b2c", or "unknown".
const char* GitCommit();
// "<program> <version> (git <commit>)": what `--version` prints.
std::string VersionLine(const std::string& program);

}  // namespace asl
