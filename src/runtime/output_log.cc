#include "runtime/output_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include <fmt/format.h>

#include "common/error.h"

namespace sm::runtime {

OutputLogWriter::OutputLogWriter(const std::filesystem::path& path)
    : fd_(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) {
  if (!fd_) throw sys_error("cannot create " + path.string());
}

void OutputLogWriter::append(Stream stream, std::string_view data) {
  while (!data.empty()) {
    size_t n = std::min(data.size(), kMaxLogRecord);
    std::string rec(5, '\0');
    rec[0] = static_cast<char>(stream);
    for (int i = 0; i < 4; ++i) rec[1 + i] = static_cast<char>((n >> (8 * i)) & 0xff);
    rec.append(data.substr(0, n));
    data.remove_prefix(n);
    std::lock_guard lock(mu_);
    // O_APPEND: one write per record keeps records whole.
    const char* p = rec.data();
    size_t left = rec.size();
    while (left > 0) {
      ssize_t w = ::write(fd_.get(), p, left);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return;
      p += w;
      left -= static_cast<size_t>(w);
    }
  }
}

uint64_t read_output_log(const std::filesystem::path& path, uint64_t offset,
                         const std::function<void(Stream, std::string_view)>& sink) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) return offset;
    throw sys_error("cannot open " + path.string());
  }
  std::string buf;
  char chunk[65536];
  uint64_t pos = offset;
  for (;;) {
    ssize_t n = ::pread(fd.get(), chunk, sizeof chunk, static_cast<off_t>(pos + buf.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw sys_error("cannot read " + path.string());
    if (n == 0) break;
    buf.append(chunk, static_cast<size_t>(n));
    size_t at = 0;
    while (buf.size() - at >= 5) {
      auto type = static_cast<uint8_t>(buf[at]);
      size_t len = 0;
      for (int i = 0; i < 4; ++i) len |= static_cast<size_t>(static_cast<uint8_t>(buf[at + 1 + i])) << (8 * i);
      if ((type != 1 && type != 2) || len > kMaxLogRecord)
        throw Error(fmt::format("{} is corrupt at byte {}", path.string(), pos + at));
      if (buf.size() - at - 5 < len) break;
      sink(static_cast<Stream>(type), std::string_view(buf).substr(at + 5, len));
      at += 5 + len;
    }
    pos += at;
    buf.erase(0, at);
  }
  return pos;
}

}  // namespace sm::runtime
