#include "log.h"

#include <unistd.h>

#include <cstdarg>
#include <algorithm>
#include <cstdio>

namespace sm::agent {

namespace {
LogLevel g_level = LogLevel::kInfo;
}

void set_log_level(LogLevel level) { g_level = level; }
bool log_enabled(LogLevel level) { return level >= g_level; }

void log(LogLevel level, const char* fmt, ...) {
  if (!log_enabled(level)) return;
  char buf[1024];
  int n = std::snprintf(buf, sizeof buf, "sm-agent: %s", level == LogLevel::kError ? "error: " : "");
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(buf + n, sizeof buf - static_cast<size_t>(n) - 1, fmt, ap);
  va_end(ap);
  size_t len = static_cast<size_t>(n) + (m < 0 ? 0 : std::min<size_t>(static_cast<size_t>(m), sizeof buf - static_cast<size_t>(n) - 2));
  buf[len++] = '\n';
  // One write per line so lines from the agent never interleave mid-line on the console.
  ssize_t r = ::write(STDERR_FILENO, buf, len);
  (void)r;
}

}  // namespace sm::agent
