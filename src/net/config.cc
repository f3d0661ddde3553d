#include "net/config.h"

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

std::vector<std::string> guest_nameservers(const NetworkConfig& c) {
  if (!c.dns.empty()) return c.dns;
  if (c.mode == Mode::user) return {c.plan.dns_ipv4};
  return {};
}

}  // namespace sm::net
