// Logging for engine code: fmt-style formatting (header-only, so it works with whichever fmt the
// include path provides: libtorch's or the system's) into the spdlog-backed sink of log_sink.h.
#pragma once

#ifndef FMT_HEADER_ONLY
#define FMT_HEADER_ONLY
#endif
#include <fmt/format.h>

#include "engine/common/log_sink.h"

#define ASL_LOG_AT(level, ...)                                                      \
  do {                                                                              \
    if (::asl::logging::ShouldLog(level)) ::asl::logging::Write(level, ::fmt::format(__VA_ARGS__)); \
  } while (0)

#define ASL_LOG_TRACE(...) ASL_LOG_AT(::asl::logging::Level::kTrace, __VA_ARGS__)
#define ASL_LOG_DEBUG(...) ASL_LOG_AT(::asl::logging::Level::kDebug, __VA_ARGS__)
#define ASL_LOG_INFO(...) ASL_LOG_AT(::asl::logging::Level::kInfo, __VA_ARGS__)
#define ASL_LOG_WARN(...) ASL_LOG_AT(::asl::logging::Level::kWarn, __VA_ARGS__)
#define ASL_LOG_ERROR(...) ASL_LOG_AT(::asl::logging::Level::kError, __VA_ARGS__)
#define ASL_LOG_CRITICAL(...) ASL_LOG_AT(::asl::logging::Level::kCritical, __VA_ARGS__)
