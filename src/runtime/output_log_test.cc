#include "runtime/output_log.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>

#include "common/error.h"

namespace sm::runtime {
namespace {

namespace fs = std::filesystem;

TEST(OutputLog, ReplaysStreamsInOrderAndResumes) {
  fs::path p = fs::temp_directory_path() / ("sm-outlog-" + std::to_string(::getpid()));
  fs::remove(p);
  std::string got;
  auto sink = [&](Stream s, std::string_view d) { got += (s == Stream::kStdout ? "o:" : "e:") + std::string(d) + ";"; };
  EXPECT_EQ(read_output_log(p, 0, sink), 0u) << "a missing log is empty";
  {
    OutputLogWriter w(p);
    w.append(Stream::kStdout, "one");
    w.append(Stream::kStderr, "two");
  }
  uint64_t off = read_output_log(p, 0, sink);
  EXPECT_EQ(got, "o:one;e:two;");
  {
    OutputLogWriter w(p);
    w.append(Stream::kStdout, std::string(3u << 20, 'x'));  // split into capped records
  }
  got.clear();
  size_t total = 0;
  off = read_output_log(p, off, [&](Stream, std::string_view d) { total += d.size(); });
  EXPECT_EQ(total, 3u << 20);
  EXPECT_EQ(off, fs::file_size(p));

  // A half-written record is left for later; garbage is an error.
  std::ofstream(p, std::ios::app | std::ios::binary) << std::string("\x01\x10\x00\x00\x00" "abc", 8);
  EXPECT_EQ(read_output_log(p, off, sink), off);
  std::ofstream(p, std::ios::trunc | std::ios::binary) << std::string("\x07\x01\x00\x00\x00" "z", 6);
  EXPECT_THROW((void)read_output_log(p, 0, sink), Error);
  fs::remove(p);
}

}  // namespace
}  // namespace sm::runtime
