// SlirpBackend against real libslirp and real loopback sockets, driven as a guest would be:
// frames built by hand go in through send(), frames for the guest come out of peek_rx().
#include "net/slirp_backend.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/error.h"
#include "common/unique_fd.h"
#include "net/flows.h"
#include "net/make_backend.h"
#include "net/net_test_frames.h"

namespace sm::net {
namespace {

using namespace sm::net::testing;

NetworkConfig user_config() {
  NetworkConfig c;
  c.mode = Mode::user;
  return c;
}

// A socket of `type` bound on 127.0.0.1 (port 0: any); returns it and its port.
std::pair<UniqueFd, uint16_t> bound_socket(int type, uint16_t port = 0) {
  UniqueFd fd(::socket(AF_INET, type | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(fd.valid());
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return {UniqueFd(), 0};
  socklen_t len = sizeof a;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  return {std::move(fd), ntohs(a.sin_port)};
}

bool is_arp_request_for(std::span<const std::byte> f, uint32_t ip) {
  return f.size() >= 42 && get16(f, 12) == 0x0806 && get16(f, 20) == 1 && get32(f, 38) == ip;
}

TEST(SlirpBackend, PublishedTcpPortReachesTheGuest) {
  auto b = SlirpBackend::create(user_config());
  PortMapping m = b->publish({PortMapping::Protocol::tcp, "127.0.0.1", 0, 8080});
  ASSERT_NE(m.host_port, 0);
  EXPECT_EQ(m.guest_port, 8080);

  UniqueFd c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(m.host_port);
  ASSERT_EQ(::connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);

  // libslirp does not know the guest's MAC yet: it asks.
  auto arp = wait_rx(*b, [](auto f) { return is_arp_request_for(f, ip4("10.0.2.15")); });
  ASSERT_TRUE(arp) << "no ARP request for 10.0.2.15";
  ASSERT_TRUE(b->send(arp_reply(src_mac(*arp), get32(*arp, 28), ip4("10.0.2.15"))));

  auto syn = wait_rx(*b, [](auto f) {
    return f.size() >= 54 && get16(f, 12) == 0x0800 && std::to_integer<int>(f[23]) == 6;
  });
  ASSERT_TRUE(syn) << "no TCP segment toward the guest";
  const auto& f = *syn;
  for (int i = 0; i < 6; ++i) EXPECT_EQ(std::to_integer<uint8_t>(f[i]), kGuestMac[i]);
  EXPECT_EQ(get32(f, 30), ip4("10.0.2.15"));
  size_t ihl = (std::to_integer<size_t>(f[14]) & 0xf) * 4;
  size_t tcp = 14 + ihl;
  EXPECT_EQ(get16(f, tcp + 2), 8080);
  uint8_t flags = std::to_integer<uint8_t>(f[tcp + 13]);
  EXPECT_TRUE(flags & 0x02) << "not a SYN: flags " << int(flags);
  EXPECT_FALSE(flags & 0x10) << "a SYN from libslirp carries no ACK";
  EXPECT_GE(b->stats().rx_frames, 2u);
}

TEST(SlirpBackend, TakenPortIsAClearError) {
  auto [listener, port] = bound_socket(SOCK_STREAM);
  ASSERT_EQ(::listen(listener.get(), 1), 0);
  auto b = SlirpBackend::create(user_config());
  try {
    (void)b->publish({PortMapping::Protocol::tcp, "127.0.0.1", port, 80});
    FAIL() << "publishing a taken port succeeded";
  } catch (const Error& e) {
    std::string want = fmt::format("cannot publish 127.0.0.1:{}/tcp: the port is in use", port);
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
  EXPECT_TRUE(b->published().empty());

  // The same at create(): before the VM would boot.
  NetworkConfig c = user_config();
  c.publish.push_back({PortMapping::Protocol::tcp, "127.0.0.1", port, 80});
  EXPECT_THROW((void)SlirpBackend::create(c), Error);
}

TEST(SlirpBackend, BadPublishArgumentsAreErrors) {
  auto b = SlirpBackend::create(user_config());
  EXPECT_THROW((void)b->publish({PortMapping::Protocol::tcp, "not-an-ip", 0, 80}), Error);
  EXPECT_THROW((void)b->publish({PortMapping::Protocol::tcp, "127.0.0.1", 0, 0}), Error);
  // Not an address of this host.
  EXPECT_THROW((void)b->publish({PortMapping::Protocol::tcp, "192.0.2.1", 0, 80}), Error);
}

TEST(SlirpBackend, PublishUnpublishAndList) {
  NetworkConfig c = user_config();
  c.publish.push_back({PortMapping::Protocol::tcp, "127.0.0.1", 0, 80});
  auto b = SlirpBackend::create(c);
  PortMapping u = b->publish({PortMapping::Protocol::udp, "127.0.0.1", 0, 53});
  auto v6 = b->publish({PortMapping::Protocol::tcp, "::1", 0, 22});

  auto list = b->published();
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].protocol, PortMapping::Protocol::tcp);
  EXPECT_NE(list[0].host_port, 0);
  EXPECT_EQ(list[0].guest_port, 80);
  EXPECT_EQ(list[1], u);
  EXPECT_NE(u.host_port, 0);
  EXPECT_EQ(list[2], v6);

  // The TCP port is really bound: we cannot bind it ourselves.
  auto [taken, p1] = bound_socket(SOCK_STREAM, list[0].host_port);
  EXPECT_FALSE(taken.valid());

  EXPECT_TRUE(b->unpublish(list[0]));
  EXPECT_FALSE(b->unpublish(list[0]));
  EXPECT_TRUE(b->unpublish(v6));
  ASSERT_EQ(b->published().size(), 1u);
  EXPECT_EQ(b->published()[0], u);
  // Released: now it binds.
  auto [free_again, p2] = bound_socket(SOCK_STREAM, list[0].host_port);
  EXPECT_TRUE(free_again.valid());
  EXPECT_FALSE(b->unpublish({PortMapping::Protocol::tcp, "127.0.0.1", 1, 1}));
}

// A client on the host's loopback and a guest UDP server on a published port, under the default
// policy (host loopback closed): the guest's answers go back to the gateway address and must
// reach the client, though the guest could not start that exchange itself.
TEST(SlirpBackend, PublishedUdpPortAnswersAClientOnTheHostLoopback) {
  auto b = SlirpBackend::create(user_config());
  PortMapping m = b->publish({PortMapping::Protocol::udp, "127.0.0.1", 0, 5353});
  auto [client, client_port] = bound_socket(SOCK_DGRAM);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(m.host_port);
  ASSERT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::send(client.get(), "ping", 4, 0), 4);

  auto arp = wait_rx(*b, [](auto f) { return is_arp_request_for(f, ip4("10.0.2.15")); });
  ASSERT_TRUE(arp) << "no ARP request for 10.0.2.15";
  ASSERT_TRUE(b->send(arp_reply(src_mac(*arp), get32(*arp, 28), ip4("10.0.2.15"))));
  // libslirp drops a datagram that waited on ARP; the client, like any UDP client, sends again.
  ASSERT_EQ(::send(client.get(), "ping", 4, 0), 4);
  auto in = wait_rx(*b, [](auto f) {
    return f.size() >= 42 && get16(f, 12) == 0x0800 && std::to_integer<int>(f[23]) == 17 &&
           get16(f, 36) == 5353;
  });
  ASSERT_TRUE(in) << "the datagram did not reach the guest";
  const uint32_t from_ip = get32(*in, 26);
  const uint16_t from_port = get16(*in, 34);
  EXPECT_EQ(from_ip, ip4("10.0.2.2"));

  const std::string msg = "pong";
  ASSERT_TRUE(b->send(udp4_frame(ip4("10.0.2.15"), 5353, from_ip, from_port, std::as_bytes(std::span(msg)))));
  pollfd p{client.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1) << "the guest's answer did not come back";
  char buf[16];
  EXPECT_EQ(::recv(client.get(), buf, sizeof buf, 0), 4);
  EXPECT_EQ(std::string(buf, 4), "pong");
  EXPECT_EQ(b->stats().denied_udp, 0u);
  EXPECT_EQ(from_port, client_port);  // libslirp shows the guest the client's own port
  // The guest starting an exchange with another host port is still refused.
  ASSERT_TRUE(b->send(udp4_frame(ip4("10.0.2.15"), 5353, from_ip, static_cast<uint16_t>(client_port + 1),
                                 std::as_bytes(std::span(msg)))));
  auto icmp = wait_rx(*b, [](auto f) {
    return f.size() >= 34 && get16(f, 12) == 0x0800 && std::to_integer<int>(f[23]) == 1;
  });
  EXPECT_TRUE(icmp) << "no ICMP unreachable for a datagram the guest started";
  EXPECT_EQ(b->stats().denied_udp, 1u);
}

// Guest -> 10.0.2.2:port over UDP; returns what the test socket received (empty: nothing).
std::string udp_to_host_loopback(bool allow_host_loopback) {
  NetworkConfig c = user_config();
  c.policy.allow_host_loopback = allow_host_loopback;
  auto b = SlirpBackend::create(c);
  auto [sock, port] = bound_socket(SOCK_DGRAM);
  const std::string msg = "hello from the guest";
  auto payload = std::as_bytes(std::span(msg));
  auto frame = udp4_frame(ip4("10.0.2.15"), 40000, ip4("10.0.2.2"), port, payload);
  EXPECT_TRUE(b->send(frame));
  pollfd p{sock.get(), POLLIN, 0};
  if (::poll(&p, 1, allow_host_loopback ? 5000 : 1000) <= 0) return {};
  char buf[256];
  ssize_t n = ::recv(sock.get(), buf, sizeof buf, 0);
  EXPECT_EQ(b->stats().tx_frames, 1u);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

TEST(SlirpBackend, GuestUdpReachesHostLoopbackOnlyWhenAllowed) {
  EXPECT_EQ(udp_to_host_loopback(true), "hello from the guest");
  EXPECT_EQ(udp_to_host_loopback(false), "");
}

// The egress filter sits between the guest and libslirp: a refused UDP datagram never leaves,
// the guest gets an ICMP unreachable instead, and stats() counts it.
TEST(SlirpBackend, EgressPolicyRefusesBeforeLibslirp) {
  NetworkConfig c = user_config();
  c.policy.default_allow = false;
  c.policy.allow_host_loopback = true;  // libslirp would deliver it; only the filter is in the way
  c.policy.rules.push_back({false, "10.0.2.2"});
  auto b = SlirpBackend::create(c);
  auto [sock, port] = bound_socket(SOCK_DGRAM);
  auto frame = udp4_frame(ip4("10.0.2.15"), 40000, ip4("192.0.2.7"), port, bytes({1, 2, 3}));
  ASSERT_TRUE(b->send(frame));
  auto icmp = wait_rx(*b, [](auto f) {
    return f.size() >= 34 && get16(f, 12) == 0x0800 && std::to_integer<int>(f[23]) == 1;
  }, std::chrono::seconds(5));
  ASSERT_TRUE(icmp) << "no ICMP unreachable for a denied datagram";
  EXPECT_EQ(std::to_integer<int>((*icmp)[34]), 3) << "ICMP type";
  EXPECT_EQ(b->stats().denied_udp, 1u);
}

TEST(SlirpBackend, MalformedAndGarbageFramesAreDroppedNotFatal) {
  auto b = SlirpBackend::create(user_config());
  std::vector<std::byte> tiny(5);
  EXPECT_TRUE(b->send(tiny));
  std::vector<std::byte> huge(kMaxFrameLen + 1);
  EXPECT_TRUE(b->send(huge));
  EXPECT_EQ(b->stats().tx_malformed, 2u);
  // Truncated and nonsense IPv4/IPv6/ARP frames go to libslirp, which must cope.
  uint32_t seed = 1;
  for (int i = 0; i < 2000; ++i) {
    std::vector<std::byte> f(14 + (i % 97));
    for (auto& x : f) x = static_cast<std::byte>((seed = seed * 1103515245 + 12345) >> 16);
    put16(f, 12, i % 3 == 0 ? 0x0800 : i % 3 == 1 ? 0x86dd : 0x0806);
    while (!b->send(f)) std::this_thread::yield();
  }
  // Still alive: publishing goes through the same thread.
  EXPECT_NO_THROW((void)b->publish({PortMapping::Protocol::tcp, "127.0.0.1", 0, 80}));
}

TEST(SlirpBackend, FullTxQueueRefusesThenSignalsReady) {
  auto b = SlirpBackend::create(user_config(), QueueLimits{.max_frames = 4, .max_bytes = 1 << 20});
  auto frame = udp4_frame(ip4("10.0.2.15"), 1, ip4("10.0.2.2"), 9, bytes({1, 2, 3}));
  bool refused = false;
  for (int i = 0; i < 200000 && !refused; ++i) refused = !b->send(frame);
  ASSERT_TRUE(refused) << "the backend thread drained 200000 frames faster than we queued them";
  b->count_tx_queue_full();
  pollfd p{b->tx_ready_fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1) << "tx_ready_fd never fired";
  drain_eventfd(b->tx_ready_fd());
  EXPECT_TRUE(b->send(frame));
  EXPECT_EQ(b->stats().tx_queue_full, 1u);
}

TEST(FrameQueues, BoundsAndReadiness) {
  FrameQueues q(QueueLimits{.max_frames = 4, .max_bytes = 1000});
  std::vector<std::byte> f(100);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(q.send(f));
  EXPECT_FALSE(q.send(f));  // frame cap
  pollfd p{q.tx_ready_fd(), POLLIN, 0};
  std::vector<std::byte> out;
  ASSERT_TRUE(q.pop_tx(out));
  EXPECT_EQ(::poll(&p, 1, 0), 0) << "ready before draining below half";
  ASSERT_TRUE(q.pop_tx(out));
  EXPECT_EQ(::poll(&p, 1, 0), 1);
  // Byte cap; an empty queue takes even a frame above it.
  FrameQueues small(QueueLimits{.max_frames = 100, .max_bytes = 150});
  EXPECT_TRUE(small.send(f));
  EXPECT_FALSE(small.send(f));
  std::vector<std::byte> big(500);
  ASSERT_TRUE(small.pop_tx(out));
  EXPECT_TRUE(small.send(big));
  // RX: dropped and counted beyond the cap; signalled once per batch.
  FrameQueues r(QueueLimits{.max_frames = 2, .max_bytes = 1000});
  EXPECT_TRUE(r.push_rx(f));
  EXPECT_TRUE(r.push_rx(f));
  EXPECT_FALSE(r.push_rx(f));
  EXPECT_EQ(r.stats().rx_dropped, 1u);
  pollfd rp{r.rx_ready_fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&rp, 1, 0), 0);
  r.signal_rx();
  EXPECT_EQ(::poll(&rp, 1, 0), 1);
  EXPECT_EQ(r.peek_rx().size(), 100u);
  r.pop_rx();
  r.pop_rx();
  EXPECT_TRUE(r.peek_rx().empty());
  r.pop_rx();  // popping an empty queue is harmless
}

TEST(SlirpBackend, DestroyedWhileBusy) {
  for (int round = 0; round < 3; ++round) {
    NetworkConfig c = user_config();
    c.policy.allow_host_loopback = true;
    auto b = SlirpBackend::create(c);
    auto [sock, port] = bound_socket(SOCK_DGRAM);
    PortMapping m = b->publish({PortMapping::Protocol::tcp, "127.0.0.1", 0, 80});
    std::vector<UniqueFd> clients;
    for (int i = 0; i < 4; ++i) {
      UniqueFd cl(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(m.host_port);
      (void)::connect(cl.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
      clients.push_back(std::move(cl));
    }
    std::atomic<bool> go{true};
    // Nobody takes RX frames, so the RX queue fills too; a sender keeps TX busy.
    const uint16_t sink_port = port;  // structured bindings cannot be captured in C++20
    std::thread sender([&] {
      auto f = udp4_frame(ip4("10.0.2.15"), 5, ip4("10.0.2.2"), sink_port, bytes({1, 2, 3, 4}));
      while (go.load()) (void)b->send(f);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    go = false;
    sender.join();
    b.reset();  // must join the thread promptly with work queued and sockets open
  }
}

// The number of open file descriptors of this process.
size_t open_fds() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

TEST(SlirpBackend, ShutdownClosesPublishedPortsAndRefusesNewOnes) {
  auto b = SlirpBackend::create(user_config());
  PortMapping m = b->publish({PortMapping::Protocol::tcp, "127.0.0.1", 0, 80});
  b->shutdown();
  EXPECT_TRUE(b->published().empty());
  // The port is free again: a client is refused at once instead of hanging on a dead VM.
  auto [again, p] = bound_socket(SOCK_STREAM, m.host_port);
  EXPECT_TRUE(again.valid()) << "host port " << m.host_port << " still bound after shutdown";
  EXPECT_THROW((void)b->publish({PortMapping::Protocol::tcp, "127.0.0.1", 0, 81}), Error);
  b->shutdown();  // idempotent, and the destructor after it
}

TEST(SlirpBackend, ItsThreadTakesNoSignals) {
  // A SIGINT for the process must not be delivered to the backend's thread (whose default action
  // would kill the process before the VM's own signal handling sees it).
  auto b = SlirpBackend::create(user_config());
  bool found = false;
  // The thread names itself when it starts: look until it has.
  for (int i = 0; i < 200 && !found; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
      std::ifstream comm(task.path() / "comm");
      std::string name;
      std::getline(comm, name);
      if (name != "sm-slirp") continue;
      found = true;
      std::ifstream status(task.path() / "status");
      for (std::string line; std::getline(status, line);) {
        if (!line.starts_with("SigBlk:")) continue;
        // Every signal the thread could be sent: SIGINT (2), SIGTERM (15), SIGPIPE (13) among them.
        const unsigned long long mask = std::stoull(line.substr(7), nullptr, 16);
        for (int sig : {SIGINT, SIGTERM, SIGPIPE, SIGHUP, SIGUSR1})
          EXPECT_TRUE(mask & (1ull << (sig - 1))) << "signal " << sig << " unblocked: " << line;
      }
    }
  }
  EXPECT_TRUE(found) << "no sm-slirp thread";
}

TEST(SlirpBackend, AGuestCannotOpenMoreHostSocketsThanItsCap) {
  // Each UDP source port of the guest is a socket of this process; past the cap new flows are
  // refused with ICMP unreachable, so a hostile guest cannot take the process's descriptors.
  NetworkConfig c = user_config();
  c.policy.allow_host_loopback = true;
  auto b = SlirpBackend::create(c);
  auto [sink, port] = bound_socket(SOCK_DGRAM);
  const size_t before = open_fds();
  const size_t cap = FlowTable::default_max_flows();
  const size_t tries = cap + 200;
  for (size_t i = 0; i < tries; ++i) {
    auto f = udp4_frame(ip4("10.0.2.15"), static_cast<uint16_t>(10000 + i), ip4("10.0.2.2"), port, bytes({1}));
    while (!b->send(f)) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
       b->stats().flows_refused < tries - cap && std::chrono::steady_clock::now() < deadline;)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(b->stats().flows_refused, tries - cap);
  EXPECT_LE(open_fds(), before + cap + 8) << "cap " << cap;
  EXPECT_GE(open_fds(), before + cap / 2) << "the flows were never opened: the test proves nothing";
}

TEST(MakeBackend, ModesAndErrors) {
  NetworkConfig c = user_config();
  c.mode = Mode::none;
  EXPECT_EQ(make_backend(c), nullptr);
  c.mode = Mode::user;
  auto b = make_backend(c);
  ASSERT_NE(b, nullptr);
  EXPECT_NE(dynamic_cast<SlirpBackend*>(b.get()), nullptr);
  c.mode = Mode::tap;
  c.tap_name = "smt0";
  c.publish.push_back({PortMapping::Protocol::tcp, "0.0.0.0", 8080, 80});
  try {
    (void)make_backend(c);
    FAIL() << "tap with published ports";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ports cannot be published with --network tap"), std::string::npos);
  }
}

}  // namespace
}  // namespace sm::net
