// config.h: validate() and what the guest is told (guest_nameservers).
#include "net/config.h"

#include <gtest/gtest.h>

#include "supermachine/error.h"

namespace sm::net {
namespace {

TEST(NetworkConfigValidate, DnsInsideTheNatIsOnlyItsDnsAddress) {
  NetworkConfig c;
  c.dns = {"10.0.2.3", "fec0::3", "192.0.2.53", "2001:db8::53"};
  EXPECT_NO_THROW(validate(c));
  for (const char* bad : {"10.0.2.2", "10.0.2.15", "10.0.2.99", "fec0::2", "::ffff:10.0.2.2"}) {
    c.dns = {bad};
    try {
      validate(c);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("inside the NAT's own network"), std::string::npos) << e.what();
    }
  }
  c.dns = {"dns.example"};
  EXPECT_THROW(validate(c), Error);
  // With TAP there is no NAT: any address is the user's business.
  c.mode = Mode::tap;
  c.dns = {"10.0.2.2"};
  EXPECT_NO_THROW(validate(c));
}

TEST(NetworkConfigValidate, NameserversTheGuestIsGiven) {
  NetworkConfig c;
  EXPECT_EQ(guest_nameservers(c), std::vector<std::string>{"10.0.2.3"});
  c.dns = {"192.0.2.53"};
  EXPECT_EQ(guest_nameservers(c), std::vector<std::string>{"192.0.2.53"});
  c = NetworkConfig{};
  c.mode = Mode::none;
  EXPECT_TRUE(guest_nameservers(c).empty());
}

}  // namespace
}  // namespace sm::net
