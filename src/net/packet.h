// Ethernet frames as the egress filter (filter.h) sees them: a parser that reads the Ethernet,
// ARP, IPv4, IPv6 (with extension headers), TCP, UDP, ICMP and ICMPv6 headers of one frame into
// offsets and fields, the Internet checksum (RFC 1071) with the TCP/UDP/ICMPv6 pseudo headers,
// and builders for the few frames the filter sends to the guest itself (TCP RST, ICMP
// unreachable, a UDP datagram).
//
// Frames come from the guest and are hostile: parse_frame() checks every length against the
// frame before reading it, never reads outside the span, allocates nothing, and returns nullopt
// for anything it cannot make sense of (truncated headers, a bad IHL, lengths beyond the frame).
// Trailing bytes after the IP packet (Ethernet padding) are ignored.
//
// Threads: pure functions, no state.
#pragma once

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sm::net {

using MacAddr = std::array<uint8_t, 6>;

inline constexpr uint16_t kEtherTypeIpv4 = 0x0800;
inline constexpr uint16_t kEtherTypeArp = 0x0806;
inline constexpr uint16_t kEtherTypeIpv6 = 0x86dd;

inline constexpr uint8_t kProtoIcmp = 1;
inline constexpr uint8_t kProtoTcp = 6;
inline constexpr uint8_t kProtoUdp = 17;
inline constexpr uint8_t kProtoIcmpv6 = 58;

// TCP flags (RFC 793 3.1).
inline constexpr uint8_t kTcpFin = 0x01, kTcpSyn = 0x02, kTcpRst = 0x04, kTcpPsh = 0x08,
                         kTcpAck = 0x10;

// An IPv4 or IPv6 address in network byte order. IPv4 uses b[0..3]; the rest stays zero so that
// comparisons and map keys work.
struct IpAddr {
  bool v6 = false;
  std::array<uint8_t, 16> b{};

  // A literal: "10.0.2.15", "fec0::3" (inet_pton's syntax). nullopt when it is not one.
  [[nodiscard]] static std::optional<IpAddr> parse(std::string_view text);
  [[nodiscard]] static IpAddr v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d);
  [[nodiscard]] std::string str() const;
  [[nodiscard]] size_t size() const { return v6 ? 16 : 4; }
  [[nodiscard]] std::span<const uint8_t> bytes() const { return {b.data(), size()}; }
  // ::ffff:a.b.c.d -> a.b.c.d (the host's stack sends those as IPv4); others unchanged.
  [[nodiscard]] IpAddr unmapped() const;
  // The first `bits` bits of this and `other` are equal (same family only).
  [[nodiscard]] bool in_prefix(const IpAddr& prefix, unsigned bits) const;

  auto operator<=>(const IpAddr&) const = default;
};

// One parsed frame. Offsets are into the frame given to parse_frame() and are always within it.
struct ParsedFrame {
  enum class Kind { arp, ipv4, ipv6, other };
  Kind kind = Kind::other;
  MacAddr dst_mac{}, src_mac{};
  uint16_t ethertype = 0;

  // IPv4 / IPv6.
  IpAddr src, dst;
  uint8_t proto = 0;          // the upper-layer protocol (after any IPv6 extension headers)
  uint8_t hop_limit = 0;      // IPv4 TTL / IPv6 hop limit
  size_t ip_offset = 0;       // the IP header
  size_t ip_len = 0;          // header + payload as the IP header says (excludes padding)
  bool fragment = false;      // an IPv4 fragment (MF or offset) or an IPv6 Fragment header
  bool has_l4 = false;        // the upper-layer header below was parsed (TCP, UDP, ICMP, ICMPv6
                              // and not a non-first fragment; fragments never set it)
  size_t l4_offset = 0;       // the upper-layer header
  size_t l4_len = 0;          // upper-layer header + data, to the end of the IP packet

  // TCP and UDP.
  uint16_t sport = 0, dport = 0;
  // TCP.
  uint32_t seq = 0, ack = 0;
  uint8_t tcp_flags = 0;
  // ICMP / ICMPv6.
  uint8_t icmp_type = 0, icmp_code = 0;
  uint16_t icmp_id = 0;  // the identifier of an echo request or reply (bytes 4-5)
  // TCP data, UDP payload (bounded by the UDP length), ICMP body after the 8-byte header.
  size_t payload_offset = 0, payload_len = 0;
};

[[nodiscard]] std::optional<ParsedFrame> parse_frame(std::span<const std::byte> frame);

// --- checksums (RFC 1071) ---
// Adds the bytes as big-endian 16-bit words (an odd last byte padded with zero) to sum.
[[nodiscard]] uint32_t checksum_add(uint32_t sum, std::span<const std::byte> data);
[[nodiscard]] uint32_t checksum_add(uint32_t sum, std::span<const uint8_t> data);
// Folds the carries and complements: the value to store in a checksum field.
[[nodiscard]] uint16_t checksum_finish(uint32_t sum);
[[nodiscard]] uint16_t inet_checksum(std::span<const std::byte> data);
// The pseudo-header sum for TCP/UDP over IPv4 (RFC 793) or IPv6 (RFC 8200 8.1).
[[nodiscard]] uint32_t pseudo_header_sum(const IpAddr& src, const IpAddr& dst, uint8_t proto,
                                         uint32_t l4_len);
// True when the parsed frame's IPv4 header checksum (IPv4 only; IPv6 has none) and its TCP, UDP,
// ICMP or ICMPv6 checksum verify. A UDP-over-IPv4 checksum of zero (none) verifies. Tests use it.
[[nodiscard]] bool checksums_ok(std::span<const std::byte> frame, const ParsedFrame& f);

// --- builders: whole Ethernet frames, every checksum filled in ---
struct L2L3 {
  MacAddr src_mac{}, dst_mac{};
  IpAddr src, dst;  // same family
  uint8_t hop_limit = 64;  // IPv4 TTL / IPv6 hop limit
};
// An IP packet (IPv4: no options, TTL hop_limit, DF clear, id 0; IPv6: hop limit) carrying l4, whose
// checksum the caller has filled in (see the helpers below).
[[nodiscard]] std::vector<std::byte> build_ip_frame(const L2L3& a, uint8_t proto,
                                                    std::span<const std::byte> l4);
[[nodiscard]] std::vector<std::byte> build_udp_frame(const L2L3& a, uint16_t sport,
                                                     uint16_t dport,
                                                     std::span<const std::byte> payload);
[[nodiscard]] std::vector<std::byte> build_tcp_frame(const L2L3& a, uint16_t sport,
                                                     uint16_t dport, uint32_t seq, uint32_t ack,
                                                     uint8_t flags, uint16_t window,
                                                     std::span<const std::byte> payload);
// ICMP (IPv4) or ICMPv6 (a.src.v6): type, code, the 4 bytes after the checksum, then body.
[[nodiscard]] std::vector<std::byte> build_icmp_frame(const L2L3& a, uint8_t type, uint8_t code,
                                                      uint32_t rest,
                                                      std::span<const std::byte> body);

// The TCP RST that refuses the parsed segment (RFC 793 3.4 "Reset Generation"): to an ACK,
// <SEQ=SEG.ACK><CTL=RST>; otherwise <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>, SYN and FIN
// counting one each. Addresses and ports swapped; src MAC = the frame's dst MAC unless that is
// multicast, then `gateway_mac`. f must be TCP with has_l4.
[[nodiscard]] std::vector<std::byte> build_tcp_rst(const ParsedFrame& f,
                                                   const MacAddr& gateway_mac);
// The "administratively prohibited" unreachable for the parsed packet: ICMP type 3 code 13
// quoting the IP header and as much data as keeps the reply within 576 bytes (RFC 1812
// 4.3.2.3), or ICMPv6 type 1 code 1 quoting as much as fits in 1280 bytes (RFC 4443 2.4(c)).
// From the original destination to the original source.
[[nodiscard]] std::vector<std::byte> build_unreachable(std::span<const std::byte> frame,
                                                       const ParsedFrame& f,
                                                       const MacAddr& gateway_mac);
// The reply's addressing for a frame: MACs and IPs swapped (see build_tcp_rst).
[[nodiscard]] L2L3 reply_addressing(const ParsedFrame& f, const MacAddr& gateway_mac);

}  // namespace sm::net
