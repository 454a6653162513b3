// The engine's only view of spdlog: a thin set of macros, so the logger can be configured
// (level, sink) by whoever embeds the engine.
#pragma once

#include <spdlog/spdlog.h>

#define ASL_LOG_TRACE(...) SPDLOG_TRACE(__VA_ARGS__)
#define ASL_LOG_DEBUG(...) ::spdlog::debug(__VA_ARGS__)
#define ASL_LOG_INFO(...) ::spdlog::info(__VA_ARGS__)
#define ASL_LOG_WARN(...) ::spdlog::warn(__VA_ARGS__)
#define ASL_LOG_ERROR(...) ::spdlog::error(__VA_ARGS__)
#define ASL_LOG_CRITICAL(...) ::spdlog::critical(__VA_ARGS__)

namespace asl {
// Sets the global level from a name (trace, debug, info, warn, error, critical, off).
// Returns false for an unknown name.
bool SetLogLevel(const std::string& level);
}  // namespace asl
