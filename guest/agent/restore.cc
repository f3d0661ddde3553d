#include "restore.h"

#include <fcntl.h>
#include <linux/random.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "log.h"

// Linux 4.17+ (include/uapi/linux/random.h); older headers lack it.
#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07)
#endif

namespace sm::agent {

namespace {

ErrorInfo step_failed(const char* step, int err) {
  return ErrorInfo{ErrorCode::kRestoreFailed,
                   std::string(step) + ": " + std::strerror(err) + " (errno " + std::to_string(err) + ")"};
}

// clock_settime(2) takes a timespec; realtime_ns is already checked to be positive.
int set_clock(int64_t realtime_ns) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(realtime_ns / 1000000000);
  ts.tv_nsec = static_cast<long>(realtime_ns % 1000000000);
  return ::clock_settime(CLOCK_REALTIME, &ts) == 0 ? 0 : errno;
}

// RNDADDENTROPY mixes the bytes into the input pool and credits them (8 bits a byte: the host
// drew them from its own CRNG); RNDRESEEDCRNG then makes the CRNG take a new key from the pool
// now, instead of at its next scheduled reseed, so two clones diverge from their next read.
// Both need CAP_SYS_ADMIN (PID 1 has it). random(4).
const char* add_entropy(int fd, const std::string& bytes, int& err) {
  // struct rand_pool_info ends in a flexible array: allocate it with the bytes behind it, in u32
  // units so the header and buf stay aligned.
  static_assert(sizeof(rand_pool_info) == 2 * sizeof(int), "rand_pool_info is {entropy_count, buf_size, buf[]}");
  std::vector<uint32_t> storage((sizeof(rand_pool_info) + bytes.size() + sizeof(uint32_t) - 1) / sizeof(uint32_t));
  auto* info = reinterpret_cast<rand_pool_info*>(storage.data());
  info->entropy_count = static_cast<int>(bytes.size() * 8);
  info->buf_size = static_cast<int>(bytes.size());
  std::memcpy(reinterpret_cast<char*>(storage.data()) + sizeof(rand_pool_info), bytes.data(), bytes.size());
  if (::ioctl(fd, RNDADDENTROPY, info) != 0) {
    err = errno;
    return "ioctl(RNDADDENTROPY)";
  }
  if (::ioctl(fd, RNDRESEEDCRNG) != 0) {
    err = errno;
    return "ioctl(RNDRESEEDCRNG)";
  }
  return nullptr;
}

// Without privileges: writing to /dev/urandom mixes the bytes in without crediting them.
const char* mix_entropy(int fd, const std::string& bytes, int& err) {
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : EIO;
      return "write /dev/urandom";
    }
    off += static_cast<size_t>(n);
  }
  return nullptr;
}

}  // namespace

std::variant<RestoreReply, ErrorInfo> apply_restore(const RestoreRequest& req, bool init) {
  RestoreReply done;

  // The clock first: whatever runs next (and the entropy step's log line) sees the right time.
  if (init) {
    if (int err = set_clock(req.realtime_ns)) return step_failed("clock_settime(CLOCK_REALTIME)", err);
    done.clock_set = true;
  }

  UniqueFd fd(::open("/dev/urandom", O_WRONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) return step_failed("open /dev/urandom", errno);
  int err = 0;
  if (const char* step = init ? add_entropy(fd.get(), req.entropy, err) : mix_entropy(fd.get(), req.entropy, err))
    return step_failed(step, err);
  done.entropy_credited = init;

  if (init) {
    if (::sethostname(req.hostname.data(), req.hostname.size()) != 0) return step_failed("sethostname", errno);
    done.hostname_set = true;
  }

  SM_LOG_DEBUG("restore: clock %s, %zu bytes of entropy %s, hostname %s%s", done.clock_set ? "set" : "left alone",
               req.entropy.size(), done.entropy_credited ? "credited, CRNG reseeded" : "mixed in",
               req.hostname.c_str(), done.hostname_set ? "" : " (agent only)");
  return done;
}

}  // namespace sm::agent
