// packet.h: checksums against independent values, builders and the parser round trip, and the
// parser's refusal of truncated and lying frames.
#include "net/packet.h"

#include <gtest/gtest.h>

#include <random>

namespace sm::net {
namespace {

std::vector<std::byte> bytes(std::initializer_list<int> v) {
  std::vector<std::byte> out;
  for (int x : v) out.push_back(static_cast<std::byte>(x));
  return out;
}

// A second, deliberately simple checksum: sum all 16-bit words in 64 bits, fold once by modulo.
uint16_t naive_checksum(std::span<const std::byte> d) {
  uint64_t sum = 0;
  for (size_t i = 0; i < d.size(); i += 2) {
    uint64_t w = static_cast<uint64_t>(d[i]) << 8;
    if (i + 1 < d.size()) w |= static_cast<uint64_t>(d[i + 1]);
    sum += w;
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum & 0xffff);
}


const MacAddr kGuestMac{0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
const MacAddr kGwMac{0x52, 0x55, 0x0a, 0x00, 0x02, 0x02};

L2L3 guest_to(const char* dst, const char* src = nullptr) {
  L2L3 a;
  a.src_mac = kGuestMac;
  a.dst_mac = kGwMac;
  a.dst = *IpAddr::parse(dst);
  a.src = *IpAddr::parse(src ? src : (a.dst.v6 ? "fec0::15" : "10.0.2.15"));
  return a;
}

TEST(PacketChecksum, KnownIpv4Header) {
  // A captured IPv4 header (the RFC 1071 / Wikipedia example): its checksum is 0xb861.
  auto h = bytes({0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0,
                  0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7});
  EXPECT_EQ(inet_checksum(h), 0xb861);
  h[10] = std::byte{0xb8};
  h[11] = std::byte{0x61};
  EXPECT_EQ(inet_checksum(h), 0);
}

TEST(PacketChecksum, RfcExampleSum) {
  // RFC 1071 1.3's example bytes: 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2 (checksum 0x220d).
  const auto d = bytes({0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7});
  EXPECT_EQ(inet_checksum(d), 0x220d);
}

TEST(PacketChecksum, MatchesNaiveOnRandomData) {
  std::mt19937 rng(1);
  for (int i = 0; i < 200; ++i) {
    std::vector<std::byte> d(rng() % 70000);
    for (auto& b : d) b = static_cast<std::byte>(rng());
    ASSERT_EQ(inet_checksum(d), naive_checksum(d)) << d.size();
  }
}

TEST(PacketBuild, TcpRoundTripIpv4) {
  const auto payload = bytes({'h', 'i', '!'});
  const auto frame = build_tcp_frame(guest_to("93.184.216.34"), 40000, 443, 1000, 2000,
                                     kTcpAck | kTcpPsh, 512, payload);
  const auto f = parse_frame(frame);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->kind, ParsedFrame::Kind::ipv4);
  EXPECT_EQ(f->dst_mac, kGwMac);
  EXPECT_EQ(f->src_mac, kGuestMac);
  EXPECT_EQ(f->src.str(), "10.0.2.15");
  EXPECT_EQ(f->dst.str(), "93.184.216.34");
  EXPECT_EQ(f->proto, kProtoTcp);
  ASSERT_TRUE(f->has_l4);
  EXPECT_EQ(f->sport, 40000);
  EXPECT_EQ(f->dport, 443);
  EXPECT_EQ(f->seq, 1000u);
  EXPECT_EQ(f->ack, 2000u);
  EXPECT_EQ(f->tcp_flags, kTcpAck | kTcpPsh);
  EXPECT_EQ(f->payload_len, 3u);
  EXPECT_EQ(std::to_integer<char>(frame[f->payload_offset]), 'h');
  EXPECT_FALSE(f->fragment);
  EXPECT_TRUE(checksums_ok(frame, *f));

  // Independent check: the TCP checksum over a hand-made pseudo header.
  std::vector<std::byte> ph = bytes({10, 0, 2, 15, 93, 184, 216, 34, 0, kProtoTcp, 0, 23});
  ph.insert(ph.end(), frame.begin() + 34, frame.end());
  EXPECT_EQ(naive_checksum(ph), 0);
  EXPECT_EQ(naive_checksum(std::span(frame).subspan(14, 20)), 0);

  auto bad = frame;
  bad.back() ^= std::byte{1};
  EXPECT_FALSE(checksums_ok(bad, *parse_frame(bad)));
}

TEST(PacketBuild, UdpAndIcmpv6RoundTripIpv6) {
  const auto payload = bytes({1, 2, 3, 4, 5});
  const auto frame = build_udp_frame(guest_to("2001:db8::1"), 5353, 53, payload);
  auto f = parse_frame(frame);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->kind, ParsedFrame::Kind::ipv6);
  EXPECT_EQ(f->dst.str(), "2001:db8::1");
  EXPECT_EQ(f->proto, kProtoUdp);
  EXPECT_EQ(f->dport, 53);
  EXPECT_EQ(f->payload_len, 5u);
  EXPECT_TRUE(checksums_ok(frame, *f));
  // Independent: IPv6 pseudo header (src, dst, 32-bit length, 3 zero bytes, next header).
  std::vector<std::byte> ph;
  for (auto b : f->src.bytes()) ph.push_back(static_cast<std::byte>(b));
  for (auto b : f->dst.bytes()) ph.push_back(static_cast<std::byte>(b));
  for (int b : {0, 0, 0, 13, 0, 0, 0, int{kProtoUdp}}) ph.push_back(static_cast<std::byte>(b));
  ph.insert(ph.end(), frame.begin() + 54, frame.end());
  EXPECT_EQ(naive_checksum(ph), 0);

  const auto echo = build_icmp_frame(guest_to("2001:db8::1"), 128, 0, 0x12340001, payload);
  f = parse_frame(echo);
  ASSERT_TRUE(f && f->has_l4);
  EXPECT_EQ(f->proto, kProtoIcmpv6);
  EXPECT_EQ(f->icmp_type, 128);
  EXPECT_TRUE(checksums_ok(echo, *f));
}

TEST(PacketBuild, RstToSyn) {
  const auto syn = build_tcp_frame(guest_to("1.2.3.4"), 40000, 80, 0xfffffff0, 0, kTcpSyn, 65535, {});
  const auto f = parse_frame(syn);
  const auto rst = build_tcp_rst(*f, kGwMac);
  const auto r = parse_frame(rst);
  ASSERT_TRUE(r && r->has_l4);
  EXPECT_EQ(r->src.str(), "1.2.3.4");
  EXPECT_EQ(r->dst.str(), "10.0.2.15");
  EXPECT_EQ(r->src_mac, kGwMac);
  EXPECT_EQ(r->dst_mac, kGuestMac);
  EXPECT_EQ(r->sport, 80);
  EXPECT_EQ(r->dport, 40000);
  EXPECT_EQ(r->tcp_flags, kTcpRst | kTcpAck);
  EXPECT_EQ(r->seq, 0u);
  EXPECT_EQ(r->ack, 0xfffffff1u);
  EXPECT_TRUE(checksums_ok(rst, *r));
}

TEST(PacketBuild, RstToAckAndToDataWithFin) {
  const auto seg = build_tcp_frame(guest_to("1.2.3.4"), 1, 2, 100, 777, kTcpAck, 1, bytes({1, 2}));
  auto r = parse_frame(build_tcp_rst(*parse_frame(seg), kGwMac));
  EXPECT_EQ(r->tcp_flags, kTcpRst);
  EXPECT_EQ(r->seq, 777u);
  const auto fin = build_tcp_frame(guest_to("1.2.3.4"), 1, 2, 100, 0, kTcpFin, 1, bytes({1, 2}));
  r = parse_frame(build_tcp_rst(*parse_frame(fin), kGwMac));
  EXPECT_EQ(r->tcp_flags, kTcpRst | kTcpAck);
  EXPECT_EQ(r->ack, 103u);  // 2 data bytes + FIN
}

TEST(PacketBuild, UnreachableQuotesOriginal) {
  std::vector<std::byte> big(1000, std::byte{0x5a});
  const auto udp = build_udp_frame(guest_to("8.8.4.4"), 1234, 9999, big);
  const auto f = parse_frame(udp);
  const auto icmp = build_unreachable(udp, *f, kGwMac);
  const auto r = parse_frame(icmp);
  ASSERT_TRUE(r && r->has_l4);
  EXPECT_EQ(r->icmp_type, 3);
  EXPECT_EQ(r->icmp_code, 13);
  EXPECT_EQ(r->src.str(), "8.8.4.4");
  EXPECT_EQ(icmp.size(), 14u + 576u);
  EXPECT_TRUE(std::equal(icmp.begin() + 14 + 28, icmp.end(), udp.begin() + 14));
  EXPECT_TRUE(checksums_ok(icmp, *r));

  const auto udp6 = build_udp_frame(guest_to("2001:db8::9"), 1234, 9999, big);
  const auto icmp6 = build_unreachable(udp6, *parse_frame(udp6), kGwMac);
  const auto r6 = parse_frame(icmp6);
  ASSERT_TRUE(r6 && r6->has_l4);
  EXPECT_EQ(r6->icmp_type, 1);
  EXPECT_EQ(r6->icmp_code, 1);
  EXPECT_EQ(icmp6.size(), 14u + 40 + 8 + (udp6.size() - 14));  // all of it fits in 1280
  EXPECT_TRUE(std::equal(icmp6.begin() + 14 + 48, icmp6.end(), udp6.begin() + 14));
  EXPECT_TRUE(checksums_ok(icmp6, *r6));
}

TEST(PacketParse, EveryTruncationOfAnIpPacketIsRefused) {
  for (const char* dst : {"1.2.3.4", "2001:db8::1"}) {
    const auto frame = build_tcp_frame(guest_to(dst), 1, 2, 3, 4, kTcpSyn, 5, bytes({9, 9, 9}));
    for (size_t n = 0; n < frame.size(); ++n) {
      // Copy so that ASan sees reads past the end of the shorter buffer.
      const std::vector<std::byte> cut(frame.begin(), frame.begin() + static_cast<long>(n));
      EXPECT_FALSE(parse_frame(cut)) << dst << " " << n;
    }
    std::vector<std::byte> padded = frame;
    padded.resize(frame.size() + 10);  // Ethernet padding after the packet is fine
    EXPECT_TRUE(parse_frame(padded));
  }
}

TEST(PacketParse, LyingHeaders) {
  const auto frame = build_udp_frame(guest_to("1.2.3.4"), 1, 2, bytes({1, 2, 3, 4}));
  auto ihl15 = std::vector<std::byte>(frame.begin(), frame.begin() + 14 + 40);
  ihl15[14] = std::byte{0x4f};  // IHL 15: a 60-byte header in a 40-byte packet
  EXPECT_FALSE(parse_frame(ihl15));
  auto ihl4 = frame;
  ihl4[14] = std::byte{0x44};
  EXPECT_FALSE(parse_frame(ihl4));
  auto udp_long = frame;
  udp_long[14 + 20 + 5] = std::byte{200};  // UDP length 200 > what the packet holds
  EXPECT_FALSE(parse_frame(udp_long));
  auto total_long = frame;
  total_long[14 + 3] = std::byte{0xff};
  EXPECT_FALSE(parse_frame(total_long));
  auto v5 = frame;
  v5[14] = std::byte{0x55};
  EXPECT_FALSE(parse_frame(v5));

  const auto tcp = build_tcp_frame(guest_to("1.2.3.4"), 1, 2, 3, 4, kTcpSyn, 5, {});
  auto doff = tcp;
  doff[14 + 20 + 12] = std::byte{0xf0};  // data offset 60 > 20-byte segment
  EXPECT_FALSE(parse_frame(doff));

  const auto v6 = build_udp_frame(guest_to("2001:db8::1"), 1, 2, bytes({1}));
  auto plen = v6;
  plen[14 + 4] = std::byte{0x10};  // payload length beyond the frame
  EXPECT_FALSE(parse_frame(plen));
}

TEST(PacketParse, Ipv6ExtensionHeadersAndFragments) {
  // Hop-by-hop (8 bytes) then UDP.
  auto f0 = build_udp_frame(guest_to("2001:db8::1"), 7, 53, bytes({1, 2}));
  std::vector<std::byte> frame(f0.begin(), f0.begin() + 54);
  frame[14 + 6] = std::byte{0};                        // next header: hop-by-hop
  const uint16_t plen = static_cast<uint16_t>(8 + f0.size() - 54);
  frame[14 + 4] = static_cast<std::byte>(plen >> 8);
  frame[14 + 5] = static_cast<std::byte>(plen);
  for (int b : {int{kProtoUdp}, 0, 1, 4, 0, 0, 0, 0}) frame.push_back(static_cast<std::byte>(b));
  frame.insert(frame.end(), f0.begin() + 54, f0.end());
  auto f = parse_frame(frame);
  ASSERT_TRUE(f);
  EXPECT_TRUE(f->has_l4);
  EXPECT_EQ(f->proto, kProtoUdp);
  EXPECT_EQ(f->dport, 53);
  EXPECT_EQ(f->l4_offset, 14u + 48);

  frame[14 + 40 + 1] = std::byte{5};  // extension length beyond the packet
  EXPECT_FALSE(parse_frame(frame));
  frame[14 + 40 + 1] = std::byte{0};
  frame[14 + 6] = std::byte{44};  // a Fragment header instead
  f = parse_frame(frame);
  ASSERT_TRUE(f);
  EXPECT_TRUE(f->fragment);
  EXPECT_FALSE(f->has_l4);

  auto v4frag = build_udp_frame(guest_to("1.2.3.4"), 1, 2, bytes({1}));
  v4frag[14 + 6] = std::byte{0x20};  // MF
  f = parse_frame(v4frag);
  ASSERT_TRUE(f);
  EXPECT_TRUE(f->fragment);
  EXPECT_FALSE(f->has_l4);
}

TEST(PacketAddr, ParsePrefixUnmapped) {
  EXPECT_FALSE(IpAddr::parse("10.0.0"));
  EXPECT_FALSE(IpAddr::parse(""));
  EXPECT_EQ(IpAddr::parse("::ffff:127.0.0.1")->unmapped(), IpAddr::v4(127, 0, 0, 1));
  EXPECT_EQ(IpAddr::parse("fec0::1")->unmapped().str(), "fec0::1");
  EXPECT_TRUE(IpAddr::parse("10.200.3.4")->in_prefix(*IpAddr::parse("10.0.0.0"), 8));
  EXPECT_FALSE(IpAddr::parse("11.0.0.1")->in_prefix(*IpAddr::parse("10.0.0.0"), 8));
  EXPECT_TRUE(IpAddr::parse("172.31.0.1")->in_prefix(*IpAddr::parse("172.16.0.0"), 12));
  EXPECT_FALSE(IpAddr::parse("172.32.0.1")->in_prefix(*IpAddr::parse("172.16.0.0"), 12));
  EXPECT_TRUE(IpAddr::parse("fd12::1")->in_prefix(*IpAddr::parse("fc00::"), 7));
  EXPECT_FALSE(IpAddr::parse("10.0.0.1")->in_prefix(*IpAddr::parse("::"), 0));  // families differ
}

}  // namespace
}  // namespace sm::net
