// The engine's log sink: a level check and a write of an already formatted line. Implemented over
// spdlog in logging.cpp, the only engine file that includes spdlog: libtorch ships its own fmt
// (v12) whose headers shadow the system fmt (v9) that Debian's spdlog is built against, so a file
// that sees libtorch's include directory cannot include spdlog.
#pragma once

#include <string>

namespace asl::logging {

enum class Level { kTrace = 0, kDebug, kInfo, kWarn, kError, kCritical, kOff };

bool ShouldLog(Level level);
void Write(Level level, const std::string& line);
// Sends the default logger's output to stderr (tools whose stdout is data).
void LogToStderr();

}  // namespace asl::logging

namespace asl {
// Sets the global level from a name (trace, debug, info, warn, error, critical, off).
// Returns false for an unknown name.
bool SetLogLevel(const std::string& level);
}  // namespace asl
