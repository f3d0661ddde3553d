// FlowTable: the TCP connections, UDP flows and ICMP echo exchanges a guest has open, as its
// frames and the frames to it show them. Two jobs (filter.h calls it):
//
//  - A cap per VM. libslirp opens a host socket for every connection, UDP flow and ping the
//    guest starts, so without a cap a guest could take every file descriptor of the process
//    that hosts it, and with them every other VM of a pool. A new flow past the cap is refused
//    at once (RST / ICMP unreachable), counted in flows_refused; open ones carry on.
//  - Stateful TCP for backends without a NAT (TAP): a segment other than a SYN passes only on a
//    connection the table saw open, so that a guest cannot push data to a denied address in
//    bare ACK segments. (libslirp resets segments of unknown connections by itself.)
//
// A flow is (protocol, guest port, peer address, peer port); an ICMP echo uses its identifier
// as the guest port and 0 as the peer port. A guest-started TCP connection opens on its SYN, one
// from outside (a published port, a peer on the bridge) on the SYN to the guest. A RST either
// way ends it; FINs both ways end it a minute later. Idle lifetimes follow libslirp's
// (SO_EXPIRE): UDP and ping 240 s, DNS 10 s after an answer; TCP 3 min before the peer's
// first answer, then 24 h. Expired flows are forgotten when the table is full.
//
// Threads: not thread-safe; the backend thread that owns the filter calls everything.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>

#include "net/packet.h"

namespace sm::net {

class FlowTable {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  static constexpr size_t kMaxFlowsCeiling = 4096;

  // The default cap: a quarter of this process's file descriptor limit (RLIMIT_NOFILE, soft),
  // between 64 and kMaxFlowsCeiling, so that a few VMs at their cap still leave the process
  // descriptors of its own. Programs that host many VMs raise their limit first (the CLI does).
  [[nodiscard]] static size_t default_max_flows();

  explicit FlowTable(size_t max_flows = default_max_flows());

  enum class Result {
    known,    // a frame of an open flow (refreshed)
    opened,   // a new flow, now open
    unknown,  // a TCP segment (not a SYN) of no open connection
    full,     // a new flow past the cap: refuse it
    untracked // not TCP, UDP or an ICMP echo request
  };
  // A frame the guest sends (with has_l4), after the policy allowed its destination.
  Result outbound(const ParsedFrame& f, TimePoint now);
  // A frame to the guest: opens connections from outside, ends flows, refreshes timers.
  void inbound(const ParsedFrame& f, TimePoint now);

  [[nodiscard]] size_t size() const { return flows_.size(); }
  [[nodiscard]] size_t max_flows() const { return max_; }

 private:
  // (protocol, guest port, peer address, peer port)
  using Key = std::tuple<uint8_t, uint16_t, IpAddr, uint16_t>;
  struct Flow {
    TimePoint expires;
    bool answered = false;  // TCP: the peer has sent something; UDP: an answer came
    bool fin_out = false, fin_in = false;
  };
  bool make_room(TimePoint now);  // false when the table is full of live flows
  void refresh(Flow& fl, const Key& k, TimePoint now) const;

  size_t max_;
  std::map<Key, Flow> flows_;
  TimePoint last_purge_{};
};

}  // namespace sm::net
