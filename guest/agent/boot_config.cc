#include "boot_config.h"

#include <charconv>

#include "agent/protocol.h"

namespace sm::agent {

namespace {

bool parse_port(std::string_view v, uint32_t& out) {
  uint32_t p = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), p);
  if (ec != std::errc() || end != v.data() + v.size() || p == 0 || p == 0xffffffffu) return false;
  out = p;
  return true;
}

}  // namespace

BootConfig parse_boot_config(std::string_view cmdline, std::string* warnings) {
  BootConfig c;
  auto warn = [&](std::string_view key, std::string_view value) {
    if (warnings) *warnings += "ignoring " + std::string(key) + "=" + std::string(value) + "; ";
  };
  size_t i = 0;
  while (i < cmdline.size()) {
    while (i < cmdline.size() && (cmdline[i] == ' ' || cmdline[i] == '\n' || cmdline[i] == '\t')) ++i;
    size_t start = i;
    while (i < cmdline.size() && cmdline[i] != ' ' && cmdline[i] != '\n' && cmdline[i] != '\t') ++i;
    std::string_view word = cmdline.substr(start, i - start);
    if (word.substr(0, 3) != "sm.") continue;
    size_t eq = word.find('=');
    std::string_view key = word.substr(0, eq);
    std::string_view value = eq == std::string_view::npos ? std::string_view{} : word.substr(eq + 1);
    if (key == "sm.root") {
      if (value.empty()) warn(key, value);
      else c.root = value;
    } else if (key == "sm.rootfstype") {
      if (value == "erofs" || value == "ext4" || value == "auto") c.rootfstype = value;
      else warn(key, value);
    } else if (key == "sm.scratch") {
      c.scratch = value;
    } else if (key == "sm.hostname") {
      if (valid_hostname(value)) c.hostname = value;
      else warn(key, value);
    } else if (key == "sm.port") {
      if (!parse_port(value, c.port)) warn(key, value);
    } else if (key == "sm.notify") {
      if (!parse_port(value, c.notify_port)) warn(key, value);
    } else if (key == "sm.debug") {
      c.debug = value.empty() || value == "1" || value == "true";
    } else {
      warn(key, value);
    }
  }
  return c;
}

}  // namespace sm::agent
