// policy.h: longest prefix, domains and subdomains, learned addresses and their TTLs on a fake
// clock, defaults, and rule validation.
#include "net/policy.h"

#include <gtest/gtest.h>

#include "supermachine/error.h"

namespace sm::net {
namespace {

using namespace std::chrono_literals;

IpAddr ip(const char* s) { return *IpAddr::parse(s); }

EgressPolicy make(bool default_allow, std::vector<Rule> rules) {
  EgressPolicy p;
  p.default_allow = default_allow;
  p.rules = std::move(rules);
  return p;
}

struct FakeClock {
  std::chrono::steady_clock::time_point t{std::chrono::hours(1000)};
  Policy::Clock fn() {
    return [this] { return t; };
  }
};

TEST(Policy, LongestPrefixWins) {
  const Policy p(make(true, {{false, "10.0.0.0/8"}, {true, "10.1.0.0/16"}, {false, "10.1.2.3"},
                             {false, "fc00::/7"}, {true, "fd00::1"}}),
                 {});
  EXPECT_FALSE(p.allow_ip(ip("10.9.9.9")));
  EXPECT_TRUE(p.allow_ip(ip("10.1.9.9")));
  EXPECT_FALSE(p.allow_ip(ip("10.1.2.3")));
  EXPECT_TRUE(p.allow_ip(ip("11.0.0.1")));  // default
  EXPECT_FALSE(p.allow_ip(ip("fd00::2")));
  EXPECT_TRUE(p.allow_ip(ip("fd00::1")));
  EXPECT_TRUE(p.allow_ip(ip("2001:db8::1")));
  // IPv4-mapped IPv6 is judged as IPv4.
  EXPECT_FALSE(p.allow_ip(ip("::ffff:10.9.9.9")));
  EXPECT_TRUE(p.allow_ip(ip("::ffff:10.1.9.9")));
}

TEST(Policy, MappedRulesAreTheirIpv4Rules) {
  // Destinations are judged unmapped, so a rule written mapped must be too, or it never matches.
  const Policy p(make(true, {{false, "::ffff:10.0.0.0/104"}, {false, "::ffff:192.0.2.7"}}), {});
  EXPECT_FALSE(p.allow_ip(ip("10.9.9.9")));
  EXPECT_FALSE(p.allow_ip(ip("::ffff:10.9.9.9")));
  EXPECT_FALSE(p.allow_ip(ip("192.0.2.7")));
  EXPECT_TRUE(p.allow_ip(ip("11.0.0.1")));
  const auto c = Policy::parse_cidr("::ffff:10.1.2.3/104");
  ASSERT_TRUE(c);
  EXPECT_FALSE(c->net.v6);
  EXPECT_EQ(c->net.str(), "10.0.0.0");
  EXPECT_EQ(c->bits, 8u);
}

TEST(Policy, TieIsDenyAndZeroPrefixMatchesAll) {
  const Policy p(make(false, {{true, "0.0.0.0/0"}, {true, "1.2.3.0/24"}, {false, "1.2.3.0/24"}}), {});
  EXPECT_TRUE(p.allow_ip(ip("8.8.8.8")));
  EXPECT_FALSE(p.allow_ip(ip("1.2.3.4")));
  EXPECT_FALSE(p.allow_ip(ip("2001:db8::1")));  // /0 of IPv4 says nothing about IPv6
}

TEST(Policy, HostBitsAreMasked) {
  const Policy p(make(true, {{false, "10.1.2.3/8"}}), {});
  EXPECT_FALSE(p.allow_ip(ip("10.200.0.1")));
  const auto c = Policy::parse_cidr("fd12:3456::1/20");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->net.str(), "fd12:3000::");
  EXPECT_EQ(c->bits, 20u);
}

TEST(Policy, DomainsAndSubdomains) {
  const Policy p(make(false, {{true, "pypi.org"}, {true, "*.pythonhosted.org"},
                              {false, "evil.pypi.org"}, {true, "Ok.Evil.Pypi.Org."}}),
                 {});
  EXPECT_TRUE(p.allow_name("pypi.org"));
  EXPECT_TRUE(p.allow_name("www.pypi.org"));
  EXPECT_TRUE(p.allow_name("pypi.org."));
  EXPECT_FALSE(p.allow_name("notpypi.org"));
  EXPECT_FALSE(p.allow_name("org"));
  EXPECT_TRUE(p.allow_name("pythonhosted.org"));  // "*." is the same rule
  EXPECT_TRUE(p.allow_name("files.pythonhosted.org"));
  EXPECT_FALSE(p.allow_name("evil.pypi.org"));
  EXPECT_FALSE(p.allow_name("a.evil.pypi.org"));
  EXPECT_TRUE(p.allow_name("ok.evil.pypi.org"));
  EXPECT_FALSE(p.allow_name("example.com"));
  EXPECT_FALSE(p.allow_name(""));
  EXPECT_TRUE(p.has_domain_rules());
}

TEST(Policy, DefaultAllowAndDeny) {
  const Policy allow(make(true, {}), {});
  EXPECT_TRUE(allow.allow_ip(ip("1.1.1.1")));
  EXPECT_TRUE(allow.allow_name("anything.example"));
  EXPECT_FALSE(allow.has_rules());
  const Policy deny(make(false, {}), {});
  EXPECT_FALSE(deny.allow_ip(ip("1.1.1.1")));
  EXPECT_FALSE(deny.allow_ip(ip("2606:4700::1111")));
  EXPECT_FALSE(deny.allow_name("anything.example"));
}

TEST(Policy, LearnedAddressesExpireAfterTheirTtl) {
  FakeClock clock;
  Policy p(make(false, {{true, "pypi.org"}, {false, "1.2.3.4"}}), clock.fn());
  p.learn("pypi.org", ip("151.101.0.223"), 60);
  p.learn("evil.example", ip("6.6.6.6"), 60);  // a denied name: not learned
  p.learn("www.pypi.org", ip("1.2.3.4"), 60);  // learned, but the CIDR rule still wins
  EXPECT_TRUE(p.allow_ip(ip("151.101.0.223")));
  EXPECT_FALSE(p.allow_ip(ip("6.6.6.6")));
  EXPECT_FALSE(p.allow_ip(ip("1.2.3.4")));
  clock.t += 59s;
  EXPECT_TRUE(p.allow_ip(ip("151.101.0.223")));
  clock.t += 1s;
  EXPECT_FALSE(p.allow_ip(ip("151.101.0.223")));
}

TEST(Policy, TtlIsClamped) {
  FakeClock clock;
  Policy p(make(false, {{true, "a.org"}}), clock.fn());
  p.learn("a.org", ip("1.1.1.1"), 0);        // -> 5 s
  p.learn("a.org", ip("2.2.2.2"), 86400 * 7);  // -> 1 h
  clock.t += 4s;
  EXPECT_TRUE(p.allow_ip(ip("1.1.1.1")));
  clock.t += 1s;
  EXPECT_FALSE(p.allow_ip(ip("1.1.1.1")));
  clock.t += 3600s - 5s - 1s;
  EXPECT_TRUE(p.allow_ip(ip("2.2.2.2")));
  clock.t += 1s;
  EXPECT_FALSE(p.allow_ip(ip("2.2.2.2")));
  // A re-learn extends, a shorter answer does not shorten.
  p.learn("a.org", ip("3.3.3.3"), 100);
  p.learn("a.org", ip("3.3.3.3"), 10);
  clock.t += 50s;
  EXPECT_TRUE(p.allow_ip(ip("3.3.3.3")));
}

TEST(Policy, LearnedTableIsCapped) {
  FakeClock clock;
  Policy p(make(false, {}), clock.fn());
  Policy open(make(false, {{true, "x.org"}}), clock.fn());
  for (uint32_t i = 0; i < Policy::kMaxLearned + 100; ++i) {
    IpAddr a;
    a.b[0] = 20;
    a.b[1] = static_cast<uint8_t>(i >> 16);
    a.b[2] = static_cast<uint8_t>(i >> 8);
    a.b[3] = static_cast<uint8_t>(i);
    open.learn("x.org", a, 60 + i % 100);
  }
  EXPECT_LE(open.learned_count(), Policy::kMaxLearned);
  EXPECT_GT(open.learned_count(), Policy::kMaxLearned / 2);
  // The newest (longest-lived) survive eviction.
  EXPECT_TRUE(open.allow_ip(ip("20.0.64.99")));  // i = 16483, ttl 143 s
  p.learn("x.org", ip("1.1.1.1"), 60);  // default deny, no rule: the name is denied
  EXPECT_EQ(p.learned_count(), 0u);
  Policy allow(make(true, {}), clock.fn());
  allow.learn("x.org", ip("1.1.1.1"), 60);  // default allow: nothing to learn
  EXPECT_EQ(allow.learned_count(), 0u);
}

TEST(Policy, ValidationNamesTheRule) {
  auto msg = [](bool allow, const char* target) -> std::string {
    try {
      Policy p(make(true, {{allow, target}}), {});
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_EQ(msg(true, "10.0.0/8"), "--allow 10.0.0/8: not a CIDR or domain name");
  EXPECT_EQ(msg(false, "10.0.0.0/33"), "--deny 10.0.0.0/33: not a CIDR or domain name");
  EXPECT_EQ(msg(true, "::1/129"), "--allow ::1/129: not a CIDR or domain name");
  EXPECT_EQ(msg(true, "10.0.0.0/"), "--allow 10.0.0.0/: not a CIDR or domain name");
  EXPECT_EQ(msg(true, "10.0.0.0/8x"), "--allow 10.0.0.0/8x: not a CIDR or domain name");
  EXPECT_EQ(msg(true, "1.2.3.4.5"), "--allow 1.2.3.4.5: not a CIDR or domain name");
  EXPECT_EQ(msg(true, "a..b"), "--allow a..b: not a CIDR or domain name");
  EXPECT_EQ(msg(true, "exa mple.com"), "--allow exa mple.com: not a CIDR or domain name");
  EXPECT_EQ(msg(true, ""), "--allow : not a CIDR or domain name");
  EXPECT_EQ(msg(true, "*."), "--allow *.: not a CIDR or domain name");
  EXPECT_EQ(msg(true, std::string(64, 'a').append(".com").c_str()).substr(0, 8), "--allow ");
  EXPECT_EQ(msg(true, "pypi.org"), "no error");
  EXPECT_EQ(msg(true, "*.pythonhosted.org"), "no error");
  EXPECT_EQ(msg(true, "localhost"), "no error");
  EXPECT_EQ(msg(true, "fc00::/7"), "no error");
  EXPECT_EQ(msg(true, "192.168.1.1"), "no error");
}

}  // namespace
}  // namespace sm::net
