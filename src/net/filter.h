// EgressFilter: the egress policy (policy.h) enforced on every frame the guest sends, before a
// backend hands it to libslirp or a TAP device. docs/networking-policy.md describes it for users.
//
// outbound() judges one guest frame:
//   pass    hand it on;
//   drop    discard it (malformed, or refused where no answer is due); counted;
//   reply   discard it and deliver `reply` (a whole Ethernet frame) to the guest instead: a TCP
//           RST, an ICMP/ICMPv6 "administratively prohibited" unreachable, or a DNS NXDOMAIN.
// In order:
//   1. Unparseable frames (truncated, bad IHL, lengths past the frame) and ethertypes other than
//      ARP/IPv4/IPv6: drop, denied_other. ARP: pass.
//   2. Link traffic passes: ICMPv6 router/neighbour solicitation and advertisement (types
//      133-136, hop limit 255, to a link-local, link-scope multicast or plan-subnet address:
//      RFC 4861 6.1), MLD to ff02::/16, DHCP to 255.255.255.255 or the gateway, DHCPv6 to
//      ff02::1:2.
//   3. 0.0.0.0/8, 127.0.0.0/8, ::, ::1 (also IPv4-mapped): always refused.
//   3a. Replies pass: the policy judges what the guest starts, not what it answers. A TCP
//      segment other than a bare SYN belongs to a connection whose SYN was judged; with
//      a bridged filter (set_bridged, the TAP backend) it must belong to one the flow table
//      (flows.h) saw open or it is refused; without (libslirp, which resets unknown
//      connections itself) it passes. A UDP datagram back to the address and port a datagram
//      to the guest came from (a published UDP port) passes for kUdpReplyWindow after the last
//      one in.
//   Every new flow that passes (a SYN, a UDP flow, a ping) takes a place in the flow table; past
//   its cap it is refused like a denied one but counted in flows_refused.
//   4. Port 53 of a DNS server (dns_servers): UDP is parsed; a query for a denied name is
//      answered NXDOMAIN (denied_dns), a malformed one dropped (denied_other), an allowed one
//      passes. TCP passes only when the default is allow and there are no domain rules (names
//      cannot be judged in a TCP stream); otherwise RST (guests fall back to UDP). Fragments to
//      a DNS server are dropped.
//   5. The plan's subnets (10.0.2.0/24, fec0::/64: libslirp maps every address there but the DNS
//      address to the host's loopback): ICMP echo passes; the rest passes only with
//      allow_host_loopback. Not when bridged: there the subnet is the user's LAN, and its hosts
//      are judged like any address (6).
//   6. Everything else: Policy::allow_ip(destination).
// A refusal: TCP -> RST (none to a RST); UDP -> unreachable; ICMP echo -> unreachable, other
// ICMP dropped; other protocols and fragments dropped. Nothing is sent about packets to
// multicast/broadcast destinations or from an unspecified source (RFC 1812 4.3.2.7).
//
// inbound() watches frames to the guest: it remembers where UDP datagrams came from (3a), and a
// UDP datagram from port 53 of a DNS server is parsed
// and the A/AAAA answers for the question's name (through CNAMEs) are learned with their TTL,
// when the name is allowed. Malformed responses are ignored.
//
// Threads: not thread-safe; one backend thread calls everything. The counters are plain
// integers read through add_counts() on that thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "net/backend.h"
#include "net/config.h"
#include "net/flows.h"
#include "net/packet.h"
#include "net/policy.h"

namespace sm::net {

class EgressFilter {
 public:
  using Clock = Policy::Clock;
  static constexpr std::chrono::seconds kUdpReplyWindow{60};
  static constexpr size_t kMaxUdpPeers = 4096;

  // Throws sm::Error for a bad rule (policy.h), an address of the plan or a DNS server that is
  // not an IP literal.
  EgressFilter(const EgressPolicy& policy, const AddressPlan& plan,
               std::vector<std::string> dns_servers);
  // The same, with the clock the DNS TTLs are measured on (tests).
  EgressFilter(const EgressPolicy& policy, const AddressPlan& plan,
               std::vector<std::string> dns_servers, Clock clock);

  enum class Verdict { pass, drop, reply };
  // reply is cleared, and filled only for Verdict::reply.
  Verdict outbound(std::span<const std::byte> frame, std::vector<std::byte>& reply);
  void inbound(std::span<const std::byte> frame);
  void add_counts(NetStats& s) const;  // adds denied_* and flows_refused into s
  // Default allow, no rules, host loopback allowed: the policy refuses nothing (the flow table
  // still counts and caps).
  [[nodiscard]] bool pass_all() const;
  // For backends that put frames on a real LAN (TAP): stateful TCP (3a), and the plan's subnet
  // is judged by the policy like any other (5).
  void set_bridged(bool on) { bridged_ = on; }
  // The flow cap (FlowTable::default_max_flows() unless set).
  void set_max_flows(size_t n) { flows_ = FlowTable(n); }
  [[nodiscard]] const FlowTable& flows() const { return flows_; }

  [[nodiscard]] const Policy& policy() const { return policy_; }

 private:
  // Refuses the frame, counted as denied by the policy.
  Verdict refuse(std::span<const std::byte> frame, const ParsedFrame& f,
                 std::vector<std::byte>& reply);
  // The answer to a refused frame (RST, unreachable, or none), uncounted.
  Verdict refusal(std::span<const std::byte> frame, const ParsedFrame& f,
                  std::vector<std::byte>& reply) const;
  // A frame the policy passed: a new flow takes its place in the table, or is refused past the cap.
  Verdict admit(std::span<const std::byte> frame, const ParsedFrame& f,
                std::vector<std::byte>& reply);
  Verdict dns_query(std::span<const std::byte> frame, const ParsedFrame& f,
                    std::vector<std::byte>& reply);
  [[nodiscard]] bool is_dns_server(const IpAddr& a) const;
  [[nodiscard]] bool in_plan_subnet(const IpAddr& a) const;
  [[nodiscard]] bool is_group_address(const IpAddr& a) const;  // multicast or broadcast
  [[nodiscard]] bool is_udp_reply(const ParsedFrame& f) const;
  void remember_udp_peer(const ParsedFrame& f);

  // (guest port, peer address, peer port) of UDP datagrams to the guest -> when replies expire.
  using UdpPeer = std::tuple<uint16_t, IpAddr, uint16_t>;
  std::map<UdpPeer, std::chrono::steady_clock::time_point> udp_peers_;

  Policy policy_;
  FlowTable flows_;
  bool bridged_ = false;
  bool allow_host_loopback_;
  IpAddr gateway4_, gateway6_, guest4_, guest6_;
  unsigned prefix4_, prefix6_;
  MacAddr gateway_mac_{};
  std::vector<IpAddr> dns_servers_;

  uint64_t denied_tcp_ = 0, denied_udp_ = 0, denied_icmp_ = 0, denied_dns_ = 0,
           denied_other_ = 0, flows_refused_ = 0;
};

}  // namespace sm::net
