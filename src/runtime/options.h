// Parsers for the values Docker's CLI conventions use: sizes ("512m"), CPU counts ("1.5"),
// durations ("10s"), env files. Pure; sm::Error names the bad input.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sm::runtime {

// "536870912", "512k", "512m", "2g" (b/k/m/g, either case, optional trailing "b"/"ib") -> MiB,
// rounded up. Zero and sizes over 1 TiB are refused.
[[nodiscard]] uint64_t parse_size_mib(std::string_view s);

// "2", "1.5" -> whole vCPUs, rounded up (a microVM has whole vCPUs). Must be > 0.
[[nodiscard]] unsigned parse_cpus(std::string_view s);

// "500ms", "10s", "2m", "1h", or a bare number of seconds.
[[nodiscard]] std::chrono::milliseconds parse_duration(std::string_view s);

// Docker's --env-file: one NAME=value per line (the value is taken verbatim, quotes and all),
// blank lines and lines starting with '#' skipped, a bare NAME takes the value from `lookup`
// (the host environment) and is dropped when that has none.
[[nodiscard]] std::vector<std::string> parse_env_file(
    std::string_view text, const std::function<std::optional<std::string>(const std::string&)>& lookup);
[[nodiscard]] std::vector<std::string> read_env_file(const std::filesystem::path& path);

// -e NAME=value as given; a bare -e NAME takes the host's value (dropped when unset).
[[nodiscard]] std::vector<std::string> resolve_env_args(const std::vector<std::string>& args);

}  // namespace sm::runtime
