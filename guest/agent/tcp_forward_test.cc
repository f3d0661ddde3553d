// The agent's TCP forwarder on real sockets: the "host" end is one side of a Unix socketpair,
// serve_tcp_forward() runs on a thread with the other side, and the "guest service" is a real
// TCP listener on 127.0.0.1.
#include "tcp_forward.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace sm::agent {
namespace {

using namespace std::chrono_literals;

TEST(AgentTcpForward, ParsesTheRequestLine) {
  EXPECT_EQ(parse_tcp_request("TCP 8080"), 8080);
  EXPECT_EQ(parse_tcp_request("TCP 1"), 1);
  EXPECT_EQ(parse_tcp_request("TCP 65535"), 65535);
  EXPECT_EQ(parse_tcp_request("TCP 22\r"), 22);
  for (const char* bad : {"", "TCP", "TCP ", "TCP 0", "TCP 65536", "TCP 080", "TCP +80", "TCP -1", "TCP 80 ",
                          "tcp 80", "UDP 53", "TCP  80", "TCP 99999999999", "TCP 8o"})
    EXPECT_EQ(parse_tcp_request(bad), std::nullopt) << bad;
}

// A listening TCP socket on 127.0.0.1, port chosen by the kernel.
struct Listener {
  UniqueFd fd;
  uint16_t port = 0;
  Listener() {
    fd = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd.get(), 4) != 0 ||
        ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
      throw std::runtime_error("listen on 127.0.0.1 failed");
    port = ntohs(a.sin_port);
  }
};

// A port on 127.0.0.1 where nobody listens (bound, then closed).
uint16_t closed_port() {
  Listener l;
  return l.port;
}

std::string read_line(int fd) {
  std::string s;
  char c;
  while (::read(fd, &c, 1) == 1) {
    s.push_back(c);
    if (c == '\n') break;
  }
  return s;
}

std::string read_all(int fd) {
  std::string s;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) s.append(buf, static_cast<size_t>(n));
  return s;
}

void write_all(int fd, std::string_view s) {
  while (!s.empty()) {
    ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    ASSERT_GT(n, 0);
    s.remove_prefix(static_cast<size_t>(n));
  }
}

// The host end of a forwarded connection, with the forwarder serving the other end.
struct Forward {
  UniqueFd host, agent_end;
  std::thread server;
  explicit Forward(std::chrono::milliseconds deadline = 2s) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw std::runtime_error("socketpair");
    host = UniqueFd(sv[0]);
    agent_end = UniqueFd(sv[1]);
    server = std::thread([this, deadline] {
      serve_tcp_forward(agent_end.get(), deadline);
      agent_end.reset();  // as the forked child's exit would
    });
  }
  ~Forward() {
    host.reset();
    server.join();
  }
};

TEST(AgentTcpForward, RelaysBothWaysWithHalfClose) {
  Listener service;
  Forward f;
  write_all(f.host.get(), "TCP " + std::to_string(service.port) + "\n");
  UniqueFd guest(::accept4(service.fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(guest);
  EXPECT_EQ(read_line(f.host.get()), "OK\n");

  // Host -> guest, then the host half-closes: the guest service reads EOF ...
  std::string big(1 << 20, 'x');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 + 7);
  std::thread writer([&] {
    write_all(f.host.get(), big);
    ::shutdown(f.host.get(), SHUT_WR);
  });
  EXPECT_EQ(read_all(guest.get()), big);
  writer.join();
  // ... and can still answer, then close: the host reads the answer and EOF.
  write_all(guest.get(), "pong");
  guest.reset();
  EXPECT_EQ(read_all(f.host.get()), "pong");
}

TEST(AgentTcpForward, GuestHalfCloseFirst) {
  Listener service;
  Forward f;
  write_all(f.host.get(), "TCP " + std::to_string(service.port) + "\n");
  UniqueFd guest(::accept4(service.fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(guest);
  EXPECT_EQ(read_line(f.host.get()), "OK\n");
  write_all(guest.get(), "banner\n");
  ::shutdown(guest.get(), SHUT_WR);
  EXPECT_EQ(read_all(f.host.get()), "banner\n") << "the guest's half-close reaches the host as EOF";
  write_all(f.host.get(), "still open");
  ::shutdown(f.host.get(), SHUT_WR);
  EXPECT_EQ(read_all(guest.get()), "still open");
}

TEST(AgentTcpForward, RefusedPortIsAnErrLine) {
  uint16_t port = closed_port();
  Forward f;
  write_all(f.host.get(), "TCP " + std::to_string(port) + "\n");
  EXPECT_EQ(read_line(f.host.get()), "ERR connection refused\n");
  EXPECT_EQ(read_all(f.host.get()), "") << "then the forwarder closes";
}

TEST(AgentTcpForward, BadOrMissingRequestLines) {
  {
    Forward f;
    write_all(f.host.get(), "GET / HTTP/1.1\n");
    EXPECT_EQ(read_line(f.host.get()).rfind("ERR bad request", 0), 0u);
  }
  {
    Forward f;
    write_all(f.host.get(), std::string(100, '1'));  // no newline within the cap
    EXPECT_EQ(read_line(f.host.get()), "ERR the request line is too long\n");
  }
  {
    Forward f(200ms);
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(read_line(f.host.get()), "ERR timed out waiting for the request line\n");
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  }
}

}  // namespace
}  // namespace sm::agent
