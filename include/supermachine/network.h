// A VM's network, as the library's users configure and observe it (docs/networking.md).
//
//   sm::VmConfig c;
//   c.network.publish.push_back({.host_port = 8080, .guest_port = 80});  // -p 8080:80
//   c.network.egress_allow = false;                                      // --egress deny
//   c.network.allow = {"pypi.org", "files.pythonhosted.org"};            // --allow ...
//
// Included by supermachine.h.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sm {

// One published port: HOST_IP:HOST_PORT on the host forwarded to GUEST_PORT in the VM
// (`-p [HOST_IP:][HOST_PORT:]GUEST_PORT[/udp]`).
struct PortMapping {
  enum class Protocol { tcp, udp };
  Protocol protocol = Protocol::tcp;
  std::string host_ip = "0.0.0.0";  // an IPv4 or IPv6 literal of this host
  std::uint16_t host_port = 0;      // 0: a free port is picked (the VM's ports() tell which)
  std::uint16_t guest_port = 0;

  bool operator==(const PortMapping&) const = default;
};

// A VM's network counters (monotonic while it runs).
struct NetStats {
  std::uint64_t tx_frames = 0;      // guest -> outside, passed on
  std::uint64_t tx_bytes = 0;
  std::uint64_t rx_frames = 0;      // outside -> guest, delivered into guest buffers
  std::uint64_t rx_bytes = 0;
  std::uint64_t tx_malformed = 0;   // frames the device dropped: bad header, length or checksum request
  std::uint64_t tx_queue_full = 0;  // times the guest had to wait for the backend
  std::uint64_t rx_dropped = 0;     // frames for the guest dropped (queue full, too big for its buffers)
  std::uint64_t denied_tcp = 0;     // refused by the egress policy, answered with a TCP reset
  std::uint64_t denied_udp = 0;     // refused, answered with ICMP unreachable
  std::uint64_t denied_icmp = 0;    // refused, answered with ICMP unreachable
  std::uint64_t denied_dns = 0;     // names answered NXDOMAIN by the policy
  std::uint64_t denied_other = 0;   // other frames the policy dropped (other protocols, unparsable)
  std::uint64_t flows_refused = 0;  // new connections, UDP flows and pings refused at the VM's cap on
                                    // open ones (each costs the host a socket; docs/networking.md)

  bool operator==(const NetStats&) const = default;
};

struct NetworkConfig {
  enum class Mode {
    none,  // loopback only
    user,  // user-mode NAT (libslirp) in the VMM: no root, nothing changed on the host
    tap,   // a TAP interface the caller made (tap_name), e.g. on their own bridge
  };
  Mode mode = Mode::user;
  std::string tap_name;
  std::vector<PortMapping> publish;  // bound before the VM starts (a taken port is an error then)
  // Egress policy, enforced by the VMM on every connection and datagram the guest sends.
  bool egress_allow = true;          // the default for what no rule matches
  std::vector<std::string> allow;    // CIDRs ("10.1.0.0/16", "2001:db8::1") or domains ("pypi.org")
  std::vector<std::string> deny;
  bool allow_host_loopback = false;  // the gateway address reaches the host's 127.0.0.1
  std::vector<std::string> dns;      // the guest's nameservers; empty: the NAT's DNS (the host's resolvers)
  std::vector<std::pair<std::string, std::string>> extra_hosts;  // /etc/hosts entries (name, ip)

  bool operator==(const NetworkConfig&) const = default;
};

}  // namespace sm
