#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "engine/common/log_sink.h"

namespace asl {
namespace logging {

static spdlog::level::level_enum ToSpd(Level l) { return static_cast<spdlog::level::level_enum>(static_cast<int>(l)); }

bool ShouldLog(Level level) { return spdlog::default_logger_raw()->should_log(ToSpd(level)); }

void Write(Level level, const std::string& line) { spdlog::default_logger_raw()->log(ToSpd(level), "{}", line); }

void LogToStderr() {
  auto level = spdlog::get_level();
  spdlog::set_default_logger(spdlog::stderr_color_mt("asl"));
  spdlog::set_level(level);
}

}  // namespace logging

bool SetLogLevel(const std::string& level) {
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off") return false;
  spdlog::set_level(lvl);
  return true;
}

}  // namespace asl
