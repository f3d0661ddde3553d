#include "net/config.h"

#include <fmt/format.h>

#include "common/error.h"
#include "net/packet.h"

namespace sm::net {

NetworkConfig from_public(const sm::NetworkConfig& c) {
  NetworkConfig n;
  switch (c.mode) {
    case sm::NetworkConfig::Mode::none: n.mode = Mode::none; break;
    case sm::NetworkConfig::Mode::user: n.mode = Mode::user; break;
    case sm::NetworkConfig::Mode::tap: n.mode = Mode::tap; break;
  }
  n.tap_name = c.tap_name;
  n.publish = c.publish;
  n.policy.default_allow = c.egress_allow;
  for (const auto& a : c.allow) n.policy.rules.push_back({true, a});
  for (const auto& d : c.deny) n.policy.rules.push_back({false, d});
  n.policy.allow_host_loopback = c.allow_host_loopback;
  n.dns = c.dns;
  n.extra_hosts = c.extra_hosts;
  return n;
}

void validate(const NetworkConfig& c) {
  if (c.mode == Mode::none) return;
  const auto guest4 = IpAddr::parse(c.plan.guest_ipv4), guest6 = IpAddr::parse(c.plan.guest_ipv6);
  const auto dns4 = IpAddr::parse(c.plan.dns_ipv4), dns6 = IpAddr::parse(c.plan.dns_ipv6);
  for (const auto& d : c.dns) {
    auto a = IpAddr::parse(d);
    if (!a) throw Error(fmt::format("bad --dns '{}': give the server's IP address", d));
    const IpAddr ip = a->unmapped();
    if (c.mode != Mode::user || ip == dns4 || ip == dns6) continue;
    const bool in_nat = (guest4 && ip.in_prefix(*guest4, c.plan.ipv4_prefix)) ||
                        (guest6 && ip.in_prefix(*guest6, c.plan.ipv6_prefix));
    if (in_nat)
      throw Error(fmt::format("bad --dns '{}': inside the NAT's own network, where only {} answers DNS (the "
                              "host's resolvers); other addresses there are the host itself",
                              d, c.plan.dns_ipv4));
  }
}

std::vector<std::string> guest_nameservers(const NetworkConfig& c) {
  if (!c.dns.empty()) return c.dns;
  if (c.mode == Mode::user) return {c.plan.dns_ipv4};
  return {};
}

}  // namespace sm::net
