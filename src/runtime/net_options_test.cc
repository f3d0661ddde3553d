#include "runtime/net_options.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace sm::runtime {
namespace {

using P = net::PortMapping::Protocol;

TEST(NetOptions, PublishForms) {
  auto m = parse_publish("80");
  EXPECT_EQ(m.guest_port, 80);
  EXPECT_EQ(m.host_port, 0);
  EXPECT_EQ(m.host_ip, "0.0.0.0");
  EXPECT_EQ(m.protocol, P::tcp);
  m = parse_publish("18080:80");
  EXPECT_EQ(m.host_port, 18080);
  EXPECT_EQ(m.guest_port, 80);
  m = parse_publish("127.0.0.1:5353:53/udp");
  EXPECT_EQ(m.host_ip, "127.0.0.1");
  EXPECT_EQ(m.host_port, 5353);
  EXPECT_EQ(m.guest_port, 53);
  EXPECT_EQ(m.protocol, P::udp);
  m = parse_publish("127.0.0.1::80");
  EXPECT_EQ(m.host_port, 0);
  EXPECT_EQ(m.host_ip, "127.0.0.1");
  m = parse_publish("[::1]:8080:80/tcp");
  EXPECT_EQ(m.host_ip, "::1");
  EXPECT_EQ(m.host_port, 8080);
}

TEST(NetOptions, PublishRefusals) {
  for (const char* bad : {"", "0", "65536", "http", "1:2:3:4", "x:80", "localhost:80:80", "80/sctp", "[::1]80",
                          "[::1]:80", "8080:", ":80:80x"}) {
    EXPECT_THROW((void)parse_publish(bad), Error) << bad;
  }
  try {
    (void)parse_publish("80/sctp");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[HOST_PORT:]GUEST_PORT"), std::string::npos) << e.what();
  }
}

TEST(NetOptions, AddHost) {
  net::AddressPlan plan;
  EXPECT_EQ(parse_add_host("db:10.1.2.3", plan), (std::pair<std::string, std::string>{"db", "10.1.2.3"}));
  EXPECT_EQ(parse_add_host("v6:fd00::1", plan).second, "fd00::1");
  EXPECT_EQ(parse_add_host("h:host-gateway", plan).second, "10.0.2.2");
  EXPECT_THROW((void)parse_add_host("db", plan), Error);
  EXPECT_THROW((void)parse_add_host("db:notanip", plan), Error);
  EXPECT_THROW((void)parse_add_host("d b:1.2.3.4", plan), Error);
  EXPECT_THROW((void)parse_add_host(":1.2.3.4", plan), Error);
}

TEST(NetOptions, ModeAndEgress) {
  net::NetworkConfig c;
  parse_network_mode("none", c);
  EXPECT_EQ(c.mode, net::Mode::none);
  parse_network_mode("tap:tap0", c);
  EXPECT_EQ(c.mode, net::Mode::tap);
  EXPECT_EQ(c.tap_name, "tap0");
  parse_network_mode("user", c);
  EXPECT_EQ(c.mode, net::Mode::user);
  EXPECT_THROW(parse_network_mode("host", c), Error);
  EXPECT_THROW(parse_network_mode("tap:", c), Error);
  EXPECT_TRUE(parse_egress("allow"));
  EXPECT_FALSE(parse_egress("deny"));
  EXPECT_THROW((void)parse_egress("maybe"), Error);
}

TEST(NetOptions, FormatPort) {
  net::PortMapping m;
  m.host_port = 18080;
  m.guest_port = 80;
  EXPECT_EQ(format_port(m), "80/tcp -> 0.0.0.0:18080");
  m.host_ip = "::1";
  m.protocol = P::udp;
  EXPECT_EQ(format_port(m), "80/udp -> [::1]:18080");
}

}  // namespace
}  // namespace sm::runtime
