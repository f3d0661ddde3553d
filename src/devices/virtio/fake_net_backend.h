// Test support: a real net::Backend without an outside world, for virtio-net tests (net_test.cc,
// net_fuzz_test.cc, snapshot_test.cc). Frames the device sends are kept (up to a capacity, so
// tests can make send() refuse); frames for the guest are queued by the test. Both fds are real
// eventfds, signalled as the Backend contract says. Header-only (tests include it; nothing in the
// library does).
//
// Threads and locks: one mutex guards everything; any thread.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <deque>
#include <mutex>
#include <span>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"
#include "net/backend.h"

namespace sm::virtio::testing {

class FakeNetBackend final : public net::Backend {
 public:
  using Frame = std::vector<std::byte>;

  explicit FakeNetBackend(size_t tx_capacity = 1u << 20)
      : tx_capacity_(tx_capacity),
        rx_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)),
        tx_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (!rx_fd_ || !tx_fd_) throw sys_error("eventfd");
  }

  bool send(std::span<const std::byte> frame) override {
    std::lock_guard lock(mu_);
    if (sent_.size() >= tx_capacity_) return false;
    sent_.emplace_back(frame.begin(), frame.end());
    ++stats_.tx_frames;
    stats_.tx_bytes += frame.size();
    return true;
  }
  int tx_ready_fd() const override { return tx_fd_.get(); }
  int rx_ready_fd() const override { return rx_fd_.get(); }
  std::span<const std::byte> peek_rx() override {
    std::lock_guard lock(mu_);
    if (rx_.empty()) return {};
    return rx_.front();  // a deque keeps its elements in place as it grows
  }
  void pop_rx() override {
    std::lock_guard lock(mu_);
    if (!rx_.empty()) rx_.pop_front();
  }

  net::PortMapping publish(const net::PortMapping&) override { throw Error("fake backend: no ports"); }
  bool unpublish(const net::PortMapping&) override { return false; }
  std::vector<net::PortMapping> published() const override { return {}; }
  unsigned mtu() const override { return 65520; }
  bool frames_checked() const override { return true; }
  void shutdown() override {
    std::lock_guard lock(mu_);
    ++shutdowns_;
  }
  int shutdowns() const {
    std::lock_guard lock(mu_);
    return shutdowns_;
  }

  net::NetStats stats() const override {
    std::lock_guard lock(mu_);
    return stats_;
  }
  void count_malformed_tx() override {
    std::lock_guard lock(mu_);
    ++stats_.tx_malformed;
  }
  void count_tx_queue_full() override {
    std::lock_guard lock(mu_);
    ++stats_.tx_queue_full;
  }
  void count_rx_dropped() override {
    std::lock_guard lock(mu_);
    ++stats_.rx_dropped;
  }
  void count_rx_delivered(size_t bytes) override {
    std::lock_guard lock(mu_);
    ++stats_.rx_frames;
    stats_.rx_bytes += bytes;
  }

  // --- the test's side ---
  // A frame for the guest; signals rx_ready_fd.
  void queue_rx(Frame f) {
    {
      std::lock_guard lock(mu_);
      rx_.push_back(std::move(f));
    }
    signal(rx_fd_.get());
  }
  [[nodiscard]] size_t rx_pending() const {
    std::lock_guard lock(mu_);
    return rx_.size();
  }
  // The frames sent so far, emptying the transmit queue (so signals tx_ready_fd).
  std::vector<Frame> take_sent() {
    std::vector<Frame> out;
    {
      std::lock_guard lock(mu_);
      out.swap(sent_);
    }
    signal(tx_fd_.get());
    return out;
  }
  [[nodiscard]] size_t sent_count() const {
    std::lock_guard lock(mu_);
    return sent_.size();
  }

 private:
  static void signal(int fd) {
    uint64_t one = 1;
    ssize_t r = ::write(fd, &one, sizeof one);
    (void)r;
  }

  const size_t tx_capacity_;
  UniqueFd rx_fd_, tx_fd_;
  mutable std::mutex mu_;
  std::vector<Frame> sent_;
  std::deque<Frame> rx_;
  net::NetStats stats_;
  int shutdowns_ = 0;
};

}  // namespace sm::virtio::testing
