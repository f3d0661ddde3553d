// TapBackend on a real TAP interface, when this host lets us make one (CAP_NET_ADMIN and
// /dev/net/tun; skipped otherwise). The other end is an AF_PACKET socket on the interface.
#include "net/tap_backend.h"

#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>

#include "common/error.h"
#include "common/unique_fd.h"
#include "net/net_test_frames.h"

namespace sm::net {
namespace {

using namespace sm::net::testing;

constexpr uint16_t kTestEtherType = 0x88b5;  // IEEE 802 local experimental

std::unique_ptr<TapBackend> make_tap(const std::string& name, const EgressPolicy& policy = {}) {
  NetworkConfig c;
  c.mode = Mode::tap;
  c.tap_name = name;
  c.policy = policy;
  return TapBackend::create(c);
}

// Brings the interface up and opens a packet socket on it.
UniqueFd packet_socket(const std::string& name) {
  UniqueFd ctl(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  if (::ioctl(ctl.get(), SIOCGIFFLAGS, &ifr) != 0) return {};
  ifr.ifr_flags |= IFF_UP;
  if (::ioctl(ctl.get(), SIOCSIFFLAGS, &ifr) != 0) return {};
  UniqueFd s(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL)));
  if (!s) return {};
  sockaddr_ll ll{};
  ll.sll_family = AF_PACKET;
  ll.sll_protocol = htons(ETH_P_ALL);
  ll.sll_ifindex = static_cast<int>(::if_nametoindex(name.c_str()));
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&ll), sizeof ll) != 0) return {};
  return s;
}

std::vector<std::byte> test_frame(uint8_t tag) {
  auto f = eth({0x02, 0, 0, 0, 0, 0x01}, kGuestMac, kTestEtherType);
  f.resize(60, static_cast<std::byte>(tag));
  return f;
}

// A UDP datagram from the guest to a documentation address, marked by its source port.
constexpr uint16_t kMarkPort = 4242;
std::vector<std::byte> guest_udp() {
  return udp4_frame(ip4("10.0.2.15"), kMarkPort, ip4("192.0.2.1"), 9, bytes({1, 2, 3, 4}));
}

bool is_marked_udp(std::span<const std::byte> f) {
  return f.size() >= 42 && get16(f, 12) == 0x0800 && std::to_integer<int>(f[23]) == 17 &&
         get16(f, 34) == kMarkPort;
}

// The next frame the packet socket sees that match() accepts (the kernel sends its own too).
std::optional<std::vector<std::byte>> recv_frame(int s, int timeout_ms,
                                                 bool (*match)(std::span<const std::byte>)) {
  for (;;) {
    pollfd p{s, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return std::nullopt;
    std::vector<std::byte> buf(2048);
    ssize_t n = ::recv(s, buf.data(), buf.size(), 0);
    if (n >= 0 && match(std::span(buf).first(static_cast<size_t>(n)))) {
      buf.resize(static_cast<size_t>(n));
      return buf;
    }
  }
}

std::string tap_name() { return fmt::format("smt{}", ::getpid() % 100000); }

TEST(TapBackend, FramesBothWays) {
  std::unique_ptr<TapBackend> b;
  try {
    b = make_tap(tap_name());
  } catch (const Error& e) {
    GTEST_SKIP() << "no TAP interface here: " << e.what();
  }
  UniqueFd s = packet_socket(tap_name());
  if (!s) GTEST_SKIP() << "cannot bring up or watch " << tap_name() << ": " << std::strerror(errno);

  // Guest -> wire.
  auto out = guest_udp();
  ASSERT_TRUE(b->send(out));
  auto got = recv_frame(s.get(), 5000, is_marked_udp);
  ASSERT_TRUE(got) << "the frame never reached the interface";
  EXPECT_EQ(*got, out);

  // Wire -> guest.
  auto in = test_frame(0xbb);
  ASSERT_EQ(::send(s.get(), in.data(), in.size(), 0), static_cast<ssize_t>(in.size())) << std::strerror(errno);
  auto rx = wait_rx(*b, [](auto f) { return f.size() >= 14 && get16(f, 12) == kTestEtherType; },
                    std::chrono::seconds(5));
  ASSERT_TRUE(rx) << "the frame never reached the guest side";
  EXPECT_EQ(*rx, in);
  EXPECT_EQ(b->stats().tx_frames, 1u);
}

TEST(TapBackend, EgressPolicyAppliesToGuestFrames) {
  std::unique_ptr<TapBackend> b;
  EgressPolicy deny;
  deny.default_allow = false;
  try {
    b = make_tap(tap_name(), deny);
  } catch (const Error& e) {
    GTEST_SKIP() << "no TAP interface here: " << e.what();
  }
  UniqueFd s = packet_socket(tap_name());
  if (!s) GTEST_SKIP() << "cannot bring up or watch " << tap_name();
  ASSERT_TRUE(b->send(guest_udp()));
  EXPECT_FALSE(recv_frame(s.get(), 500, is_marked_udp)) << "a denied frame reached the interface";
  EXPECT_EQ(b->stats().denied_udp, 1u);
  // The guest is told instead: an ICMP unreachable.
  auto icmp = wait_rx(*b, [](auto f) {
    return f.size() >= 35 && get16(f, 12) == 0x0800 && std::to_integer<int>(f[23]) == 1;
  }, std::chrono::seconds(5));
  ASSERT_TRUE(icmp);
  EXPECT_EQ(std::to_integer<int>((*icmp)[34]), 3);
}

TEST(TapBackend, PublishIsRefusedAndErrorsNameTheInterface) {
  std::unique_ptr<TapBackend> b;
  try {
    b = make_tap(tap_name());
  } catch (const Error& e) {
    // Whatever went wrong, the message names the interface.
    EXPECT_NE(std::string(e.what()).find(tap_name()), std::string::npos) << e.what();
    GTEST_SKIP() << "no TAP interface here: " << e.what();
  }
  try {
    (void)b->publish({PortMapping::Protocol::tcp, "0.0.0.0", 8080, 80});
    FAIL() << "publish succeeded on TAP";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ports cannot be published with --network tap"), std::string::npos);
  }
  EXPECT_TRUE(b->published().empty());
  // The name is taken by b now: a second attach fails and says which interface.
  try {
    (void)make_tap(tap_name());
    FAIL() << "attached twice";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(tap_name()), std::string::npos) << e.what();
  }
}

TEST(TapBackend, BadNamesAreErrors) {
  EXPECT_THROW((void)make_tap(""), Error);
  EXPECT_THROW((void)make_tap("a-name-much-too-long-for-linux"), Error);
  EXPECT_THROW((void)make_tap("a/b"), Error);
}

}  // namespace
}  // namespace sm::net
