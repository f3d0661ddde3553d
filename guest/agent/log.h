// Logging for the guest agent: one line per event on stderr (the VM console when running as
// PID 1), no dependencies, because the agent is a small static binary without spdlog.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>

#include "common/error.h"

namespace sm::agent {

enum class LogLevel { kDebug, kInfo, kError };
void set_log_level(LogLevel level);
bool log_enabled(LogLevel level);
void log(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

#define SM_LOG_DEBUG(...) \
  do { if (::sm::agent::log_enabled(::sm::agent::LogLevel::kDebug)) ::sm::agent::log(::sm::agent::LogLevel::kDebug, __VA_ARGS__); } while (0)
#define SM_LOG_INFO(...) ::sm::agent::log(::sm::agent::LogLevel::kInfo, __VA_ARGS__)
#define SM_LOG_ERROR(...) ::sm::agent::log(::sm::agent::LogLevel::kError, __VA_ARGS__)

// "what: strerror(err)" as an sm::Error, without fmt (the agent does not link libfmt).
[[nodiscard]] inline Error errno_error(const std::string& what, int err = errno) {
  return Error(what + ": " + std::strerror(err));
}

}  // namespace sm::agent
