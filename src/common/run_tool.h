// Running a host tool (mkfs.erofs, mke2fs, ...) to completion with its output kept for errors.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace sm {

// Runs argv[0] (looked up in PATH) with stdin from /dev/null and stdout and stderr captured in
// `log`; throws sm::Error with the tail of that output when it cannot start or exits non-zero.
// `hint` says what to do when the tool is not installed.
void run_tool(const std::vector<std::string>& argv, const std::filesystem::path& log, std::string_view hint);

}  // namespace sm
