#include "cli/control.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/error.h"

namespace sm::cli {
namespace {

constexpr size_t kMaxLine = 8192;

sockaddr_un address(const std::filesystem::path& p) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  const std::string s = p.string();
  if (s.size() >= sizeof a.sun_path) throw Error(fmt::format("control socket path {} is too long", s));
  std::memcpy(a.sun_path, s.c_str(), s.size() + 1);
  return a;
}

// Reads one line of at most kMaxLine bytes (without the newline); false on EOF or overflow.
bool read_line(int fd, std::string& line) {
  line.clear();
  char c;
  while (line.size() < kMaxLine) {
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    if (c == '\n') return true;
    line += c;
  }
  return false;
}

void write_all(int fd, std::string_view s) {
  while (!s.empty()) {
    ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    s.remove_prefix(static_cast<size_t>(n));
  }
}

}  // namespace

ControlServer::ControlServer(std::filesystem::path socket, SnapshotHandler on_snapshot)
    : path_(std::move(socket)), on_snapshot_(std::move(on_snapshot)) {
  auto a = address(path_);
  std::error_code ec;
  std::filesystem::remove(path_, ec);
  listener_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener_) throw sys_error("control socket");
  if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener_.get(), 8) != 0)
    throw sys_error("binding the control socket " + path_.string());
  stop_.reset(::eventfd(0, EFD_CLOEXEC));
  if (!stop_) throw sys_error("eventfd");
  thread_ = std::thread([this] { serve(); });
}

ControlServer::~ControlServer() {
  uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(stop_.get(), &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  std::error_code ec;
  std::filesystem::remove(path_, ec);
}

void ControlServer::serve() {
  for (;;) {
    pollfd fds[2] = {{listener_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) continue;
    timeval tv{5, 0};  // a client that sends nothing does not hold the server
    ::setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string line;
    if (!read_line(conn.get(), line)) continue;
    std::string reply = "ok\n";
    if (line.starts_with("snapshot /")) {
      try {
        on_snapshot_(line.substr(9));
      } catch (const std::exception& e) {
        reply = fmt::format("error {}\n", e.what());
        for (size_t i = 0; i + 1 < reply.size(); ++i)
          if (reply[i] == '\n') reply[i] = ' ';
      }
    } else {
      reply = "error unknown request (expected: snapshot <absolute directory>)\n";
    }
    write_all(conn.get(), reply);
  }
}

void control_snapshot(const std::filesystem::path& socket, const std::filesystem::path& dir) {
  auto a = address(socket);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw sys_error("socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    throw sys_error(fmt::format("cannot reach the VM's supervisor at {}", socket.string()));
  write_all(fd.get(), fmt::format("snapshot {}\n", dir.string()));
  std::string line;
  if (!read_line(fd.get(), line)) throw Error("the VM's supervisor closed the connection without an answer");
  if (line == "ok") return;
  if (line.starts_with("error ")) throw Error(line.substr(6));
  throw Error(fmt::format("unexpected answer from the VM's supervisor: {}", line));
}

}  // namespace sm::cli
