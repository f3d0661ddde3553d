// Shared by the randomized unit test (fuzz_input_test.cc) and the libFuzzer target
// (fuzz/net_fuzz.cc): one input is a sequence of Ethernet frames the guest sends and frames the
// outside sends it, run through the egress filter (EgressFilter: the frame parser, the policy,
// DNS judging and learning, the flow table, the replies it builds) under one of four policies.
// Every reply the filter builds must itself parse. The only acceptable outcomes are verdicts;
// sm::Error for a frame is tolerated (the backend drops the frame and counts it, as
// filter_outbound does); any other exception, a crash or a sanitizer report is a bug.
//
// Input: byte 0 picks the policy; then records of [u8 flags][u16 length][bytes]: flags bit 0 =
// inbound (to the guest), else outbound; a DNS-shaped prefix is added when bit 1 is set so that
// short inputs reach the DNS parsers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <vector>

#include "common/error.h"
#include "net/dns.h"
#include "net/filter.h"
#include "net/packet.h"

namespace sm::net::fuzz {

struct Outcome {
  int frames = 0;
  int passed = 0;
  int replies = 0;
};

inline EgressPolicy policy_for(uint8_t pick) {
  EgressPolicy p;
  switch (pick % 4) {
    case 0: p.allow_host_loopback = true; break;  // allow everything: the flow table only
    case 1:
      p.default_allow = false;
      p.rules = {{true, "files.test"}, {true, "198.51.100.0/24"}, {false, "198.51.100.7"}};
      break;
    case 2: p.rules = {{false, "10.0.0.0/8"}, {false, "blocked.test"}, {false, "fc00::/7"}}; break;
    default: p.default_allow = false; break;
  }
  return p;
}

// A UDP/IPv4 frame from the guest to the NAT's DNS address carrying `msg`, or the answer to it.
inline std::vector<std::byte> dns_frame(std::span<const std::byte> msg, bool inbound) {
  L2L3 a;
  a.src_mac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
  a.dst_mac = {0x52, 0x55, 10, 0, 2, 2};
  a.src = IpAddr::v4(10, 0, 2, 15);
  a.dst = IpAddr::v4(10, 0, 2, 3);
  if (inbound) {
    std::swap(a.src, a.dst);
    std::swap(a.src_mac, a.dst_mac);
    return build_udp_frame(a, 53, 40000, msg);
  }
  return build_udp_frame(a, 40000, 53, msg);
}

inline Outcome run_one(std::span<const uint8_t> in) {
  Outcome o;
  if (in.empty()) return o;
  AddressPlan plan;
  const EgressPolicy policy = policy_for(in[0]);
  EgressFilter f(policy, plan, {plan.dns_ipv4, plan.dns_ipv6, "192.0.2.53"});
  f.set_bridged((in[0] & 4) != 0);
  f.set_max_flows(16);
  in = in.subspan(1);
  std::vector<std::byte> reply;
  while (in.size() >= 3 && o.frames < 256) {
    const uint8_t flags = in[0];
    const size_t len = std::min<size_t>(static_cast<size_t>(in[1]) | static_cast<size_t>(in[2]) << 8, in.size() - 3);
    const auto body = std::as_bytes(in.subspan(3, len));
    in = in.subspan(3 + len);
    const bool inbound = flags & 1;
    std::vector<std::byte> frame = (flags & 2) ? dns_frame(body, inbound)
                                               : std::vector<std::byte>(body.begin(), body.end());
    ++o.frames;
    EgressFilter::Verdict v;
    try {
      if (inbound) {
        f.inbound(frame);
        continue;
      }
      v = f.outbound(frame, reply);
    } catch (const Error&) {
      continue;  // the backend drops such a frame and counts it (filter_outbound)
    }
    if (v == EgressFilter::Verdict::pass) ++o.passed;
    if (v == EgressFilter::Verdict::reply) {
      ++o.replies;
      if (reply.empty() || !parse_frame(reply)) throw std::logic_error("the filter built a reply that does not parse");
    }
  }
  // The DNS parsers on the raw bytes too (they see UDP payloads of any shape).
  (void)dns::parse_query(std::as_bytes(in));
  (void)dns::parse_response(std::as_bytes(in));
  return o;
}

}  // namespace sm::net::fuzz
