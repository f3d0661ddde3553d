#include "net/frame_queue.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "net/config.h"
#include "net/filter.h"

namespace sm::net {

namespace {

UniqueFd make_eventfd(const char* what) {
  int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) throw sys_error(fmt::format("network: eventfd ({})", what));
  return UniqueFd(fd);
}

}  // namespace

void signal_eventfd(int fd) {
  uint64_t one = 1;
  // EAGAIN: the counter is saturated, so it is readable already; nothing else can fail here.
  while (::write(fd, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

void drain_eventfd(int fd) {
  uint64_t v;
  while (::read(fd, &v, sizeof v) < 0 && errno == EINTR) {
  }
}

FrameQueues::FrameQueues(QueueLimits limits)
    : limits_(limits),
      wake_(make_eventfd("backend wake")),
      tx_ready_(make_eventfd("tx ready")),
      rx_ready_(make_eventfd("rx ready")) {}

bool FrameQueues::send(std::span<const std::byte> frame) {
  if (frame.size() < kMinFrameLen || frame.size() > kMaxFrameLen) {
    count_malformed_tx();
    return true;
  }
  bool was_empty;
  {
    std::lock_guard lock(tx_mu_);
    if (!fits(tx_, frame.size())) {
      tx_refused_ = true;
      return false;
    }
    was_empty = tx_.frames.empty();
    tx_.frames.emplace_back(frame.begin(), frame.end());
    tx_.bytes += frame.size();
  }
  tx_frames_.fetch_add(1, std::memory_order_relaxed);
  tx_bytes_.fetch_add(frame.size(), std::memory_order_relaxed);
  // The backend thread pops until the queue is empty after each wake, so only the first frame
  // into an empty queue needs to wake it.
  if (was_empty) signal_eventfd(wake_.get());
  return true;
}

std::span<const std::byte> FrameQueues::peek_rx() {
  std::lock_guard lock(rx_mu_);
  if (rx_.frames.empty()) return {};
  // A deque's push_back keeps references to existing elements valid, so the span stays good
  // while the backend thread queues more, until pop_rx().
  return rx_.frames.front();
}

void FrameQueues::pop_rx() {
  std::lock_guard lock(rx_mu_);
  if (rx_.frames.empty()) return;
  rx_.bytes -= rx_.frames.front().size();
  rx_.frames.pop_front();
}

void FrameQueues::wake() { signal_eventfd(wake_.get()); }

void FrameQueues::drain_wake() { drain_eventfd(wake_.get()); }

bool FrameQueues::pop_tx(std::vector<std::byte>& out) {
  bool owe_ready = false;
  {
    std::lock_guard lock(tx_mu_);
    if (tx_.frames.empty()) return false;
    out = std::move(tx_.frames.front());
    tx_.frames.pop_front();
    tx_.bytes -= out.size();
    if (tx_refused_ && tx_.frames.size() <= limits_.max_frames / 2 &&
        tx_.bytes <= limits_.max_bytes / 2) {
      tx_refused_ = false;
      owe_ready = true;
    }
  }
  if (owe_ready) signal_eventfd(tx_ready_.get());
  return true;
}

bool FrameQueues::tx_empty() const {
  std::lock_guard lock(tx_mu_);
  return tx_.frames.empty();
}

bool FrameQueues::push_rx(std::span<const std::byte> frame) {
  {
    std::lock_guard lock(rx_mu_);
    if (frame.size() <= kMaxFrameLen && fits(rx_, frame.size())) {
      rx_.frames.emplace_back(frame.begin(), frame.end());
      rx_.bytes += frame.size();
      rx_unsignalled_ = true;
      return true;
    }
  }
  count_rx_dropped();
  return false;
}

void FrameQueues::signal_rx() {
  {
    std::lock_guard lock(rx_mu_);
    if (!rx_unsignalled_) return;
    rx_unsignalled_ = false;
  }
  signal_eventfd(rx_ready_.get());
}

NetStats FrameQueues::stats() const {
  NetStats s;
  s.tx_frames = tx_frames_.load(std::memory_order_relaxed);
  s.tx_bytes = tx_bytes_.load(std::memory_order_relaxed);
  s.rx_frames = rx_frames_.load(std::memory_order_relaxed);
  s.rx_bytes = rx_bytes_.load(std::memory_order_relaxed);
  s.tx_malformed = tx_malformed_.load(std::memory_order_relaxed);
  s.tx_queue_full = tx_queue_full_.load(std::memory_order_relaxed);
  s.rx_dropped = rx_dropped_.load(std::memory_order_relaxed);
  s.denied_tcp = denied_tcp_.load(std::memory_order_relaxed);
  s.denied_udp = denied_udp_.load(std::memory_order_relaxed);
  s.denied_icmp = denied_icmp_.load(std::memory_order_relaxed);
  s.denied_dns = denied_dns_.load(std::memory_order_relaxed);
  s.denied_other = denied_other_.load(std::memory_order_relaxed);
  s.flows_refused = flows_refused_.load(std::memory_order_relaxed);
  return s;
}

void FrameQueues::set_denied(const NetStats& s) {
  denied_tcp_.store(s.denied_tcp, std::memory_order_relaxed);
  denied_udp_.store(s.denied_udp, std::memory_order_relaxed);
  denied_icmp_.store(s.denied_icmp, std::memory_order_relaxed);
  denied_dns_.store(s.denied_dns, std::memory_order_relaxed);
  denied_other_.store(s.denied_other, std::memory_order_relaxed);
  flows_refused_.store(s.flows_refused, std::memory_order_relaxed);
}

std::vector<std::string> filter_dns_servers(const NetworkConfig& cfg) {
  // The NAT's DNS address always: a query sent there is judged by name even when the guest was
  // given other servers (it reaches the host's resolvers otherwise unjudged).
  std::vector<std::string> servers = {cfg.plan.dns_ipv4, cfg.plan.dns_ipv6};
  for (const auto& d : cfg.dns)
    if (std::find(servers.begin(), servers.end(), d) == servers.end()) servers.push_back(d);
  return servers;
}

bool filter_outbound(EgressFilter& f, FrameQueues& q, std::span<const std::byte> frame,
                     std::vector<std::byte>& reply) {
  EgressFilter::Verdict v;
  try {
    reply.clear();
    v = f.outbound(frame, reply);
  } catch (const std::exception& e) {
    q.count_malformed_tx();
    spdlog::debug("network: dropped a guest frame: {}", e.what());
    return false;
  }
  NetStats s;
  f.add_counts(s);
  q.set_denied(s);
  if (v == EgressFilter::Verdict::reply && !reply.empty()) (void)q.push_rx(reply);
  return v == EgressFilter::Verdict::pass;
}

void deliver_inbound(EgressFilter& f, FrameQueues& q, std::span<const std::byte> frame) {
  try {
    f.inbound(frame);
    (void)q.push_rx(frame);
  } catch (const std::exception& e) {
    q.count_rx_dropped();
    spdlog::debug("network: dropped a frame for the guest: {}", e.what());
  }
}

}  // namespace sm::net
