// The guest's open flows (see flows.h for what is tracked and why).
#include "net/flows.h"

#include <sys/resource.h>

#include <algorithm>

namespace sm::net {

namespace {

using namespace std::chrono_literals;

// libslirp's lifetimes (SO_EXPIRE, SO_EXPIREFAST) and TCP's.
constexpr auto kUdpIdle = 240s;
constexpr auto kDnsAnswered = 10s;
constexpr auto kTcpConnecting = 180s;
constexpr auto kTcpIdle = 24h;
constexpr auto kTcpClosing = 60s;
constexpr auto kPurgeInterval = 1s;

bool is_echo(const ParsedFrame& f, bool request) {
  if (f.proto == kProtoIcmp) return f.icmp_type == (request ? 8 : 0);
  if (f.proto == kProtoIcmpv6) return f.icmp_type == (request ? 128 : 129);
  return false;
}

}  // namespace

size_t FlowTable::default_max_flows() {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur == RLIM_INFINITY) return kMaxFlowsCeiling;
  return std::clamp<size_t>(static_cast<size_t>(r.rlim_cur / 4), 64, kMaxFlowsCeiling);
}

FlowTable::FlowTable(size_t max_flows) : max_(std::max<size_t>(max_flows, 1)) {}

bool FlowTable::make_room(TimePoint now) {
  if (flows_.size() < max_) return true;
  // Full: forget what has expired, at most once a second so that a guest knocking at the cap
  // does not make every frame walk the table.
  if (now - last_purge_ >= kPurgeInterval) {
    last_purge_ = now;
    std::erase_if(flows_, [now](const auto& e) { return e.second.expires <= now; });
  }
  return flows_.size() < max_;
}

void FlowTable::refresh(Flow& fl, const Key& k, TimePoint now) const {
  if (std::get<0>(k) != kProtoTcp) {
    fl.expires = now + kUdpIdle;
  } else if (!(fl.fin_out && fl.fin_in)) {
    fl.expires = now + (fl.answered ? std::chrono::steady_clock::duration(kTcpIdle) : kTcpConnecting);
  }
}

FlowTable::Result FlowTable::outbound(const ParsedFrame& f, TimePoint now) {
  if (!f.has_l4) return Result::untracked;
  const IpAddr peer = f.dst.unmapped();
  Key k;
  if (f.proto == kProtoTcp || f.proto == kProtoUdp) {
    k = {f.proto, f.sport, peer, f.dport};
  } else if (is_echo(f, true)) {
    k = {f.proto, f.icmp_id, peer, 0};
  } else {
    return Result::untracked;
  }
  auto it = flows_.find(k);
  if (f.proto == kProtoTcp && (f.tcp_flags & (kTcpSyn | kTcpAck | kTcpRst)) != kTcpSyn) {
    // A segment of a connection, not the start of one.
    if (it == flows_.end()) return Result::unknown;
    if (f.tcp_flags & kTcpRst) {
      flows_.erase(it);
      return Result::known;
    }
    Flow& fl = it->second;
    if (f.tcp_flags & kTcpFin) fl.fin_out = true;
    if (fl.fin_out && fl.fin_in) fl.expires = now + kTcpClosing;
    refresh(fl, k, now);
    return Result::known;
  }
  if (it != flows_.end()) {  // a retransmitted SYN, the next datagram or ping of a flow
    refresh(it->second, k, now);
    return Result::known;
  }
  if (!make_room(now)) return Result::full;
  Flow fl;
  refresh(fl, k, now);
  flows_.emplace(k, fl);
  return Result::opened;
}

void FlowTable::inbound(const ParsedFrame& f, TimePoint now) {
  if (!f.has_l4) return;
  const IpAddr peer = f.src.unmapped();
  if (f.proto == kProtoTcp) {
    const Key k{f.proto, f.dport, peer, f.sport};
    auto it = flows_.find(k);
    if (it == flows_.end()) {
      // A connection from outside (a published port, a host on the bridge) opens on its SYN.
      // Past the cap it stays unknown: the guest's answer is then refused.
      if ((f.tcp_flags & (kTcpSyn | kTcpAck | kTcpRst)) == kTcpSyn && make_room(now)) {
        Flow fl;
        fl.answered = true;
        refresh(fl, k, now);
        flows_.emplace(k, fl);
      }
      return;
    }
    if (f.tcp_flags & kTcpRst) {
      flows_.erase(it);
      return;
    }
    Flow& fl = it->second;
    fl.answered = true;
    if (f.tcp_flags & kTcpFin) fl.fin_in = true;
    if (fl.fin_out && fl.fin_in) fl.expires = now + kTcpClosing;
    refresh(fl, k, now);
    return;
  }
  if (f.proto == kProtoUdp) {
    auto it = flows_.find(Key{f.proto, f.dport, peer, f.sport});
    if (it == flows_.end()) return;  // not one the guest started (a published port's client)
    it->second.answered = true;
    it->second.expires = now + (f.sport == 53 ? std::chrono::steady_clock::duration(kDnsAnswered) : kUdpIdle);
    return;
  }
  if (is_echo(f, false)) flows_.erase(Key{f.proto, f.icmp_id, peer, 0});  // libslirp closes it on the reply
}

}  // namespace sm::net
