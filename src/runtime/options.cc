#include "runtime/options.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "common/error.h"

namespace sm::runtime {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// The leading decimal number of `s` (digits with at most one '.'); the rest goes to `unit`.
std::optional<double> split_number(std::string_view s, std::string& unit) {
  size_t i = 0;
  bool dot = false;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || (s[i] == '.' && !dot))) {
    dot |= s[i] == '.';
    ++i;
  }
  if (i == 0 || (i == 1 && s[0] == '.')) return std::nullopt;
  unit = lower(s.substr(i));
  return std::strtod(std::string(s.substr(0, i)).c_str(), nullptr);
}

std::optional<std::string> host_env(const std::string& name) {
  const char* v = std::getenv(name.c_str());
  return v ? std::optional<std::string>(v) : std::nullopt;
}

}  // namespace

uint64_t parse_size_mib(std::string_view s) {
  std::string unit;
  auto n = split_number(s, unit);
  double mult = 0;
  if (unit == "" || unit == "b") mult = 1;
  else if (unit == "k" || unit == "kb" || unit == "kib") mult = 1024.0;
  else if (unit == "m" || unit == "mb" || unit == "mib") mult = 1024.0 * 1024;
  else if (unit == "g" || unit == "gb" || unit == "gib") mult = 1024.0 * 1024 * 1024;
  else if (unit == "t" || unit == "tb" || unit == "tib") mult = 1024.0 * 1024 * 1024 * 1024;
  if (!n || mult == 0) throw Error(fmt::format("bad size '{}': use a number with b, k, m or g (512m, 2g)", s));
  double bytes = *n * mult;
  if (bytes <= 0 || bytes > 1024.0 * 1024 * 1024 * 1024)
    throw Error(fmt::format("bad size '{}': it must be above zero and at most 1t", s));
  return static_cast<uint64_t>(std::ceil(bytes / (1024.0 * 1024)));
}

unsigned parse_cpus(std::string_view s) {
  std::string unit;
  auto n = split_number(s, unit);
  if (!n || !unit.empty() || *n <= 0 || *n > 1024) throw Error(fmt::format("bad CPU count '{}': use a number such as 2 or 1.5", s));
  return static_cast<unsigned>(std::ceil(*n));
}

std::chrono::milliseconds parse_duration(std::string_view s) {
  std::string unit;
  auto n = split_number(s, unit);
  double ms = 0;
  if (n && (unit.empty() || unit == "s")) ms = *n * 1000;
  else if (n && unit == "ms") ms = *n;
  else if (n && unit == "m") ms = *n * 60'000;
  else if (n && unit == "h") ms = *n * 3'600'000;
  else throw Error(fmt::format("bad duration '{}': use a number with ms, s, m or h (500ms, 10s)", s));
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(ms)));
}

std::vector<std::string> parse_env_file(std::string_view text,
                                        const std::function<std::optional<std::string>(const std::string&)>& lookup) {
  std::vector<std::string> out;
  size_t lineno = 0;
  while (!text.empty()) {
    ++lineno;
    size_t nl = text.find('\n');
    std::string line(text.substr(0, nl));
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos || line[start] == '#') continue;
    line.erase(0, start);
    size_t eq = line.find('=');
    std::string name = line.substr(0, eq);
    while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.pop_back();
    if (name.empty() || name.find_first_of(" \t") != std::string::npos)
      throw Error(fmt::format("env file line {}: '{}' is not NAME=value", lineno, line));
    if (eq != std::string::npos) out.push_back(name + "=" + line.substr(eq + 1));
    else if (auto v = lookup(name)) out.push_back(name + "=" + *v);
  }
  return out;
}

std::vector<std::string> read_env_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw sys_error("cannot read the env file " + path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return parse_env_file(ss.str(), host_env);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", path.string(), e.what()));
  }
}

std::vector<std::string> resolve_env_args(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  for (const auto& a : args) {
    if (a.empty() || a[0] == '=') throw Error(fmt::format("bad -e '{}': expected NAME=value or NAME", a));
    if (a.find('=') != std::string::npos) out.push_back(a);
    else if (auto v = host_env(a)) out.push_back(a + "=" + *v);
  }
  return out;
}

}  // namespace sm::runtime
