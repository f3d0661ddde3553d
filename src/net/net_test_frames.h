// Test helpers (b1's backend tests): frames a guest would send, built by hand with correct
// checksums, and a small parser for what a backend gives the guest. Test code only.
#pragma once

#include <arpa/inet.h>
#include <poll.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "net/backend.h"
#include "net/frame_queue.h"

namespace sm::net::testing {

using Mac = std::array<uint8_t, 6>;
inline constexpr Mac kGuestMac{0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
// libslirp's gateway MAC: 52:55 then the gateway's IPv4 address.
inline constexpr Mac kSlirpMac{0x52, 0x55, 10, 0, 2, 2};

inline std::vector<std::byte> bytes(std::initializer_list<int> v) {
  std::vector<std::byte> out;
  for (int b : v) out.push_back(static_cast<std::byte>(b));
  return out;
}

inline void put16(std::vector<std::byte>& f, size_t off, uint16_t v) {
  f[off] = static_cast<std::byte>(v >> 8);
  f[off + 1] = static_cast<std::byte>(v & 0xff);
}
inline uint16_t get16(std::span<const std::byte> f, size_t off) {
  return static_cast<uint16_t>((std::to_integer<unsigned>(f[off]) << 8) | std::to_integer<unsigned>(f[off + 1]));
}
inline uint32_t ip4(const char* s) {
  in_addr a{};
  inet_pton(AF_INET, s, &a);
  return ntohl(a.s_addr);
}

// RFC 1071 sum over data, folded, not complemented.
inline uint32_t sum16(std::span<const std::byte> d, uint32_t acc = 0) {
  for (size_t i = 0; i + 1 < d.size(); i += 2) acc += get16(d, i);
  if (d.size() % 2) acc += std::to_integer<uint32_t>(d.back()) << 8;
  return acc;
}
inline uint16_t fold(uint32_t acc) {
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(~acc & 0xffff);
}

inline std::vector<std::byte> eth(const Mac& dst, const Mac& src, uint16_t type) {
  std::vector<std::byte> f(14);
  for (int i = 0; i < 6; ++i) {
    f[i] = static_cast<std::byte>(dst[i]);
    f[6 + i] = static_cast<std::byte>(src[i]);
  }
  put16(f, 12, type);
  return f;
}

inline void put32(std::vector<std::byte>& f, size_t off, uint32_t v) {
  put16(f, off, static_cast<uint16_t>(v >> 16));
  put16(f, off + 2, static_cast<uint16_t>(v));
}
inline uint32_t get32(std::span<const std::byte> f, size_t off) {
  return (uint32_t{get16(f, off)} << 16) | get16(f, off + 2);
}

// An IPv4/UDP frame from the guest with correct IP and UDP checksums.
inline std::vector<std::byte> udp4_frame(uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport,
                                         std::span<const std::byte> payload, const Mac& dst_mac = kSlirpMac) {
  auto f = eth(dst_mac, kGuestMac, 0x0800);
  size_t ip = f.size();
  f.resize(ip + 20 + 8 + payload.size());
  f[ip] = std::byte{0x45};
  put16(f, ip + 2, static_cast<uint16_t>(20 + 8 + payload.size()));
  put16(f, ip + 4, 0x1234);  // id
  put16(f, ip + 6, 0x4000);  // DF
  f[ip + 8] = std::byte{64};
  f[ip + 9] = std::byte{17};
  put32(f, ip + 12, src);
  put32(f, ip + 16, dst);
  put16(f, ip + 10, fold(sum16(std::span(f).subspan(ip, 20))));
  size_t u = ip + 20;
  put16(f, u, sport);
  put16(f, u + 2, dport);
  put16(f, u + 4, static_cast<uint16_t>(8 + payload.size()));
  std::copy(payload.begin(), payload.end(), f.begin() + static_cast<ptrdiff_t>(u + 8));
  // Pseudo header: source, destination, zero + protocol, UDP length.
  uint32_t acc = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + 17 + 8 + payload.size();
  uint16_t c = fold(sum16(std::span(f).subspan(u), acc));
  put16(f, u + 6, c == 0 ? 0xffff : c);
  return f;
}

// An ARP reply from the guest (tpa/tha: the asker).
inline std::vector<std::byte> arp_reply(const Mac& to_mac, uint32_t to_ip, uint32_t guest_ip) {
  auto f = eth(to_mac, kGuestMac, 0x0806);
  size_t a = f.size();
  f.resize(a + 28);
  put16(f, a, 1);
  put16(f, a + 2, 0x0800);
  f[a + 4] = std::byte{6};
  f[a + 5] = std::byte{4};
  put16(f, a + 6, 2);
  for (int i = 0; i < 6; ++i) f[a + 8 + i] = static_cast<std::byte>(kGuestMac[i]);
  put32(f, a + 14, guest_ip);
  for (int i = 0; i < 6; ++i) f[a + 18 + i] = static_cast<std::byte>(to_mac[i]);
  put32(f, a + 24, to_ip);
  return f;
}

inline Mac src_mac(std::span<const std::byte> f) {
  Mac m{};
  for (int i = 0; i < 6; ++i) m[i] = std::to_integer<uint8_t>(f[6 + i]);
  return m;
}

// Takes frames for the guest from b (as the device would) until pred accepts one or the time
// runs out. Frames pred rejects are dropped (libslirp also sends router advertisements).
inline std::optional<std::vector<std::byte>> wait_rx(
    Backend& b, const std::function<bool(std::span<const std::byte>)>& pred,
    std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    for (auto f = b.peek_rx(); !f.empty(); f = b.peek_rx()) {
      std::vector<std::byte> copy(f.begin(), f.end());
      b.count_rx_delivered(copy.size());
      b.pop_rx();
      if (pred(copy)) return copy;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd p{b.rx_ready_fd(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) > 0) drain_eventfd(b.rx_ready_fd());
  }
}

}  // namespace sm::net::testing
