// A container's output as `logs` replays it: stdout and stderr chunks in the order they came,
// each a record of u8 stream (1 stdout, 2 stderr), u32 little-endian length, then the bytes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string_view>

#include "common/unique_fd.h"

namespace sm::runtime {

enum class Stream : uint8_t { kStdout = 1, kStderr = 2 };

inline constexpr size_t kMaxLogRecord = 1 << 20;

class OutputLogWriter {
 public:
  // Appends to `path`, creating it.
  explicit OutputLogWriter(const std::filesystem::path& path);
  // Thread-safe. Write errors (a full disk) are dropped: the log must never stop the workload.
  void append(Stream stream, std::string_view data);

 private:
  std::mutex mu_;
  UniqueFd fd_;
};

// Calls `sink` for each complete record from byte `offset` on; returns the offset after the last
// complete one (a record still being written is left for the next call). A corrupt record
// throws sm::Error.
uint64_t read_output_log(const std::filesystem::path& path, uint64_t offset,
                         const std::function<void(Stream, std::string_view)>& sink);

}  // namespace sm::runtime
