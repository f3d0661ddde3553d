// The egress policy as decisions: --allow/--deny rules (config.h: EgressPolicy) turned into
// "may the guest reach this address / resolve this name?".
//
//   Address: the CIDR rule with the longest matching prefix wins (a tie between an allow and a
//     deny of the same prefix: deny). Else, if the address was learned from a DNS answer for an
//     allowed name (learn()) and that answer's TTL (clamped to [5 s, 1 h]) has not run out:
//     allow. Else the default. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are judged as the
//     IPv4 address they carry, since the host's stack sends them as IPv4.
//   Name: the domain rule with the longest matching name wins ("pypi.org" matches pypi.org and
//     every name under it; "*.pypi.org" is the same rule; a tie: deny). Else the default.
//
// Host loopback, the gateway, DNS and link traffic are the filter's business (filter.h), not
// this class's: here is only what the rules say.
//
// Rules are validated at construction: sm::Error "--allow 10.0.0/8: not a CIDR or domain name".
// A CIDR with host bits set ("10.1.2.3/8") is accepted as its network (10.0.0.0/8).
//
// Learned addresses are capped (kMaxLearned); past the cap the expired ones, then the eighth
// closest to expiry, are forgotten, so a guest resolving endless names costs bounded memory.
// Nothing is learned under default allow, where it would change no decision.
//
// Threads: not thread-safe; the filter's one backend thread owns it. The clock is injectable
// for tests.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "net/config.h"
#include "net/packet.h"

namespace sm::net {

class Policy {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  static constexpr std::chrono::seconds kMinTtl{5};
  static constexpr std::chrono::seconds kMaxTtl{3600};
  static constexpr size_t kMaxLearned = 16384;

  // clock: steady_clock::now when empty.
  explicit Policy(const EgressPolicy& policy, Clock clock = {});

  [[nodiscard]] bool allow_ip(const IpAddr& ip) const;
  [[nodiscard]] bool allow_name(std::string_view name) const;
  // Remembers that `name` resolved to `addr` for `ttl_s` seconds, if the default is deny and
  // allow_name(name); otherwise does nothing (a denied name's addresses stay under the CIDR rules and the default).
  void learn(std::string_view name, const IpAddr& addr, uint32_t ttl_s);

  [[nodiscard]] bool default_allow() const { return default_allow_; }
  [[nodiscard]] bool has_rules() const { return !cidrs_.empty() || !domains_.empty(); }
  [[nodiscard]] bool has_domain_rules() const { return !domains_.empty(); }
  [[nodiscard]] size_t learned_count() const { return learned_.size(); }
  // The clock TTLs are measured on.
  [[nodiscard]] std::chrono::steady_clock::time_point now() const;

  // "10.0.0.0/8", "::1", ... -> network + prefix length; nullopt when not a CIDR.
  struct Cidr {
    IpAddr net;
    unsigned bits = 0;
  };
  [[nodiscard]] static std::optional<Cidr> parse_cidr(std::string_view text);
  // "*.Example.COM." -> "example.com"; nullopt when not a domain name.
  [[nodiscard]] static std::optional<std::string> parse_domain(std::string_view text);

 private:
  struct CidrRule {
    Cidr cidr;
    bool allow;
  };
  struct DomainRule {
    std::string name;
    bool allow;
  };

  bool default_allow_;
  std::vector<CidrRule> cidrs_;
  std::vector<DomainRule> domains_;
  Clock clock_;
  std::map<IpAddr, std::chrono::steady_clock::time_point> learned_;  // address -> expiry
};

}  // namespace sm::net
