// Frame parsing, checksums and reply builders (see packet.h). Every read goes through rd8/rd16/
// rd32 after a length check against the span; offsets are size_t and compared before they are
// added to, so nothing here can read past the frame.
#include "net/packet.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

namespace sm::net {
namespace {

uint8_t rd8(std::span<const std::byte> s, size_t off) { return static_cast<uint8_t>(s[off]); }
uint16_t rd16(std::span<const std::byte> s, size_t off) {
  return static_cast<uint16_t>(rd8(s, off) << 8 | rd8(s, off + 1));
}
uint32_t rd32(std::span<const std::byte> s, size_t off) {
  return static_cast<uint32_t>(rd16(s, off)) << 16 | rd16(s, off + 2);
}

void put8(std::vector<std::byte>& v, uint8_t x) { v.push_back(static_cast<std::byte>(x)); }
void put16(std::vector<std::byte>& v, uint16_t x) {
  put8(v, static_cast<uint8_t>(x >> 8));
  put8(v, static_cast<uint8_t>(x));
}
void put32(std::vector<std::byte>& v, uint32_t x) {
  put16(v, static_cast<uint16_t>(x >> 16));
  put16(v, static_cast<uint16_t>(x));
}
void put_bytes(std::vector<std::byte>& v, std::span<const uint8_t> b) {
  for (uint8_t x : b) put8(v, x);
}
void set16(std::vector<std::byte>& v, size_t off, uint16_t x) {
  v[off] = static_cast<std::byte>(x >> 8);
  v[off + 1] = static_cast<std::byte>(x);
}

IpAddr read_ip(std::span<const std::byte> s, size_t off, bool v6) {
  IpAddr a;
  a.v6 = v6;
  for (size_t i = 0; i < a.size(); ++i) a.b[i] = rd8(s, off + i);
  return a;
}

bool is_multicast_mac(const MacAddr& m) { return (m[0] & 1) != 0; }

// Parses the upper-layer header at f.l4_offset (f.l4_len bytes to the end of the IP packet).
// False when it is truncated or its own length fields lie.
bool parse_l4(std::span<const std::byte> s, ParsedFrame& f) {
  const size_t o = f.l4_offset, n = f.l4_len;
  switch (f.proto) {
    case kProtoTcp: {
      if (n < 20) return false;
      const size_t doff = static_cast<size_t>(rd8(s, o + 12) >> 4) * 4;
      if (doff < 20 || doff > n) return false;
      f.sport = rd16(s, o);
      f.dport = rd16(s, o + 2);
      f.seq = rd32(s, o + 4);
      f.ack = rd32(s, o + 8);
      f.tcp_flags = rd8(s, o + 13);
      f.payload_offset = o + doff;
      f.payload_len = n - doff;
      break;
    }
    case kProtoUdp: {
      if (n < 8) return false;
      const size_t ulen = rd16(s, o + 4);
      if (ulen < 8 || ulen > n) return false;
      f.sport = rd16(s, o);
      f.dport = rd16(s, o + 2);
      f.payload_offset = o + 8;
      f.payload_len = ulen - 8;
      break;
    }
    case kProtoIcmp:
    case kProtoIcmpv6: {
      // ICMP for IPv4 and ICMPv6 for IPv6 only; the other pairing is an unknown protocol.
      if ((f.proto == kProtoIcmp) != (f.kind == ParsedFrame::Kind::ipv4)) return true;
      if (n < 8) return false;  // every message type has type, code, checksum + 4 bytes
      f.icmp_type = rd8(s, o);
      f.icmp_code = rd8(s, o + 1);
      f.icmp_id = rd16(s, o + 4);
      f.payload_offset = o + 8;
      f.payload_len = n - 8;
      break;
    }
    default:
      return true;  // another protocol: judged by address only
  }
  f.has_l4 = true;
  return true;
}

bool parse_ipv4(std::span<const std::byte> s, ParsedFrame& f) {
  const size_t o = f.ip_offset, avail = s.size() - o;
  if (avail < 20) return false;
  const uint8_t vihl = rd8(s, o);
  if ((vihl >> 4) != 4) return false;
  const size_t ihl = static_cast<size_t>(vihl & 0x0f) * 4;
  const size_t total = rd16(s, o + 2);
  if (ihl < 20 || ihl > avail || total < ihl || total > avail) return false;
  f.ip_len = total;
  f.hop_limit = rd8(s, o + 8);
  f.proto = rd8(s, o + 9);
  f.src = read_ip(s, o + 12, false);
  f.dst = read_ip(s, o + 16, false);
  const uint16_t frag = rd16(s, o + 6);
  f.fragment = (frag & 0x2000) != 0 || (frag & 0x1fff) != 0;
  f.l4_offset = o + ihl;
  f.l4_len = total - ihl;
  if (f.fragment) return true;  // no whole upper-layer header to judge
  return parse_l4(s, f);
}

bool parse_ipv6(std::span<const std::byte> s, ParsedFrame& f) {
  const size_t o = f.ip_offset, avail = s.size() - o;
  if (avail < 40) return false;
  if ((rd8(s, o) >> 4) != 6) return false;
  const size_t plen = rd16(s, o + 4);
  if (plen > avail - 40) return false;  // includes jumbograms (payload length 0 + option): unsupported
  f.ip_len = 40 + plen;
  f.hop_limit = rd8(s, o + 7);
  f.src = read_ip(s, o + 8, true);
  f.dst = read_ip(s, o + 24, true);
  uint8_t next = rd8(s, o + 6);
  size_t off = o + 40;
  const size_t end = o + f.ip_len;
  // Extension headers (RFC 8200 4): a bounded number, each inside the packet.
  for (int i = 0; i < 16; ++i) {
    if (next == 0 || next == 43 || next == 60) {  // hop-by-hop, routing, destination options
      if (end - off < 8) return false;
      const size_t len = (static_cast<size_t>(rd8(s, off + 1)) + 1) * 8;
      if (len > end - off) return false;
      next = rd8(s, off);
      off += len;
    } else if (next == 51) {  // AH (RFC 4302): length in 4-byte units, minus 2
      if (end - off < 8) return false;
      const size_t len = (static_cast<size_t>(rd8(s, off + 1)) + 2) * 4;
      if (len > end - off) return false;
      next = rd8(s, off);
      off += len;
    } else if (next == 44) {  // Fragment
      if (end - off < 8) return false;
      f.fragment = true;
      next = rd8(s, off);
      off += 8;
    } else {
      f.proto = next;
      f.l4_offset = off;
      f.l4_len = end - off;
      if (f.fragment) return true;
      return parse_l4(s, f);
    }
  }
  return false;  // too many extension headers to be honest traffic
}

}  // namespace

std::optional<IpAddr> IpAddr::parse(std::string_view text) {
  if (text.empty() || text.size() > 64) return std::nullopt;
  const std::string t(text);
  IpAddr a;
  if (inet_pton(AF_INET, t.c_str(), a.b.data()) == 1) return a;
  a.v6 = true;
  if (inet_pton(AF_INET6, t.c_str(), a.b.data()) == 1) return a;
  return std::nullopt;
}

IpAddr IpAddr::v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  IpAddr x;
  x.b[0] = a;
  x.b[1] = b;
  x.b[2] = c;
  x.b[3] = d;
  return x;
}

std::string IpAddr::str() const {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(v6 ? AF_INET6 : AF_INET, b.data(), buf, sizeof buf);
  return buf;
}

IpAddr IpAddr::unmapped() const {
  if (!v6) return *this;
  for (size_t i = 0; i < 10; ++i)
    if (b[i] != 0) return *this;
  if (b[10] != 0xff || b[11] != 0xff) return *this;
  return v4(b[12], b[13], b[14], b[15]);
}

bool IpAddr::in_prefix(const IpAddr& prefix, unsigned bits) const {
  if (v6 != prefix.v6 || bits > size() * 8) return false;
  const size_t whole = bits / 8;
  if (std::memcmp(b.data(), prefix.b.data(), whole) != 0) return false;
  const unsigned rest = bits % 8;
  if (rest == 0) return true;
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (b[whole] & mask) == (prefix.b[whole] & mask);
}

std::optional<ParsedFrame> parse_frame(std::span<const std::byte> frame) {
  ParsedFrame f;
  if (frame.size() < 14) return std::nullopt;
  for (size_t i = 0; i < 6; ++i) {
    f.dst_mac[i] = rd8(frame, i);
    f.src_mac[i] = rd8(frame, 6 + i);
  }
  f.ethertype = rd16(frame, 12);
  f.ip_offset = 14;
  switch (f.ethertype) {
    case kEtherTypeArp:
      f.kind = ParsedFrame::Kind::arp;
      if (frame.size() < 14 + 28) return std::nullopt;  // Ethernet/IPv4 ARP is 28 bytes
      return f;
    case kEtherTypeIpv4:
      f.kind = ParsedFrame::Kind::ipv4;
      if (!parse_ipv4(frame, f)) return std::nullopt;
      return f;
    case kEtherTypeIpv6:
      f.kind = ParsedFrame::Kind::ipv6;
      if (!parse_ipv6(frame, f)) return std::nullopt;
      return f;
    default:
      f.kind = ParsedFrame::Kind::other;
      return f;
  }
}

uint32_t checksum_add(uint32_t sum, std::span<const std::byte> data) {
  size_t i = 0;
  // Fold as we go so that sums of 64 KiB packets cannot overflow 32 bits.
  for (; i + 1 < data.size(); i += 2) {
    sum += static_cast<uint32_t>(static_cast<uint8_t>(data[i]) << 8 | static_cast<uint8_t>(data[i + 1]));
    sum = (sum & 0xffff) + (sum >> 16);
  }
  if (i < data.size()) {
    sum += static_cast<uint32_t>(static_cast<uint8_t>(data[i]) << 8);
    sum = (sum & 0xffff) + (sum >> 16);
  }
  return sum;
}

uint32_t checksum_add(uint32_t sum, std::span<const uint8_t> data) {
  return checksum_add(sum, std::as_bytes(data));
}

uint16_t checksum_finish(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum & 0xffff);
}

uint16_t inet_checksum(std::span<const std::byte> data) {
  return checksum_finish(checksum_add(0, data));
}

uint32_t pseudo_header_sum(const IpAddr& src, const IpAddr& dst, uint8_t proto, uint32_t l4_len) {
  uint32_t sum = checksum_add(0, src.bytes());
  sum = checksum_add(sum, dst.bytes());
  sum += proto;
  sum += l4_len >> 16;
  sum += l4_len & 0xffff;
  return sum;
}

bool checksums_ok(std::span<const std::byte> frame, const ParsedFrame& f) {
  if (f.kind != ParsedFrame::Kind::ipv4 && f.kind != ParsedFrame::Kind::ipv6) return false;
  if (f.kind == ParsedFrame::Kind::ipv4 &&
      inet_checksum(frame.subspan(f.ip_offset, f.l4_offset - f.ip_offset)) != 0)
    return false;
  if (!f.has_l4) return true;
  size_t len = f.l4_len;
  if (f.proto == kProtoUdp) {
    len = f.payload_len + 8;
    if (f.kind == ParsedFrame::Kind::ipv4 && rd16(frame, f.l4_offset + 6) == 0) return true;
  }
  const auto l4 = frame.subspan(f.l4_offset, len);
  uint32_t sum = 0;
  if (f.proto != kProtoIcmp) sum = pseudo_header_sum(f.src, f.dst, f.proto, static_cast<uint32_t>(len));
  return checksum_finish(checksum_add(sum, l4)) == 0;
}

std::vector<std::byte> build_ip_frame(const L2L3& a, uint8_t proto, std::span<const std::byte> l4) {
  std::vector<std::byte> v;
  v.reserve(14 + 40 + l4.size());
  put_bytes(v, a.dst_mac);
  put_bytes(v, a.src_mac);
  if (!a.src.v6) {
    put16(v, kEtherTypeIpv4);
    const size_t h = v.size();
    put8(v, 0x45);
    put8(v, 0);
    put16(v, static_cast<uint16_t>(20 + l4.size()));
    put16(v, 0);  // id
    put16(v, 0);  // flags, fragment offset
    put8(v, a.hop_limit);
    put8(v, proto);
    put16(v, 0);  // checksum, below
    put_bytes(v, a.src.bytes());
    put_bytes(v, a.dst.bytes());
    set16(v, h + 10, inet_checksum(std::span(v).subspan(h, 20)));
  } else {
    put16(v, kEtherTypeIpv6);
    put32(v, 0x60000000);
    put16(v, static_cast<uint16_t>(l4.size()));
    put8(v, proto);
    put8(v, a.hop_limit);
    put_bytes(v, a.src.bytes());
    put_bytes(v, a.dst.bytes());
  }
  v.insert(v.end(), l4.begin(), l4.end());
  return v;
}

std::vector<std::byte> build_udp_frame(const L2L3& a, uint16_t sport, uint16_t dport,
                                       std::span<const std::byte> payload) {
  std::vector<std::byte> u;
  const auto len = static_cast<uint16_t>(8 + payload.size());
  put16(u, sport);
  put16(u, dport);
  put16(u, len);
  put16(u, 0);
  u.insert(u.end(), payload.begin(), payload.end());
  uint16_t c = checksum_finish(checksum_add(pseudo_header_sum(a.src, a.dst, kProtoUdp, len), u));
  if (c == 0) c = 0xffff;  // zero means "no checksum" (RFC 768)
  set16(u, 6, c);
  return build_ip_frame(a, kProtoUdp, u);
}

std::vector<std::byte> build_tcp_frame(const L2L3& a, uint16_t sport, uint16_t dport, uint32_t seq,
                                       uint32_t ack, uint8_t flags, uint16_t window,
                                       std::span<const std::byte> payload) {
  std::vector<std::byte> t;
  put16(t, sport);
  put16(t, dport);
  put32(t, seq);
  put32(t, ack);
  put8(t, 5 << 4);
  put8(t, flags);
  put16(t, window);
  put16(t, 0);  // checksum
  put16(t, 0);  // urgent pointer
  t.insert(t.end(), payload.begin(), payload.end());
  const auto len = static_cast<uint32_t>(t.size());
  set16(t, 16, checksum_finish(checksum_add(pseudo_header_sum(a.src, a.dst, kProtoTcp, len), t)));
  return build_ip_frame(a, kProtoTcp, t);
}

std::vector<std::byte> build_icmp_frame(const L2L3& a, uint8_t type, uint8_t code, uint32_t rest,
                                        std::span<const std::byte> body) {
  std::vector<std::byte> m;
  put8(m, type);
  put8(m, code);
  put16(m, 0);
  put32(m, rest);
  m.insert(m.end(), body.begin(), body.end());
  const uint8_t proto = a.src.v6 ? kProtoIcmpv6 : kProtoIcmp;
  // ICMPv6 includes the pseudo header (RFC 4443 2.3); ICMP for IPv4 does not.
  const uint32_t sum =
      a.src.v6 ? pseudo_header_sum(a.src, a.dst, proto, static_cast<uint32_t>(m.size())) : 0;
  set16(m, 2, checksum_finish(checksum_add(sum, m)));
  return build_ip_frame(a, proto, m);
}

L2L3 reply_addressing(const ParsedFrame& f, const MacAddr& gateway_mac) {
  L2L3 a;
  a.src_mac = is_multicast_mac(f.dst_mac) ? gateway_mac : f.dst_mac;
  a.dst_mac = f.src_mac;
  a.src = f.dst;
  a.dst = f.src;
  return a;
}

std::vector<std::byte> build_tcp_rst(const ParsedFrame& f, const MacAddr& gateway_mac) {
  const L2L3 a = reply_addressing(f, gateway_mac);
  if (f.tcp_flags & kTcpAck) return build_tcp_frame(a, f.dport, f.sport, f.ack, 0, kTcpRst, 0, {});
  uint32_t seg_len = static_cast<uint32_t>(f.payload_len);
  if (f.tcp_flags & kTcpSyn) ++seg_len;
  if (f.tcp_flags & kTcpFin) ++seg_len;
  return build_tcp_frame(a, f.dport, f.sport, 0, f.seq + seg_len, kTcpRst | kTcpAck, 0, {});
}

std::vector<std::byte> build_unreachable(std::span<const std::byte> frame, const ParsedFrame& f,
                                         const MacAddr& gateway_mac) {
  const L2L3 a = reply_addressing(f, gateway_mac);
  const bool v6 = f.kind == ParsedFrame::Kind::ipv6;
  // Room for the quote: the minimum reassembly size / IPv6 minimum MTU, less our headers.
  const size_t room = v6 ? 1280 - 40 - 8 : 576 - 20 - 8;
  const auto quote = frame.subspan(f.ip_offset, std::min(f.ip_len, room));
  return v6 ? build_icmp_frame(a, 1, 1, 0, quote) : build_icmp_frame(a, 3, 13, 0, quote);
}

}  // namespace sm::net
