#include "tcp_forward.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "log.h"

namespace sm::agent {

namespace {

using Clock = std::chrono::steady_clock;

// Connecting to a loopback port is immediate (accepted or refused); a listener whose backlog
// is full drops the SYN instead, and this bounds that wait.
constexpr std::chrono::milliseconds kConnectDeadline{5000};
constexpr size_t kRelayBuffer = 64 << 10;

void set_nonblock(int fd) {
  int fl = ::fcntl(fd, F_GETFL);
  if (fl >= 0) ::fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

int ms_until(Clock::time_point deadline) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return ms <= 0 ? 0 : static_cast<int>(ms + 1);
}

// Waits for `events` on `fd` until `deadline`: true when ready.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, ms_until(deadline));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return false;
  }
}

bool send_all(int fd, std::string_view s) {
  auto deadline = Clock::now() + kConnectDeadline;
  while (!s.empty()) {
    ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n > 0) {
      s.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && wait_for(fd, POLLOUT, deadline)) continue;
    return false;
  }
  return true;
}

// "connection refused": strerror's words, as the host's message goes on after a colon.
std::string reason(int err) {
  std::string s = std::strerror(err);
  if (!s.empty() && s[0] >= 'A' && s[0] <= 'Z' && !(s.size() > 1 && s[1] >= 'A' && s[1] <= 'Z'))
    s[0] = static_cast<char>(s[0] - 'A' + 'a');
  return s;
}

// Reads the request line byte by byte (nothing after it is consumed). Empty on timeout, EOF,
// or a line over the cap.
std::string read_request_line(int fd, Clock::time_point deadline, const char** why) {
  std::string line;
  for (;;) {
    if (line.size() >= kMaxTcpRequestLine) {
      *why = "the request line is too long";
      return {};
    }
    char c;
    ssize_t n = ::read(fd, &c, 1);
    if (n == 1) {
      if (c == '\n') return line;
      line.push_back(c);
      continue;
    }
    if (n == 0) {
      *why = "the connection closed before the request line";
      return {};
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      *why = "reading the request line failed";
      return {};
    }
    if (!wait_for(fd, POLLIN, deadline)) {
      *why = "timed out waiting for the request line";
      return {};
    }
  }
}

// A non-blocking connect to the loopback `port` of `family`, bounded by kConnectDeadline.
// Returns the socket, or an invalid one with `err` set.
UniqueFd connect_loopback(int family, uint16_t port, int& err) {
  UniqueFd s(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s) {
    err = errno;
    return {};
  }
  sockaddr_storage ss{};
  socklen_t len;
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    a->sin6_addr = in6addr_loopback;
    len = sizeof *a;
  }
  int r;
  do {
    r = ::connect(s.get(), reinterpret_cast<sockaddr*>(&ss), len);
  } while (r != 0 && errno == EINTR);
  if (r == 0) return s;
  if (errno != EINPROGRESS) {
    err = errno;
    return {};
  }
  if (!wait_for(s.get(), POLLOUT, Clock::now() + kConnectDeadline)) {
    err = ETIMEDOUT;
    return {};
  }
  int so_error = 0;
  socklen_t sl = sizeof so_error;
  if (::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &so_error, &sl) != 0) so_error = errno;
  if (so_error != 0) {
    err = so_error;
    return {};
  }
  return s;
}

// One direction of the relay: bytes read from `from` wait in `buf` until written to `to`.
struct Pipe {
  int from, to;
  std::string buf;
  size_t off = 0;
  bool eof = false;   // `from` reached end of stream
  bool shut = false;  // and it was passed on: shutdown(to, SHUT_WR)
  [[nodiscard]] size_t pending() const { return buf.size() - off; }
};

}  // namespace

std::optional<uint16_t> parse_tcp_request(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.rfind("TCP ", 0) != 0) return std::nullopt;
  std::string_view num = line.substr(4);
  if (num.empty() || num.size() > 5 || num[0] == '0') return std::nullopt;
  uint32_t v = 0;
  for (char c : num) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  if (v > 65535) return std::nullopt;
  return static_cast<uint16_t>(v);
}

void relay_bidirectional(int a, int b) {
  set_nonblock(a);
  set_nonblock(b);
  Pipe dirs[2] = {{a, b, {}, 0, false, false}, {b, a, {}, 0, false, false}};
  for (auto& d : dirs) d.buf.reserve(kRelayBuffer);
  char chunk[kRelayBuffer];
  while (!(dirs[0].shut && dirs[1].shut)) {
    // One pollfd per socket: readable for the direction that reads it (when its buffer is
    // empty), writable for the one that writes it (when it has bytes). A socket with nothing
    // to wait for is left out (fd -1), so a hung-up peer cannot make poll spin.
    pollfd p[2];
    for (int i = 0; i < 2; ++i) {
      int fd = i == 0 ? a : b;
      short ev = 0;
      for (auto& d : dirs) {
        if (d.from == fd && !d.eof && d.pending() == 0) ev |= POLLIN;
        if (d.to == fd && d.pending() > 0) ev |= POLLOUT;
      }
      p[i] = {ev ? fd : -1, ev, 0};
    }
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    for (auto& d : dirs) {
      const pollfd& in = p[d.from == a ? 0 : 1];
      const pollfd& out = p[d.to == a ? 0 : 1];
      if (!d.eof && d.pending() == 0 && (in.revents & (POLLIN | POLLHUP | POLLERR))) {
        ssize_t n = ::read(d.from, chunk, sizeof chunk);
        if (n > 0) {
          d.buf.assign(chunk, static_cast<size_t>(n));
          d.off = 0;
        } else if (n == 0) {
          d.eof = true;
        } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
          return;  // ECONNRESET and friends: the connection is over, both ways
        }
      }
      if (d.pending() > 0 && (out.revents & (POLLOUT | POLLHUP | POLLERR))) {
        ssize_t n = ::send(d.to, d.buf.data() + d.off, d.pending(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
          d.off += static_cast<size_t>(n);
          if (d.pending() == 0) {
            d.buf.clear();
            d.off = 0;
          }
        } else if (n < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
          return;  // EPIPE: the reader is gone
        }
      }
      if (d.eof && d.pending() == 0 && !d.shut) {
        ::shutdown(d.to, SHUT_WR);
        d.shut = true;
      }
    }
  }
}

void serve_tcp_forward(int conn, std::chrono::milliseconds request_deadline) {
  set_nonblock(conn);
  const char* why = "";
  std::string line = read_request_line(conn, Clock::now() + request_deadline, &why);
  if (line.empty() && *why) {
    SM_LOG_DEBUG("tcp forward: %s", why);
    (void)send_all(conn, std::string("ERR ") + why + "\n");
    return;
  }
  auto port = parse_tcp_request(line);
  if (!port) {
    (void)send_all(conn, "ERR bad request: expected \"TCP <port>\" with a port 1..65535\n");
    return;
  }
  int err4 = 0, err6 = 0;
  UniqueFd target = connect_loopback(AF_INET, *port, err4);
  if (!target) target = connect_loopback(AF_INET6, *port, err6);
  if (!target) {
    // The IPv4 reason: [::1] is only the fallback (and often absent).
    SM_LOG_DEBUG("tcp forward: port %u: %s / %s", *port, std::strerror(err4), std::strerror(err6));
    (void)send_all(conn, "ERR " + reason(err4) + "\n");
    return;
  }
  if (!send_all(conn, "OK\n")) return;
  relay_bidirectional(conn, target.get());
}

pid_t fork_tcp_forward(UniqueFd conn) {
  pid_t pid = ::fork();
  if (pid != 0) return pid;  // the parent (or -1); `conn` closes as it leaves scope
  // The child. It holds copies of every agent descriptor (the listeners, the epoll and signal
  // fds, other connections, exec'd processes' pipes): keep only stdio (the console, for logs)
  // and the connection, or a process's stdin would not see EOF while this child lives.
  int fd = conn.release();
  if (fd != 3) {
    if (::dup2(fd, 3) < 0) ::_exit(1);
    fd = 3;
  }
  if (::close_range(4, ~0u, 0) != 0)
    for (int i = 4; i < 4096; ++i) ::close(i);
  // The agent blocks the signals it reads through its signalfd; this child takes the defaults,
  // so SIGTERM (and SIGKILL at shutdown) end it like any process.
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // --no-init: do not outlive the agent
  ::prctl(PR_SET_NAME, "sm-tcp-forward");
  serve_tcp_forward(fd);
  ::_exit(0);
}

}  // namespace sm::agent
