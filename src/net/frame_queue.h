// The queues between a network device and a backend thread, shared by every backend
// (slirp_backend.h, tap_backend.h): a bounded TX queue (guest -> backend thread), a bounded RX
// queue (backend thread -> guest), the eventfds that say when either side may go on, and the
// VM's network counters as atomics.
//
// Threads and locks: the device side (send, peek_rx, pop_rx, the ready fds, count_*) is used by
// one thread at a time, with the device mutex held (backend.h); the backend side (pop_tx,
// push_rx, signal_rx, wake_fd) only by the backend's own thread. tx_mu_ and rx_mu_ guard one
// queue each, are never nested and never held across a system call other than an eventfd
// write. Lock order: device mutex -> tx_mu_ | rx_mu_ -> nothing.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "net/backend.h"

namespace sm::net {

// How much each queue holds before it refuses (TX) or drops (RX) frames. The byte cap keeps a
// queue of 64 KiB frames from holding a gigabyte; the frame cap bounds per-frame overhead.
struct QueueLimits {
  size_t max_frames = 1024;
  size_t max_bytes = size_t{16} << 20;
};

class FrameQueues {
 public:
  explicit FrameQueues(QueueLimits limits = {});
  FrameQueues(const FrameQueues&) = delete;
  FrameQueues& operator=(const FrameQueues&) = delete;

  // --- device side (Backend's interface, see backend.h) ---
  // Copies one guest frame into the TX queue. false when full (nothing queued; tx_ready_fd()
  // fires once it has drained below half). A frame outside [kMinFrameLen, kMaxFrameLen] is
  // dropped and counted as malformed (returns true: it was consumed).
  [[nodiscard]] bool send(std::span<const std::byte> frame);
  [[nodiscard]] int tx_ready_fd() const { return tx_ready_.get(); }
  [[nodiscard]] int rx_ready_fd() const { return rx_ready_.get(); }
  [[nodiscard]] std::span<const std::byte> peek_rx();
  void pop_rx();

  // --- backend thread side ---
  // Readable when TX frames were queued into an empty queue or wake() was called. The backend
  // thread polls it, calls drain_wake(), then pop_tx() until it returns false.
  [[nodiscard]] int wake_fd() const { return wake_.get(); }
  void wake();
  void drain_wake();
  // Moves the oldest TX frame into *out; false when the queue is empty.
  [[nodiscard]] bool pop_tx(std::vector<std::byte>& out);
  [[nodiscard]] bool tx_empty() const;
  // Queues a frame for the guest (copied). false, counting rx_dropped, when it does not fit.
  // The device is told by signal_rx(), once per batch, so a burst costs one eventfd write.
  bool push_rx(std::span<const std::byte> frame);
  void signal_rx();

  // --- counters ---
  [[nodiscard]] NetStats stats() const;
  void count_malformed_tx() { tx_malformed_.fetch_add(1, std::memory_order_relaxed); }
  void count_tx_queue_full() { tx_queue_full_.fetch_add(1, std::memory_order_relaxed); }
  void count_rx_dropped() { rx_dropped_.fetch_add(1, std::memory_order_relaxed); }
  void count_rx_delivered(size_t bytes) {
    rx_frames_.fetch_add(1, std::memory_order_relaxed);
    rx_bytes_.fetch_add(bytes, std::memory_order_relaxed);
  }
  // Takes the filter's denied_* and flows_refused totals from s (the backend thread copies them out: the filter
  // itself is not shared).
  void set_denied(const NetStats& s);

 private:
  struct Queue {
    std::deque<std::vector<std::byte>> frames;
    size_t bytes = 0;
  };

  // An empty queue takes any frame, so that a limit below one frame cannot wedge the device.
  [[nodiscard]] bool fits(const Queue& q, size_t len) const {
    return q.frames.empty() ||
           (q.frames.size() < limits_.max_frames && q.bytes + len <= limits_.max_bytes);
  }

  const QueueLimits limits_;
  UniqueFd wake_;      // device -> backend thread: TX frames queued, or a request posted
  UniqueFd tx_ready_;  // backend thread -> device: a refused send() may now succeed
  UniqueFd rx_ready_;  // backend thread -> device: frames for the guest are queued

  mutable std::mutex tx_mu_;
  Queue tx_;                 // guarded by tx_mu_
  bool tx_refused_ = false;  // guarded by tx_mu_: send() said false, tx_ready_ owed

  mutable std::mutex rx_mu_;
  Queue rx_;                   // guarded by rx_mu_
  bool rx_unsignalled_ = false;  // guarded by rx_mu_: frames pushed since the last signal_rx()

  std::atomic<uint64_t> tx_frames_{0}, tx_bytes_{0}, rx_frames_{0}, rx_bytes_{0};
  std::atomic<uint64_t> tx_malformed_{0}, tx_queue_full_{0}, rx_dropped_{0};
  std::atomic<uint64_t> denied_tcp_{0}, denied_udp_{0}, denied_icmp_{0}, denied_dns_{0},
      denied_other_{0}, flows_refused_{0};
};

class EgressFilter;
struct NetworkConfig;

// The egress policy on the backend thread, the same for every backend:
// One guest frame through the filter: true when it may go on to the outside. A reply the filter
// gives instead is queued for the guest; q's denied counts are updated. A filter failure drops
// the frame (counted malformed): the frame is guest data.
[[nodiscard]] bool filter_outbound(EgressFilter& f, FrameQueues& q, std::span<const std::byte> frame,
                                   std::vector<std::byte>& reply);
// The DNS servers the filter treats as the guest's resolvers: the plan's DNS addresses, and --dns.
[[nodiscard]] std::vector<std::string> filter_dns_servers(const NetworkConfig& cfg);
// One frame from the outside through f.inbound(), then into the RX queue (or dropped, counted).
void deliver_inbound(EgressFilter& f, FrameQueues& q, std::span<const std::byte> frame);

// Writes 1 to an eventfd (a full counter is already readable, so EAGAIN is fine).
void signal_eventfd(int fd);
// Reads an eventfd to zero (non-blocking).
void drain_eventfd(int fd);

}  // namespace sm::net
