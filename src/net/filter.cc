// The egress filter (see filter.h for the order of the checks and why).
#include "net/filter.h"

#include <algorithm>

#include "common/error.h"
#include "net/dns.h"

namespace sm::net {
namespace {

IpAddr parse_plan_ip(const std::string& text, bool v6, const char* what) {
  auto a = IpAddr::parse(text);
  if (!a || a->v6 != v6) throw Error(fmt::format("address plan: {} {}: not an IPv{} address", what, text, v6 ? 6 : 4));
  return *a;
}

bool always_denied(const IpAddr& a) {
  if (!a.v6) return a.b[0] == 0 || a.b[0] == 127;  // 0.0.0.0/8 "this network", 127.0.0.0/8
  IpAddr any;
  any.v6 = true;
  IpAddr one = any;
  one.b[15] = 1;
  return a == any || a == one;
}

bool is_echo_request(const ParsedFrame& f) {
  if (!f.has_l4) return false;
  if (f.proto == kProtoIcmp) return f.icmp_type == 8;
  if (f.proto == kProtoIcmpv6) return f.icmp_type == 128;
  return false;
}

// Traffic a guest needs to bring up its link, which never leaves the virtual LAN.
bool is_link_traffic(const ParsedFrame& f, const IpAddr& gateway4, bool in_plan_subnet) {
  if (!f.has_l4) return false;
  if (f.kind == ParsedFrame::Kind::ipv6 && f.proto == kProtoIcmpv6) {
    const bool link_multicast = f.dst.b[0] == 0xff && (f.dst.b[1] & 0x0f) == 0x02;
    if (f.icmp_type >= 133 && f.icmp_type <= 136) {  // RS, RA, NS, NA (RFC 4861)
      // Only as RFC 4861 6.1 lets them be valid: hop limit 255, on the link. Anything else
      // could carry data past the policy on a bridge.
      const bool link_local = f.dst.b[0] == 0xfe && (f.dst.b[1] & 0xc0) == 0x80;
      return f.hop_limit == 255 && (link_local || link_multicast || in_plan_subnet);
    }
    const bool mld = f.icmp_type == 130 || f.icmp_type == 131 || f.icmp_type == 132 ||
                     f.icmp_type == 143;
    return link_multicast && mld;
  }
  if (f.proto != kProtoUdp) return false;
  if (f.kind == ParsedFrame::Kind::ipv4)  // DHCP, served by libslirp
    return f.sport == 68 && f.dport == 67 &&
           (f.dst == IpAddr::v4(255, 255, 255, 255) || f.dst == gateway4);
  // DHCPv6 to All_DHCP_Relay_Agents_and_Servers (ff02::1:2), served by libslirp
  IpAddr all_dhcp;
  all_dhcp.v6 = true;
  all_dhcp.b[0] = 0xff;
  all_dhcp.b[1] = 0x02;
  all_dhcp.b[13] = 0x01;
  all_dhcp.b[15] = 0x02;
  return f.dport == 547 && f.dst == all_dhcp;
}

}  // namespace

EgressFilter::EgressFilter(const EgressPolicy& policy, const AddressPlan& plan,
                           std::vector<std::string> dns_servers)
    : EgressFilter(policy, plan, std::move(dns_servers), Clock{}) {}

EgressFilter::EgressFilter(const EgressPolicy& policy, const AddressPlan& plan,
                           std::vector<std::string> dns_servers, Clock clock)
    : policy_(policy, std::move(clock)),
      allow_host_loopback_(policy.allow_host_loopback),
      gateway4_(parse_plan_ip(plan.gateway_ipv4, false, "gateway")),
      gateway6_(parse_plan_ip(plan.gateway_ipv6, true, "gateway")),
      guest4_(parse_plan_ip(plan.guest_ipv4, false, "guest")),
      guest6_(parse_plan_ip(plan.guest_ipv6, true, "guest")),
      prefix4_(plan.ipv4_prefix),
      prefix6_(plan.ipv6_prefix) {
  // flows_ is default-constructed with the default cap.
  if (prefix4_ > 32 || prefix6_ > 128) throw Error("address plan: prefix length out of range");
  // libslirp's MAC for its own addresses: 52:55 and the IPv4 gateway address.
  gateway_mac_ = {0x52, 0x55, gateway4_.b[0], gateway4_.b[1], gateway4_.b[2], gateway4_.b[3]};
  for (const auto& s : dns_servers) {
    auto a = IpAddr::parse(s);
    if (!a) throw Error(fmt::format("DNS server {}: not an IP address", s));
    dns_servers_.push_back(a->unmapped());
  }
}

bool EgressFilter::pass_all() const {
  return policy_.default_allow() && !policy_.has_rules() && allow_host_loopback_;
}

void EgressFilter::add_counts(NetStats& s) const {
  s.denied_tcp += denied_tcp_;
  s.denied_udp += denied_udp_;
  s.denied_icmp += denied_icmp_;
  s.denied_dns += denied_dns_;
  s.denied_other += denied_other_;
  s.flows_refused += flows_refused_;
}

bool EgressFilter::is_dns_server(const IpAddr& a) const {
  return std::find(dns_servers_.begin(), dns_servers_.end(), a) != dns_servers_.end();
}

bool EgressFilter::in_plan_subnet(const IpAddr& a) const {
  return a.v6 ? a.in_prefix(guest6_, prefix6_) : a.in_prefix(guest4_, prefix4_);
}

bool EgressFilter::is_group_address(const IpAddr& a) const {
  if (a.v6) return a.b[0] == 0xff;
  if ((a.b[0] & 0xf0) == 0xe0) return true;  // 224.0.0.0/4
  if (a == IpAddr::v4(255, 255, 255, 255)) return true;
  if (prefix4_ >= 31 || !a.in_prefix(guest4_, prefix4_)) return false;
  for (unsigned bit = prefix4_; bit < 32; ++bit)  // the subnet's broadcast: host bits all ones
    if (!(a.b[bit / 8] & (0x80 >> (bit % 8)))) return false;
  return true;
}

EgressFilter::Verdict EgressFilter::outbound(std::span<const std::byte> frame,
                                             std::vector<std::byte>& reply) {
  reply.clear();
  if (frame.size() > kMaxFrameLen) {
    ++denied_other_;
    return Verdict::drop;
  }
  const auto parsed = parse_frame(frame);
  if (!parsed) {
    ++denied_other_;
    return Verdict::drop;
  }
  const ParsedFrame& f = *parsed;
  if (f.kind == ParsedFrame::Kind::arp) return Verdict::pass;
  if (f.kind == ParsedFrame::Kind::other) {  // cannot be judged (VLAN tags, PPPoE, ...)
    ++denied_other_;
    return Verdict::drop;
  }
  const IpAddr dst = f.dst.unmapped();
  if (is_link_traffic(f, gateway4_, in_plan_subnet(dst))) return Verdict::pass;

  if (always_denied(dst)) return refuse(frame, f, reply);
  if (f.has_l4 && f.proto == kProtoTcp && (f.tcp_flags & (kTcpSyn | kTcpAck | kTcpRst)) != kTcpSyn) {
    // A segment of a connection (see filter.h, 3a).
    if (flows_.outbound(f, policy_.now()) == FlowTable::Result::unknown && bridged_)
      return refuse(frame, f, reply);
    return Verdict::pass;
  }
  if (is_udp_reply(f)) return Verdict::pass;

  if (is_dns_server(dst) && (f.proto == kProtoUdp || f.proto == kProtoTcp)) {
    if (f.fragment) {  // a query split over fragments cannot be judged
      ++denied_other_;
      return Verdict::drop;
    }
    if (f.has_l4 && f.dport == 53) {
      if (f.proto == kProtoUdp) {
        const Verdict v = dns_query(frame, f, reply);
        return v == Verdict::pass ? admit(frame, f, reply) : v;
      }
      if (policy_.default_allow() && !policy_.has_domain_rules()) return admit(frame, f, reply);
      return refuse(frame, f, reply);
    }
  }

  if (!bridged_ && in_plan_subnet(dst)) {
    if (is_echo_request(f) || allow_host_loopback_) return admit(frame, f, reply);
    return refuse(frame, f, reply);
  }

  if (policy_.allow_ip(dst)) return admit(frame, f, reply);
  return refuse(frame, f, reply);
}

EgressFilter::Verdict EgressFilter::admit(std::span<const std::byte> frame, const ParsedFrame& f,
                                          std::vector<std::byte>& reply) {
  if (flows_.outbound(f, policy_.now()) != FlowTable::Result::full) return Verdict::pass;
  ++flows_refused_;
  return refusal(frame, f, reply);
}

EgressFilter::Verdict EgressFilter::dns_query(std::span<const std::byte> frame,
                                              const ParsedFrame& f,
                                              std::vector<std::byte>& reply) {
  const auto msg = frame.subspan(f.payload_offset, f.payload_len);
  const auto q = dns::parse_query(msg);
  if (!q) {
    ++denied_other_;
    return Verdict::drop;
  }
  if (policy_.allow_name(q->name)) return Verdict::pass;
  ++denied_dns_;
  const auto answer = dns::build_nxdomain(msg, *q);
  reply = build_udp_frame(reply_addressing(f, gateway_mac_), f.dport, f.sport, answer);
  return Verdict::reply;
}

EgressFilter::Verdict EgressFilter::refuse(std::span<const std::byte> frame, const ParsedFrame& f,
                                           std::vector<std::byte>& reply) {
  if (!f.has_l4) ++denied_other_;  // fragments and other protocols
  else if (f.proto == kProtoTcp) ++denied_tcp_;
  else if (f.proto == kProtoUdp) ++denied_udp_;
  else ++denied_icmp_;  // ICMP or ICMPv6 (has_l4 is set for nothing else)
  return refusal(frame, f, reply);
}

EgressFilter::Verdict EgressFilter::refusal(std::span<const std::byte> frame, const ParsedFrame& f,
                                            std::vector<std::byte>& reply) const {
  // Never answer about group destinations or to an address that cannot be answered.
  const bool answerable = !is_group_address(f.dst) && !is_group_address(f.src) &&
                          !(f.kind == ParsedFrame::Kind::ipv4 ? f.src.b[0] == 0 && f.src.b[1] == 0 &&
                                                                    f.src.b[2] == 0 && f.src.b[3] == 0
                                                              : f.src == IpAddr{true, {}});
  if (!f.has_l4 || !answerable) return Verdict::drop;
  switch (f.proto) {
    case kProtoTcp:
      if (f.tcp_flags & kTcpRst) return Verdict::drop;  // no RST to a RST
      reply = build_tcp_rst(f, gateway_mac_);
      return Verdict::reply;
    case kProtoUdp:
      reply = build_unreachable(frame, f, gateway_mac_);
      return Verdict::reply;
    default:
      if (!is_echo_request(f)) return Verdict::drop;  // no errors about errors
      reply = build_unreachable(frame, f, gateway_mac_);
      return Verdict::reply;
  }
}

bool EgressFilter::is_udp_reply(const ParsedFrame& f) const {
  if (!f.has_l4 || f.proto != kProtoUdp) return false;
  auto it = udp_peers_.find({f.sport, f.dst.unmapped(), f.dport});
  return it != udp_peers_.end() && policy_.now() < it->second;
}

void EgressFilter::remember_udp_peer(const ParsedFrame& f) {
  const auto t = policy_.now();
  if (udp_peers_.size() >= kMaxUdpPeers) {
    std::erase_if(udp_peers_, [&](const auto& e) { return e.second <= t; });
    // Still full: forget the one that expires first. Its peer's next datagram brings it back.
    if (udp_peers_.size() >= kMaxUdpPeers) {
      udp_peers_.erase(std::min_element(udp_peers_.begin(), udp_peers_.end(), [](const auto& a, const auto& b) {
        return a.second < b.second;
      }));
    }
  }
  udp_peers_[{f.dport, f.src.unmapped(), f.sport}] = t + kUdpReplyWindow;
}

void EgressFilter::inbound(std::span<const std::byte> frame) {
  if (frame.size() > kMaxFrameLen) return;
  const auto f = parse_frame(frame);
  if (!f || !f->has_l4) return;
  flows_.inbound(*f, policy_.now());
  if (f->proto != kProtoUdp) return;
  if (f->sport != 53 || !is_dns_server(f->src.unmapped())) remember_udp_peer(*f);
  if (f->sport != 53) return;
  if (!is_dns_server(f->src.unmapped())) return;
  const auto r = dns::parse_response(frame.subspan(f->payload_offset, f->payload_len));
  if (!r || r->rcode != 0) return;
  for (const auto& a : r->addresses) policy_.learn(r->name, a.addr, a.ttl);
}

}  // namespace sm::net
