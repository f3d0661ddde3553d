// A VM's network, as configured before it starts: the mode, the address plan, published ports
// and the egress policy. Plain data; backends (slirp_backend.h, tap_backend.h) are built from it
// with make_backend() (make_backend.h).
//
// Address plan (user mode; libslirp's defaults, docs/networking.md):
//   IPv4 10.0.2.0/24: guest 10.0.2.15, gateway 10.0.2.2 (also the host's loopback, when allowed),
//        DNS 10.0.2.3 (forwarded to the host's resolvers)
//   IPv6 fec0::/64:   guest fec0::15, gateway fec0::2, DNS fec0::3
//   MTU 65520 (the link is virtual; large frames cut per-packet costs), guest MAC 52:54:00:12:34:56.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "net/backend.h"
#include "supermachine/network.h"

namespace sm::net {

enum class Mode { none, user, tap };

// One --allow / --deny rule: a CIDR ("10.0.0.0/8", "::1/128", a bare address is /32 or /128) or
// a domain ("pypi.org": the name and every name under it; "*.example.com" is the same as
// "example.com").
struct Rule {
  bool allow = true;
  std::string target;

  bool operator==(const Rule&) const = default;
};

struct EgressPolicy {
  bool default_allow = true;          // --egress allow|deny
  std::vector<Rule> rules;            // in the order given; the most specific match wins (see policy.h)
  bool allow_host_loopback = false;   // --allow-host-loopback: the gateway address reaches the host's 127.0.0.1

  bool operator==(const EgressPolicy&) const = default;
};

struct AddressPlan {
  std::string guest_ipv4 = "10.0.2.15";
  unsigned ipv4_prefix = 24;
  std::string gateway_ipv4 = "10.0.2.2";
  std::string dns_ipv4 = "10.0.2.3";
  std::string guest_ipv6 = "fec0::15";
  unsigned ipv6_prefix = 64;
  std::string gateway_ipv6 = "fec0::2";
  std::string dns_ipv6 = "fec0::3";
  unsigned mtu = 65520;
  std::array<uint8_t, 6> guest_mac{0x52, 0x54, 0x00, 0x12, 0x34, 0x56};

  bool operator==(const AddressPlan&) const = default;
};

struct NetworkConfig {
  Mode mode = Mode::user;
  std::string tap_name;                 // Mode::tap
  AddressPlan plan;
  std::vector<PortMapping> publish;     // -p, bound before the VM starts
  EgressPolicy policy;
  std::vector<std::string> dns;         // --dns: the guest's nameservers instead of the plan's DNS address
  std::vector<std::pair<std::string, std::string>> extra_hosts;  // --add-host NAME:IP

  bool operator==(const NetworkConfig&) const = default;
};

// The library's public configuration (include/supermachine/network.h) as the VMM takes it.
[[nodiscard]] NetworkConfig from_public(const sm::NetworkConfig& c);
// Throws sm::Error for settings that cannot work or would open a hole: a --dns address that is
// not an IP literal, or one inside the user-mode NAT's own networks other than its DNS address
// (there it would reach the host's loopback, e.g. --dns 10.0.2.2).
void validate(const NetworkConfig& c);
// The nameservers the guest's /etc/resolv.conf lists (and the egress filter watches): --dns, else
// the NAT's DNS address in user mode, else none.
[[nodiscard]] std::vector<std::string> guest_nameservers(const NetworkConfig& c);

}  // namespace sm::net
