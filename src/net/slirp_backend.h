// The user-mode network backend: libslirp's NAT, on a thread of its own ("sm-slirp").
//
// The guest sees a virtual LAN (config.h's AddressPlan: gateway, DNS, DHCP from libslirp); its
// connections leave as ordinary sockets of this process, so no privileges are needed. Every
// frame from the guest passes the egress filter (filter.h) before libslirp sees it; every frame
// for the guest passes filter.inbound() (it learns DNS answers) before it is queued.
// Published ports are libslirp host forwards (slirp_add_hostxfwd) onto the guest's address.
//
// Threads and locks: libslirp is not thread-safe, so the Slirp*, the filter and the timers
// belong to the backend thread alone: it runs slirp_pollfds_fill / poll() / slirp_pollfds_poll,
// the timers (their deadlines bound the poll timeout) and the queued TX frames; an eventfd in
// the poll set wakes it. publish()/unpublish() post a request to that thread and wait for its
// answer (never call them from the backend thread); publish_mu_ is held across the whole of one,
// so that the port list and libslirp's forwards change together. The device side of Backend goes
// through FrameQueues (frame_queue.h). Lock order: publish_mu_ -> req_mu_ | published_mu_ ->
// nothing; none is held by the backend thread while it calls into libslirp.
//
// Host sockets: every connection, UDP flow and ping of the guest is one; the filter's flow table
// (flows.h) caps how many a VM has open at once.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "net/backend.h"
#include "net/config.h"
#include "net/frame_queue.h"

struct Slirp;

namespace sm::net {

class EgressFilter;

class SlirpBackend final : public Backend {
 public:
  // Starts libslirp and its thread, then publishes cfg.publish; throws sm::Error on a bad
  // address plan or the first port that cannot be published (so before the VM boots).
  static std::unique_ptr<SlirpBackend> create(const NetworkConfig& cfg, QueueLimits limits = {});
  ~SlirpBackend() override;

  [[nodiscard]] bool send(std::span<const std::byte> frame) override { return q_.send(frame); }
  [[nodiscard]] int tx_ready_fd() const override { return q_.tx_ready_fd(); }
  [[nodiscard]] int rx_ready_fd() const override { return q_.rx_ready_fd(); }
  [[nodiscard]] std::span<const std::byte> peek_rx() override { return q_.peek_rx(); }
  void pop_rx() override { q_.pop_rx(); }

  PortMapping publish(const PortMapping& m) override;
  bool unpublish(const PortMapping& m) override;
  [[nodiscard]] std::vector<PortMapping> published() const override;
  [[nodiscard]] unsigned mtu() const override { return cfg_.plan.mtu; }
  [[nodiscard]] bool frames_checked() const override { return true; }  // libslirp builds them
  // Ends the thread and libslirp: every host socket it had (published ports, connections) closes.
  void shutdown() override;

  [[nodiscard]] NetStats stats() const override;  // q_'s counters, the filter's included
  void count_malformed_tx() override { q_.count_malformed_tx(); }
  void count_tx_queue_full() override { q_.count_tx_queue_full(); }
  void count_rx_dropped() override { q_.count_rx_dropped(); }
  void count_rx_delivered(size_t bytes) override { q_.count_rx_delivered(bytes); }

  // The libslirp callbacks and the loop's helpers (slirp_backend.cc); public only so that the
  // C callbacks can reach them. Backend thread only.
  struct Loop;

 private:
  SlirpBackend(const NetworkConfig& cfg, QueueLimits limits);
  // Runs fn(slirp) on the backend thread and waits; fn gets nullptr when the thread has ended.
  void run_on_thread(std::function<void(Slirp*)> fn);
  void thread_main();

  const NetworkConfig cfg_;
  FrameQueues q_;
  std::unique_ptr<Loop> loop_;  // the Slirp*, filter, timers: backend thread only after start

  std::mutex req_mu_;
  std::vector<std::function<void(Slirp*)>> requests_;  // guarded by req_mu_
  bool thread_done_ = false;                           // guarded by req_mu_

  std::mutex publish_mu_;  // one publish/unpublish/shutdown at a time
  mutable std::mutex published_mu_;
  std::vector<PortMapping> published_;  // guarded by published_mu_
  bool shut_down_ = false;              // guarded by publish_mu_

  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace sm::net
