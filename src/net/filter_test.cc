// filter.h: refusals and their replies (RST, ICMP unreachable, NXDOMAIN), DNS learning with TTLs,
// host loopback and the gateway, and hostile frames, ending with a randomized loop over
// outbound()/inbound(). Frames are built with packet.h's builders and checked with its parser.
#include "net/filter.h"

#include <gtest/gtest.h>

#include <random>

#include "net/dns.h"
#include "net/frame_queue.h"
#include "supermachine/error.h"

namespace sm::net {
namespace {

using namespace std::chrono_literals;
using Verdict = EgressFilter::Verdict;
using Bytes = std::vector<std::byte>;

const MacAddr kGuestMac{0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
const MacAddr kGwMac{0x52, 0x55, 0x0a, 0x00, 0x02, 0x02};

L2L3 guest_to(const char* dst) {
  L2L3 a;
  a.src_mac = kGuestMac;
  a.dst_mac = kGwMac;
  a.dst = *IpAddr::parse(dst);
  a.src = *IpAddr::parse(a.dst.v6 ? "fec0::15" : "10.0.2.15");
  return a;
}
L2L3 to_guest(const char* src) {
  L2L3 a = guest_to(src);
  std::swap(a.src, a.dst);
  std::swap(a.src_mac, a.dst_mac);
  return a;
}

Bytes syn(const char* dst, uint16_t dport = 443, uint32_t seq = 1000) {
  return build_tcp_frame(guest_to(dst), 40000, dport, seq, 0, kTcpSyn, 65535, {});
}
Bytes udp(const char* dst, uint16_t dport, const Bytes& payload = Bytes(8, std::byte{1})) {
  return build_udp_frame(guest_to(dst), 40001, dport, payload);
}
Bytes dns_query(const char* name, uint16_t id = 0x4242, const char* server = "10.0.2.3") {
  return build_udp_frame(guest_to(server), 40002, 53, dns::build_query(id, name, dns::kTypeA));
}

void put16(Bytes& m, uint16_t x) {
  m.push_back(static_cast<std::byte>(x >> 8));
  m.push_back(static_cast<std::byte>(x));
}
void put32(Bytes& m, uint32_t x) {
  put16(m, static_cast<uint16_t>(x >> 16));
  put16(m, static_cast<uint16_t>(x));
}
void record(Bytes& m, const std::string& owner, uint16_t type, uint32_t ttl, const Bytes& rdata) {
  const auto n = dns::encode_name(owner);
  m.insert(m.end(), n.begin(), n.end());
  put16(m, type);
  put16(m, dns::kClassIn);
  put32(m, ttl);
  put16(m, static_cast<uint16_t>(rdata.size()));
  m.insert(m.end(), rdata.begin(), rdata.end());
}
Bytes v4(const char* s) {
  const auto a = *IpAddr::parse(s);
  return Bytes(reinterpret_cast<const std::byte*>(a.b.data()),
               reinterpret_cast<const std::byte*>(a.b.data()) + a.size());
}

// A response from the DNS server to the guest for `qname`, with the given answer records.
struct Rec {
  std::string owner;
  uint16_t type;
  uint32_t ttl;
  Bytes rdata;
};
Bytes dns_answer(const std::string& qname, const std::vector<Rec>& recs,
                 const char* server = "10.0.2.3") {
  Bytes m = dns::build_query(0x4242, qname, dns::kTypeA);
  m[2] = std::byte{0x81};
  m[3] = std::byte{0x80};
  m[6] = static_cast<std::byte>(recs.size() >> 8);
  m[7] = static_cast<std::byte>(recs.size());
  for (const auto& r : recs) record(m, r.owner, r.type, r.ttl, r.rdata);
  return build_udp_frame(to_guest(server), 53, 40002, m);
}

EgressPolicy policy(bool default_allow, std::vector<Rule> rules, bool host_loopback = false) {
  EgressPolicy p;
  p.default_allow = default_allow;
  p.rules = std::move(rules);
  p.allow_host_loopback = host_loopback;
  return p;
}

struct FakeClock {
  std::chrono::steady_clock::time_point t{std::chrono::hours(1000)};
  Policy::Clock fn() {
    return [this] { return t; };
  }
};

EgressFilter make(const EgressPolicy& p, FakeClock* clock = nullptr) {
  AddressPlan plan;
  return clock ? EgressFilter(p, plan, {plan.dns_ipv4, plan.dns_ipv6}, clock->fn())
               : EgressFilter(p, plan, {plan.dns_ipv4, plan.dns_ipv6});
}

NetStats counts(const EgressFilter& f) {
  NetStats s;
  f.add_counts(s);
  return s;
}

TEST(EgressFilter, SynToDeniedIpGetsRst) {
  auto f = make(policy(true, {{false, "93.184.216.0/24"}}));
  Bytes reply;
  EXPECT_EQ(f.outbound(syn("93.184.215.1"), reply), Verdict::pass);
  EXPECT_TRUE(reply.empty());
  EXPECT_EQ(f.outbound(syn("93.184.216.34", 443, 0x7ffffffe), reply), Verdict::reply);
  const auto r = parse_frame(reply);
  ASSERT_TRUE(r && r->has_l4);
  EXPECT_EQ(r->src_mac, kGwMac);
  EXPECT_EQ(r->dst_mac, kGuestMac);
  EXPECT_EQ(r->src.str(), "93.184.216.34");
  EXPECT_EQ(r->dst.str(), "10.0.2.15");
  EXPECT_EQ(r->proto, kProtoTcp);
  EXPECT_EQ(r->sport, 443);
  EXPECT_EQ(r->dport, 40000);
  EXPECT_EQ(r->tcp_flags, kTcpRst | kTcpAck);
  EXPECT_EQ(r->seq, 0u);
  EXPECT_EQ(r->ack, 0x7fffffffu);
  EXPECT_TRUE(checksums_ok(reply, *r));
  EXPECT_EQ(counts(f).denied_tcp, 1u);

  // Only a bare SYN is judged: what else the guest sends belongs to a connection that was.
  const auto rst = build_tcp_frame(guest_to("93.184.216.34"), 1, 2, 3, 0, kTcpRst, 0, {});
  EXPECT_EQ(f.outbound(rst, reply), Verdict::pass);
  EXPECT_EQ(counts(f).denied_tcp, 1u);
}

TEST(EgressFilter, RepliesToConnectionsFromOutsidePass) {
  // Default deny, host loopback off: a published port's connections come from the gateway
  // (the host's loopback) or from any address, and the guest must be able to answer them.
  auto f = make(policy(false, {}));
  Bytes reply;
  const auto synack = build_tcp_frame(guest_to("10.0.2.2"), 80, 51000, 7, 8, kTcpSyn | kTcpAck, 65535, {});
  EXPECT_EQ(f.outbound(synack, reply), Verdict::pass);
  const auto data = build_tcp_frame(guest_to("198.51.100.7"), 80, 51000, 7, 8, kTcpAck | kTcpPsh, 65535,
                                    Bytes(10, std::byte{'x'}));
  EXPECT_EQ(f.outbound(data, reply), Verdict::pass);
  // The guest starting a connection is still judged.
  EXPECT_EQ(f.outbound(syn("198.51.100.7"), reply), Verdict::reply);
  EXPECT_EQ(counts(f).denied_tcp, 1u);
}

TEST(EgressFilter, BridgedPassesOnlySegmentsOfConnectionsItSawOpen) {
  // With TAP the frames go onto a real LAN: data in bare ACKs to a denied address must not.
  auto f = make(policy(false, {{true, "198.51.100.0/24"}}));
  f.set_bridged(true);
  Bytes reply;
  const Bytes payload(100, std::byte{'x'});
  const auto ack_to = [&](const char* dst, uint16_t sport, uint16_t dport, uint8_t flags) {
    return build_tcp_frame(guest_to(dst), sport, dport, 1, 1, flags, 65535, payload);
  };
  EXPECT_EQ(f.outbound(ack_to("203.0.113.9", 40000, 443, kTcpAck | kTcpPsh), reply), Verdict::reply);
  EXPECT_EQ(parse_frame(reply)->tcp_flags, kTcpRst);  // <SEQ=SEG.ACK><CTL=RST>
  EXPECT_EQ(counts(f).denied_tcp, 1u);
  // A connection the guest opened to an allowed address carries data, until a RST ends it.
  EXPECT_EQ(f.outbound(syn("198.51.100.7", 443), reply), Verdict::pass);
  EXPECT_EQ(f.outbound(ack_to("198.51.100.7", 40000, 443, kTcpAck | kTcpPsh), reply), Verdict::pass);
  EXPECT_EQ(f.outbound(ack_to("198.51.100.7", 40001, 443, kTcpAck), reply), Verdict::reply);  // another port
  f.inbound(build_tcp_frame(to_guest("198.51.100.7"), 443, 40000, 1, 1, kTcpRst, 0, {}));
  EXPECT_EQ(f.outbound(ack_to("198.51.100.7", 40000, 443, kTcpAck), reply), Verdict::reply);
  // A connection from outside opens on its SYN to the guest: the guest's SYN|ACK and data pass.
  f.inbound(build_tcp_frame(to_guest("203.0.113.9"), 51000, 80, 7, 0, kTcpSyn, 65535, {}));
  EXPECT_EQ(f.outbound(ack_to("203.0.113.9", 80, 51000, kTcpSyn | kTcpAck), reply), Verdict::pass);
  EXPECT_EQ(f.outbound(ack_to("203.0.113.9", 80, 51000, kTcpAck | kTcpPsh), reply), Verdict::pass);
  EXPECT_EQ(f.flows().size(), 1u);
  // A RST the guest sends on a connection nobody knows is dropped, never answered.
  EXPECT_EQ(f.outbound(ack_to("203.0.113.10", 1, 2, kTcpRst), reply), Verdict::drop);

  // Bridged, the plan's subnet is the user's LAN: its hosts are judged by the rules, not refused
  // as the host's loopback.
  auto lan = make(policy(true, {{false, "10.0.2.9"}}));
  lan.set_bridged(true);
  EXPECT_EQ(lan.outbound(syn("10.0.2.2", 80), reply), Verdict::pass);
  EXPECT_EQ(lan.outbound(syn("10.0.2.9", 80), reply), Verdict::reply);
  EXPECT_EQ(lan.outbound(syn("127.0.0.1", 80), reply), Verdict::reply);

  // Not bridged (libslirp resets unknown connections itself) such segments pass.
  auto nat = make(policy(false, {}));
  EXPECT_EQ(nat.outbound(ack_to("203.0.113.9", 40000, 443, kTcpAck | kTcpPsh), reply), Verdict::pass);
}

TEST(EgressFilter, NewFlowsPastTheCapAreRefusedAtOnceAndCounted) {
  FakeClock clock;
  auto f = make(policy(true, {}, true), &clock);  // pass_all: the cap holds all the same
  f.set_max_flows(3);
  Bytes reply;
  EXPECT_EQ(f.outbound(build_tcp_frame(guest_to("198.51.100.1"), 40000, 443, 1, 0, kTcpSyn, 65535, {}), reply),
            Verdict::pass);
  EXPECT_EQ(f.outbound(build_udp_frame(guest_to("198.51.100.2"), 40001, 9000, Bytes(4)), reply), Verdict::pass);
  EXPECT_EQ(f.outbound(build_icmp_frame(guest_to("198.51.100.3"), 8, 0, 0x00070001, Bytes(8)), reply),
            Verdict::pass);
  EXPECT_EQ(f.flows().size(), 3u);
  // Open flows carry on: a retransmitted SYN, the same UDP flow, a segment of the connection.
  EXPECT_EQ(f.outbound(build_tcp_frame(guest_to("198.51.100.1"), 40000, 443, 1, 0, kTcpSyn, 65535, {}), reply),
            Verdict::pass);
  EXPECT_EQ(f.outbound(build_udp_frame(guest_to("198.51.100.2"), 40001, 9000, Bytes(4)), reply), Verdict::pass);
  // New ones are refused at once, the way a denied one is.
  EXPECT_EQ(f.outbound(build_tcp_frame(guest_to("198.51.100.4"), 40002, 443, 1, 0, kTcpSyn, 65535, {}), reply),
            Verdict::reply);
  EXPECT_EQ(parse_frame(reply)->tcp_flags, kTcpRst | kTcpAck);
  EXPECT_EQ(f.outbound(build_udp_frame(guest_to("198.51.100.2"), 40003, 9000, Bytes(4)), reply), Verdict::reply);
  EXPECT_EQ(parse_frame(reply)->proto, kProtoIcmp);
  EXPECT_EQ(f.outbound(dns_query("example.com"), reply), Verdict::reply);
  NetStats s = counts(f);
  EXPECT_EQ(s.flows_refused, 3u);
  EXPECT_EQ(s.denied_tcp + s.denied_udp + s.denied_dns, 0u);

  // Flows end: the ping's reply closes it; a RST ends the connection. Then new ones fit.
  f.inbound(build_icmp_frame(to_guest("198.51.100.3"), 0, 0, 0x00070001, Bytes(8)));
  f.inbound(build_tcp_frame(to_guest("198.51.100.1"), 443, 40000, 1, 2, kTcpRst | kTcpAck, 0, {}));
  EXPECT_EQ(f.flows().size(), 1u);
  EXPECT_EQ(f.outbound(dns_query("example.com"), reply), Verdict::pass);
  EXPECT_EQ(f.outbound(build_tcp_frame(guest_to("198.51.100.4"), 40002, 443, 1, 0, kTcpSyn, 65535, {}), reply),
            Verdict::pass);
  // Idle flows expire as libslirp's sockets do: an answered DNS query after 10 s, UDP after 240 s.
  f.inbound(build_udp_frame(to_guest("10.0.2.3"), 53, 40002, dns::build_query(1, "example.com", dns::kTypeA)));
  clock.t += std::chrono::seconds(11);
  EXPECT_EQ(f.outbound(build_udp_frame(guest_to("198.51.100.5"), 40004, 9000, Bytes(4)), reply), Verdict::pass);
  clock.t += std::chrono::seconds(240);
  EXPECT_EQ(f.outbound(build_udp_frame(guest_to("198.51.100.6"), 40005, 9000, Bytes(4)), reply), Verdict::pass);
  EXPECT_EQ(counts(f).flows_refused, 3u);
  // A TCP connection closed by FINs both ways leaves a minute later, an open one stays.
  auto g = make(policy(true, {}), &clock);
  g.set_max_flows(1);
  EXPECT_EQ(g.outbound(build_tcp_frame(guest_to("198.51.100.1"), 40000, 443, 1, 0, kTcpSyn, 65535, {}), reply),
            Verdict::pass);
  g.inbound(build_tcp_frame(to_guest("198.51.100.1"), 443, 40000, 1, 2, kTcpSyn | kTcpAck, 65535, {}));
  clock.t += std::chrono::hours(2);
  EXPECT_EQ(g.outbound(build_tcp_frame(guest_to("198.51.100.2"), 40001, 443, 1, 0, kTcpSyn, 65535, {}), reply),
            Verdict::reply);
  EXPECT_EQ(g.outbound(build_tcp_frame(guest_to("198.51.100.1"), 40000, 443, 2, 2, kTcpFin | kTcpAck, 65535, {}),
                       reply),
            Verdict::pass);
  g.inbound(build_tcp_frame(to_guest("198.51.100.1"), 443, 40000, 2, 3, kTcpFin | kTcpAck, 65535, {}));
  clock.t += std::chrono::seconds(61);
  EXPECT_EQ(g.outbound(build_tcp_frame(guest_to("198.51.100.2"), 40001, 443, 1, 0, kTcpSyn, 65535, {}), reply),
            Verdict::pass);
}

TEST(EgressFilter, TheNatDnsAddressIsJudgedEvenWithOtherServers) {
  // --dns elsewhere, --allow-host-loopback: a query sent to 10.0.2.3 anyway must still be judged.
  AddressPlan plan;
  NetworkConfig cfg;
  cfg.dns = {"192.0.2.53"};
  cfg.policy = policy(true, {{false, "blocked.test"}}, true);
  EgressFilter f(cfg.policy, plan, filter_dns_servers(cfg));
  Bytes reply;
  EXPECT_EQ(f.outbound(dns_query("blocked.test"), reply), Verdict::reply);
  EXPECT_EQ(f.outbound(dns_query("blocked.test", 1, "192.0.2.53"), reply), Verdict::reply);
  EXPECT_EQ(counts(f).denied_dns, 2u);
}

TEST(EgressFilter, UdpRepliesPassOnlyToWhereADatagramCameFromWhileFresh) {
  FakeClock clock;
  auto f = make(policy(false, {}), &clock);
  Bytes reply;
  auto answer = [](const char* to, uint16_t from_port, uint16_t to_port) {
    return build_udp_frame(guest_to(to), from_port, to_port, Bytes(4, std::byte{2}));
  };
  EXPECT_EQ(f.outbound(answer("10.0.2.2", 5001, 40100), reply), Verdict::reply);  // nothing came in
  f.inbound(build_udp_frame(to_guest("10.0.2.2"), 40100, 5001, Bytes(4, std::byte{1})));
  EXPECT_EQ(f.outbound(answer("10.0.2.2", 5001, 40100), reply), Verdict::pass);
  EXPECT_EQ(f.outbound(answer("10.0.2.2", 5001, 40101), reply), Verdict::reply);  // another port
  EXPECT_EQ(f.outbound(answer("10.0.2.2", 5002, 40100), reply), Verdict::reply);  // from another
  clock.t += EgressFilter::kUdpReplyWindow;
  EXPECT_EQ(f.outbound(answer("10.0.2.2", 5001, 40100), reply), Verdict::reply);  // expired
  // A DNS response does not open the server's port 53 to anything but judged queries.
  f.inbound(dns_answer("denied.example", {}));
  EXPECT_EQ(f.outbound(dns_query("denied.example"), reply), Verdict::reply);
  EXPECT_EQ(counts(f).denied_dns, 1u);
}

TEST(EgressFilter, UdpPeerTableIsCapped) {
  FakeClock clock;
  auto f = make(policy(false, {}), &clock);
  for (uint32_t i = 0; i < EgressFilter::kMaxUdpPeers + 100; ++i) {
    f.inbound(build_udp_frame(to_guest("10.0.2.2"), static_cast<uint16_t>(1024 + i % 60000), 5001,
                              Bytes(1, std::byte{1})));
    if (i % 1000 == 0) clock.t += 1s;
  }
  Bytes reply;
  // The newest peers are remembered, the oldest made room.
  const auto last = static_cast<uint16_t>(1024 + (EgressFilter::kMaxUdpPeers + 99) % 60000);
  EXPECT_EQ(f.outbound(build_udp_frame(guest_to("10.0.2.2"), 5001, last, {}), reply), Verdict::pass);
  EXPECT_EQ(f.outbound(build_udp_frame(guest_to("10.0.2.2"), 5001, 1024, {}), reply), Verdict::reply);
}

TEST(EgressFilter, UdpToDeniedGetsUnreachableQuotingTheHeader) {
  auto f = make(policy(false, {}));
  Bytes reply;
  const auto frame = udp("8.8.8.8", 123);
  EXPECT_EQ(f.outbound(frame, reply), Verdict::reply);
  const auto r = parse_frame(reply);
  ASSERT_TRUE(r && r->has_l4);
  EXPECT_EQ(r->proto, kProtoIcmp);
  EXPECT_EQ(r->icmp_type, 3);
  EXPECT_EQ(r->icmp_code, 13);
  EXPECT_EQ(r->src.str(), "8.8.8.8");
  EXPECT_EQ(r->dst.str(), "10.0.2.15");
  EXPECT_TRUE(checksums_ok(reply, *r));
  // The quote: the whole original IP packet (it is short), from its IP header on.
  ASSERT_EQ(r->payload_len, frame.size() - 14);
  EXPECT_TRUE(std::equal(frame.begin() + 14, frame.end(), reply.begin() + static_cast<long>(r->payload_offset)));

  const auto frame6 = udp("2001:4860:4860::8888", 123);
  EXPECT_EQ(f.outbound(frame6, reply), Verdict::reply);
  const auto r6 = parse_frame(reply);
  ASSERT_TRUE(r6 && r6->has_l4);
  EXPECT_EQ(r6->proto, kProtoIcmpv6);
  EXPECT_EQ(r6->icmp_type, 1);
  EXPECT_EQ(r6->icmp_code, 1);
  EXPECT_TRUE(checksums_ok(reply, *r6));
  EXPECT_TRUE(std::equal(frame6.begin() + 14, frame6.end(), reply.begin() + static_cast<long>(r6->payload_offset)));
  EXPECT_EQ(counts(f).denied_udp, 2u);

  // Echo to a denied address: unreachable too; other ICMP: dropped.
  const auto echo = build_icmp_frame(guest_to("8.8.8.8"), 8, 0, 0x00010001, Bytes(16));
  EXPECT_EQ(f.outbound(echo, reply), Verdict::reply);
  EXPECT_EQ(parse_frame(reply)->icmp_code, 13);
  const auto ts = build_icmp_frame(guest_to("8.8.8.8"), 13, 0, 0, Bytes(12));
  EXPECT_EQ(f.outbound(ts, reply), Verdict::drop);
  EXPECT_EQ(counts(f).denied_icmp, 2u);

  // Nothing is sent about broadcast/multicast destinations.
  EXPECT_EQ(f.outbound(udp("255.255.255.255", 9), reply), Verdict::drop);
  EXPECT_EQ(f.outbound(udp("224.0.0.251", 5353), reply), Verdict::drop);
  EXPECT_EQ(f.outbound(udp("10.0.2.255", 9), reply), Verdict::drop);
  // Other protocols: dropped, counted.
  EXPECT_EQ(f.outbound(build_ip_frame(guest_to("8.8.8.8"), 47, Bytes(20)), reply), Verdict::drop);
  EXPECT_EQ(counts(f).denied_other, 1u);
}

TEST(EgressFilter, DeniedNameGetsNxdomain) {
  auto f = make(policy(true, {{false, "evil.example"}}));
  Bytes reply;
  EXPECT_EQ(f.outbound(dns_query("fine.example"), reply), Verdict::pass);
  const auto q = dns_query("WWW.Evil.Example", 0x9876);
  EXPECT_EQ(f.outbound(q, reply), Verdict::reply);
  const auto r = parse_frame(reply);
  ASSERT_TRUE(r && r->has_l4);
  EXPECT_EQ(r->src.str(), "10.0.2.3");
  EXPECT_EQ(r->dst.str(), "10.0.2.15");
  EXPECT_EQ(r->sport, 53);
  EXPECT_EQ(r->dport, 40002);
  EXPECT_TRUE(checksums_ok(reply, *r));
  const auto msg = std::span(reply).subspan(r->payload_offset, r->payload_len);
  const auto resp = dns::parse_response(msg);
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->id, 0x9876);
  EXPECT_EQ(resp->rcode, dns::kRcodeNxdomain);
  EXPECT_EQ(resp->name, "www.evil.example");
  // The question, byte for byte (case kept).
  const auto qmsg = std::span(q).subspan(14 + 20 + 8);
  EXPECT_TRUE(std::equal(qmsg.begin() + 12, qmsg.end(), msg.begin() + 12));
  EXPECT_EQ(counts(f).denied_dns, 1u);

  // Over IPv6 to the IPv6 DNS address too.
  EXPECT_EQ(f.outbound(dns_query("evil.example", 1, "fec0::3"), reply), Verdict::reply);
  EXPECT_EQ(parse_frame(reply)->src.str(), "fec0::3");

  // A malformed query is dropped and counted; TCP/53 is refused (there are domain rules).
  EXPECT_EQ(f.outbound(udp("10.0.2.3", 53, Bytes(5)), reply), Verdict::drop);
  EXPECT_EQ(counts(f).denied_other, 1u);
  EXPECT_EQ(f.outbound(syn("10.0.2.3", 53), reply), Verdict::reply);
  EXPECT_EQ(parse_frame(reply)->tcp_flags, kTcpRst | kTcpAck);
}

TEST(EgressFilter, TcpDnsPassesOnlyWithoutNameRules) {
  auto open = make(policy(true, {{false, "10.0.0.0/8"}}));
  Bytes reply;
  EXPECT_EQ(open.outbound(syn("10.0.2.3", 53), reply), Verdict::pass);
  auto closed = make(policy(false, {}));
  EXPECT_EQ(closed.outbound(syn("10.0.2.3", 53), reply), Verdict::reply);
  // DNS over UDP is not subject to the CIDR default; names are (default deny: NXDOMAIN).
  EXPECT_EQ(closed.outbound(dns_query("a.example"), reply), Verdict::reply);
  EXPECT_EQ(open.outbound(dns_query("a.example"), reply), Verdict::pass);
}

TEST(EgressFilter, LearnedAnswerAllowsThenExpires) {
  FakeClock clock;
  auto f = make(policy(false, {{true, "pypi.org"}}), &clock);
  Bytes reply;
  EXPECT_EQ(f.outbound(dns_query("pypi.org"), reply), Verdict::pass);
  EXPECT_EQ(f.outbound(syn("151.101.0.223"), reply), Verdict::reply);  // not learned yet
  f.inbound(dns_answer("pypi.org", {{"pypi.org", dns::kTypeA, 30, v4("151.101.0.223")}}));
  EXPECT_EQ(f.outbound(syn("151.101.0.223"), reply), Verdict::pass);
  EXPECT_EQ(f.outbound(udp("151.101.0.223", 443), reply), Verdict::pass);
  clock.t += 29s;
  EXPECT_EQ(f.outbound(syn("151.101.0.223"), reply), Verdict::pass);
  clock.t += 1s;
  EXPECT_EQ(f.outbound(syn("151.101.0.223"), reply), Verdict::reply);
  EXPECT_EQ(parse_frame(reply)->tcp_flags, kTcpRst | kTcpAck);

  // An answer for a denied name, from something other than a DNS server, or not from port 53,
  // or an NXDOMAIN with records: not learned.
  f.inbound(dns_answer("evil.example", {{"evil.example", dns::kTypeA, 30, v4("6.6.6.6")}}));
  f.inbound(dns_answer("pypi.org", {{"pypi.org", dns::kTypeA, 30, v4("7.7.7.7")}}, "9.9.9.9"));
  auto wrong_port = dns_answer("pypi.org", {{"pypi.org", dns::kTypeA, 30, v4("8.8.8.8")}});
  wrong_port[14 + 20 + 1] = std::byte{54};
  f.inbound(wrong_port);
  EXPECT_EQ(f.outbound(syn("6.6.6.6"), reply), Verdict::reply);
  EXPECT_EQ(f.outbound(syn("7.7.7.7"), reply), Verdict::reply);
  EXPECT_EQ(f.outbound(syn("8.8.8.8"), reply), Verdict::reply);
}

TEST(EgressFilter, CnameChainCountsForTheQueriedName) {
  FakeClock clock;
  auto f = make(policy(false, {{true, "pypi.org"}}), &clock);
  Bytes reply;
  Bytes aaaa(16, std::byte{0});
  aaaa[0] = std::byte{0x2a};
  aaaa[1] = std::byte{0x04};
  aaaa[15] = std::byte{0x23};
  f.inbound(dns_answer("pypi.org", {{"pypi.org", dns::kTypeCname, 300, dns::encode_name("x.fastly.net")},
                                    {"x.fastly.net", dns::kTypeCname, 300, dns::encode_name("y.fastly.net")},
                                    {"y.fastly.net", dns::kTypeA, 60, v4("151.101.64.223")},
                                    {"y.fastly.net", dns::kTypeAaaa, 60, aaaa},
                                    {"unrelated.net", dns::kTypeA, 60, v4("5.5.5.5")}}));
  EXPECT_EQ(f.outbound(syn("151.101.64.223"), reply), Verdict::pass);
  EXPECT_EQ(f.outbound(syn("2a04::23"), reply), Verdict::pass);
  EXPECT_EQ(f.outbound(syn("5.5.5.5"), reply), Verdict::reply);
}

TEST(EgressFilter, HostLoopbackAndGateway) {
  auto f = make(policy(true, {}));
  Bytes reply;
  for (const char* dst : {"127.0.0.1", "127.1.2.3", "0.0.0.0", "0.1.2.3", "::1", "::",
                          "::ffff:127.0.0.1", "10.0.2.2", "10.0.2.99", "fec0::2"}) {
    EXPECT_EQ(f.outbound(syn(dst), reply), Verdict::reply) << dst;
    EXPECT_EQ(parse_frame(reply)->tcp_flags, kTcpRst | kTcpAck) << dst;
  }
  EXPECT_EQ(f.outbound(udp("10.0.2.2", 8080), reply), Verdict::reply);
  EXPECT_EQ(f.outbound(udp("10.0.2.3", 80), reply), Verdict::reply);  // the DNS address, not 53
  EXPECT_EQ(f.outbound(build_icmp_frame(guest_to("10.0.2.2"), 8, 0, 1, Bytes(8)), reply), Verdict::pass);
  EXPECT_EQ(f.outbound(build_icmp_frame(guest_to("fec0::2"), 128, 0, 1, Bytes(8)), reply), Verdict::pass);
  EXPECT_EQ(f.outbound(build_icmp_frame(guest_to("127.0.0.1"), 8, 0, 1, Bytes(8)), reply), Verdict::reply);
  EXPECT_EQ(f.outbound(syn("1.1.1.1"), reply), Verdict::pass);
  EXPECT_FALSE(f.pass_all());

  // --allow-host-loopback opens the gateway, never 127.0.0.0/8 itself; an allow rule cannot either.
  auto lo = make(policy(true, {}, true));
  EXPECT_TRUE(lo.pass_all());
  EXPECT_EQ(lo.outbound(syn("10.0.2.2"), reply), Verdict::pass);
  EXPECT_EQ(lo.outbound(syn("fec0::2"), reply), Verdict::pass);
  EXPECT_EQ(lo.outbound(syn("127.0.0.1"), reply), Verdict::reply);
  auto rule = make(policy(true, {{true, "127.0.0.0/8"}}));
  EXPECT_EQ(rule.outbound(syn("127.0.0.1"), reply), Verdict::reply);
}

TEST(EgressFilter, LinkTrafficPassesUnderDefaultDeny) {
  auto f = make(policy(false, {}));
  Bytes reply;
  Bytes arp(14 + 28, std::byte{0});
  arp[12] = std::byte{0x08};
  arp[13] = std::byte{0x06};
  EXPECT_EQ(f.outbound(arp, reply), Verdict::pass);
  L2L3 ns = guest_to("ff02::1:ff00:2");
  ns.hop_limit = 255;
  EXPECT_EQ(f.outbound(build_icmp_frame(ns, 135, 0, 0, Bytes(16)), reply), Verdict::pass);
  L2L3 rs = guest_to("ff02::2");
  rs.hop_limit = 255;
  EXPECT_EQ(f.outbound(build_icmp_frame(rs, 133, 0, 0, {}), reply), Verdict::pass);
  L2L3 unicast_ns = guest_to("fec0::2");  // reachability confirmation of the gateway
  unicast_ns.hop_limit = 255;
  EXPECT_EQ(f.outbound(build_icmp_frame(unicast_ns, 135, 0, 0, Bytes(16)), reply), Verdict::pass);
  L2L3 ll_na = guest_to("fe80::2");
  ll_na.hop_limit = 255;
  EXPECT_EQ(f.outbound(build_icmp_frame(ll_na, 136, 0, 0, Bytes(16)), reply), Verdict::pass);
  // ND messages that could not be valid (RFC 4861 6.1) are not link traffic: data in a
  // "neighbour solicitation" to a denied global address, or one that was routed (hop limit < 255).
  L2L3 far = guest_to("2001:db8::1");
  far.hop_limit = 255;
  EXPECT_EQ(f.outbound(build_icmp_frame(far, 135, 0, 0, Bytes(1000)), reply), Verdict::drop);
  ns.hop_limit = 64;
  EXPECT_EQ(f.outbound(build_icmp_frame(ns, 135, 0, 0, Bytes(16)), reply), Verdict::drop);
  EXPECT_EQ(f.outbound(build_icmp_frame(guest_to("ff02::16"), 143, 0, 1, Bytes(20)), reply), Verdict::pass);
  L2L3 dhcp = guest_to("255.255.255.255");
  dhcp.src = IpAddr::v4(0, 0, 0, 0);
  EXPECT_EQ(f.outbound(build_udp_frame(dhcp, 68, 67, Bytes(300)), reply), Verdict::pass);
  // Not link traffic: a non-ND ICMPv6 to a global address.
  EXPECT_EQ(f.outbound(build_icmp_frame(guest_to("2001:db8::1"), 128, 0, 1, {}), reply), Verdict::reply);
  // Unknown ethertypes (e.g. a VLAN tag hiding IP) are dropped.
  auto vlan = syn("1.1.1.1");
  vlan[12] = std::byte{0x81};
  vlan[13] = std::byte{0x00};
  EXPECT_EQ(f.outbound(vlan, reply), Verdict::drop);
}

TEST(EgressFilter, FragmentsAreJudgedByAddress) {
  auto f = make(policy(true, {{false, "1.0.0.0/8"}}));
  Bytes reply;
  auto frag = udp("2.2.2.2", 9);
  frag[14 + 6] = std::byte{0x20};
  EXPECT_EQ(f.outbound(frag, reply), Verdict::pass);
  auto denied = udp("1.2.2.2", 9);
  denied[14 + 6] = std::byte{0x20};
  EXPECT_EQ(f.outbound(denied, reply), Verdict::drop);
  // A fragmented DNS query cannot be judged by name: dropped.
  auto dns = dns_query("a.example");
  dns[14 + 6] = std::byte{0x20};
  EXPECT_EQ(f.outbound(dns, reply), Verdict::drop);
}

TEST(EgressFilter, ConstructorValidates) {
  AddressPlan plan;
  EXPECT_THROW(EgressFilter(policy(true, {{true, "10.0.0/8"}}), plan, {}), Error);
  EXPECT_THROW(EgressFilter(policy(true, {}), plan, {"dns.example"}), Error);
  plan.gateway_ipv4 = "fec0::2";
  EXPECT_THROW(EgressFilter(policy(true, {}), plan, {}), Error);
}

TEST(EgressFilter, HostileFramesAreDroppedWithoutReadingPastThem) {
  auto f = make(policy(false, {{true, "pypi.org"}}));
  Bytes reply;
  // Every truncation of several valid frames, as its own allocation so ASan sees overreads.
  const std::vector<Bytes> frames = {syn("1.2.3.4"), udp("fec0::3", 53), dns_query("pypi.org"),
                                     dns_query("evil.example", 1, "fec0::3"),
                                     build_icmp_frame(guest_to("8.8.8.8"), 8, 0, 1, Bytes(8))};
  for (const auto& full : frames)
    for (size_t n = 0; n < full.size(); ++n) {
      const Bytes cut(full.begin(), full.begin() + static_cast<long>(n));
      const auto v = f.outbound(cut, reply);
      EXPECT_TRUE(v == Verdict::drop || (v == Verdict::reply && parse_frame(reply))) << n;
      f.inbound(cut);
    }
  // IHL 15 in a short frame; UDP length past the frame; DNS with a pointer loop; qdcount huge.
  auto ihl = udp("1.2.3.4", 9);
  ihl.resize(14 + 40);
  ihl[14] = std::byte{0x4f};
  EXPECT_EQ(f.outbound(ihl, reply), Verdict::drop);
  auto ulen = udp("1.2.3.4", 9);
  ulen[14 + 20 + 4] = std::byte{0x7f};
  EXPECT_EQ(f.outbound(ulen, reply), Verdict::drop);
  Bytes loop = dns::build_query(1, "a", 1);
  loop[12] = std::byte{0xc0};
  loop[13] = std::byte{12};
  EXPECT_EQ(f.outbound(build_udp_frame(guest_to("10.0.2.3"), 1, 53, loop), reply), Verdict::drop);
  Bytes qd = dns::build_query(1, "pypi.org", 1);
  qd[4] = std::byte{0xff};
  EXPECT_EQ(f.outbound(build_udp_frame(guest_to("10.0.2.3"), 1, 53, qd), reply), Verdict::drop);
  Bytes past = dns::build_query(1, "a", 1);
  past[12] = std::byte{0xc0};
  past[13] = std::byte{0xff};
  EXPECT_EQ(f.outbound(build_udp_frame(guest_to("10.0.2.3"), 1, 53, past), reply), Verdict::drop);
  const auto before = counts(f);
  Bytes huge(kMaxFrameLen + 1);
  EXPECT_EQ(f.outbound(huge, reply), Verdict::drop);
  EXPECT_EQ(counts(f).denied_other, before.denied_other + 1);
}

TEST(EgressFilter, RandomAndMutatedFrames) {
  FakeClock clock;
  auto f = make(policy(false, {{true, "pypi.org"}, {false, "10.0.0.0/8"}, {true, "1.0.0.0/8"}}), &clock);
  std::mt19937 rng(12345);
  const std::vector<Bytes> seeds = {
      syn("1.2.3.4"),
      syn("2001:db8::1"),
      udp("8.8.8.8", 123),
      dns_query("pypi.org"),
      dns_query("evil.example", 7, "fec0::3"),
      dns_answer("pypi.org", {{"pypi.org", dns::kTypeCname, 300, dns::encode_name("x.net")},
                              {"x.net", dns::kTypeA, 60, v4("151.101.0.1")}}),
      build_icmp_frame(guest_to("8.8.8.8"), 8, 0, 1, Bytes(8)),
      build_icmp_frame(guest_to("ff02::1:ff00:2"), 135, 0, 0, Bytes(16)),
  };
  Bytes reply;
  int replies = 0;
  for (int i = 0; i < 20000; ++i) {
    Bytes m;
    if (i % 5 == 0) {
      m.resize(rng() % 200);
      for (auto& b : m) b = static_cast<std::byte>(rng());
      if (m.size() > 14 && rng() % 2) {  // an IP ethertype, so the random bytes reach the parser
        m[12] = std::byte{static_cast<uint8_t>(rng() % 2 ? 0x08 : 0x86)};
        m[13] = std::byte{static_cast<uint8_t>(m[12] == std::byte{0x08} ? 0x00 : 0xdd)};
      }
    } else {
      m = seeds[rng() % seeds.size()];
      for (int k = 0, n = 1 + static_cast<int>(rng() % 6); k < n; ++k)
        m[rng() % m.size()] = static_cast<std::byte>(rng());
      if (rng() % 3 == 0) m.resize(rng() % (m.size() + 1));
    }
    const auto v = f.outbound(m, reply);
    if (v == Verdict::reply) {
      ++replies;
      const auto r = parse_frame(reply);
      ASSERT_TRUE(r) << i;
      ASSERT_TRUE(checksums_ok(reply, *r)) << i;
      ASSERT_LE(reply.size(), 14u + 1280);
    } else {
      ASSERT_TRUE(reply.empty());
    }
    f.inbound(m);
    if (i % 1000 == 0) clock.t += 10s;
  }
  EXPECT_GT(replies, 0);
}

}  // namespace
}  // namespace sm::net
