// The TAP network backend: the guest's frames go to and come from a TAP interface of the host
// (--network tap:NAME), which the user has put on a bridge. No NAT, no published ports: the VM
// is a host on that LAN. The egress filter (filter.h) still sees every frame the guest sends.
//
// Threads and locks: one thread ("sm-tap") owns the TAP fd and the filter: poll() on the fd and
// FrameQueues' wake eventfd; TX queue -> write(), read() -> filter.inbound() -> RX queue. The
// device side of Backend goes through FrameQueues (frame_queue.h), whose locks are the only ones
// besides shutdown_mu_ (shutdown() and the destructor; a leaf).
//
// The filter is bridged here (EgressFilter::set_bridged): frames go onto a real LAN, so a TCP
// segment passes only on a connection whose SYN the filter judged, and the plan's subnet is that
// LAN (no host loopback behind it), judged by the policy like any address. The guest's MTU is the
// interface's, since a bridge drops larger frames without a word.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/unique_fd.h"
#include "net/backend.h"
#include "net/config.h"
#include "net/frame_queue.h"

namespace sm::net {

class EgressFilter;

class TapBackend final : public Backend {
 public:
  // Opens /dev/net/tun as cfg.tap_name (IFF_TAP | IFF_NO_PI, no vnet header: the device strips
  // it) and starts the thread. Throws sm::Error naming the interface and what to do.
  static std::unique_ptr<TapBackend> create(const NetworkConfig& cfg, QueueLimits limits = {});
  ~TapBackend() override;

  [[nodiscard]] bool send(std::span<const std::byte> frame) override { return q_.send(frame); }
  [[nodiscard]] int tx_ready_fd() const override { return q_.tx_ready_fd(); }
  [[nodiscard]] int rx_ready_fd() const override { return q_.rx_ready_fd(); }
  [[nodiscard]] std::span<const std::byte> peek_rx() override { return q_.peek_rx(); }
  void pop_rx() override { q_.pop_rx(); }

  // Always throws sm::Error: a TAP VM is reached at its own address on the bridge.
  PortMapping publish(const PortMapping& m) override;
  bool unpublish(const PortMapping&) override { return false; }
  [[nodiscard]] std::vector<PortMapping> published() const override { return {}; }

  [[nodiscard]] unsigned mtu() const override { return mtu_; }
  // Frames from a bridge were checked by nobody: the guest verifies them itself.
  [[nodiscard]] bool frames_checked() const override { return false; }
  // Ends the thread and closes the TAP fd (the interface stays; it is the user's).
  void shutdown() override;

  [[nodiscard]] NetStats stats() const override { return q_.stats(); }
  void count_malformed_tx() override { q_.count_malformed_tx(); }
  void count_tx_queue_full() override { q_.count_tx_queue_full(); }
  void count_rx_dropped() override { q_.count_rx_dropped(); }
  void count_rx_delivered(size_t bytes) override { q_.count_rx_delivered(bytes); }

 private:
  TapBackend(const NetworkConfig& cfg, QueueLimits limits, UniqueFd tap);
  void thread_main();
  // One pass of each direction; false when the TAP fd failed for good.
  bool write_pending();
  bool read_available();

  const std::string name_;
  unsigned mtu_ = 1500;  // the interface's (SIOCGIFMTU), capped at kMaxMtu
  FrameQueues q_;
  UniqueFd tap_;
  std::unique_ptr<EgressFilter> filter_;  // backend thread only
  std::vector<std::byte> tx_frame_;       // backend thread: the frame being written
  bool tx_pending_ = false;               // backend thread: tx_frame_ waits for POLLOUT
  std::vector<std::byte> rx_buf_;         // backend thread
  std::vector<std::byte> reply_;          // backend thread
  std::atomic<bool> stop_{false};
  std::mutex shutdown_mu_;
  std::thread thread_;  // joined under shutdown_mu_
};

}  // namespace sm::net
