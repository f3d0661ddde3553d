// A running x86_64 microVM: guest memory, the hypervisor VM, vCPU threads, the I/O event loop
// and the devices, assembled from a MachineConfig (see docs/architecture.md for the picture).
//
// Threads: one per vCPU (runs exits through the MMIO/PIO buses), one event-loop thread
// (ioeventfds, vsock sockets, console input, stop signals). stop() may be called from any of
// them or from outside; the first status given wins.
//
// How a VM ends, and its status:
//   guest reset (i8042 0xFE, triple fault, KVM shutdown/reset event)      0
//   guest writes byte N to port 0x501 (our guests' "poweroff")            N
//   SIGINT / SIGTERM (with stop_on_signals)                               130 / 143
//   vCPU internal error, failed entry, or a VMM failure on a vCPU thread   1 (error logged)
// wait() returns once every thread has been joined; the destructor closes every fd it opened
// and removes the vsock socket.
#pragma once

#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "hypervisor/hypervisor.h"
#include "vmm/bus.h"
#include "vmm/event_loop.h"
#include "vmm/guest_memory.h"
#include "vmm/machine_config.h"

namespace sm::devices {
class Serial;
}
namespace sm::virtio {
class MmioTransport;
}

namespace sm::vmm {

class Machine {
 public:
  // Exit statuses the VMM itself gives (others come from the guest).
  static constexpr int kStatusReset = 0;
  static constexpr int kStatusError = 1;

  // Validates cfg, opens the hypervisor, builds memory, loads the kernel and initrd, writes the
  // boot structures and creates vCPUs and devices. Nothing runs yet. Throws sm::Error.
  explicit Machine(MachineConfig cfg);
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;
  ~Machine();

  // Starts the event loop and the vCPU threads. Once only.
  void start();
  // Blocks until the VM has ended and all its threads are joined; returns its exit status.
  int wait();
  // start() then wait().
  int run() {
    start();
    return wait();
  }
  // Ends the VM with `status` (ignored if it is already ending). Thread-safe, non-blocking.
  void stop(int status, std::string reason = {});

  [[nodiscard]] const std::string& cmdline() const { return cmdline_; }
  // Why the VM ended, in words ("guest reset", "guest exit status 3", ...); empty while running.
  [[nodiscard]] std::string stop_reason() const;
  // The status once the VM is ending (stop() was called, by the guest or the host); nullopt
  // while it runs. Non-blocking.
  [[nodiscard]] std::optional<int> status() const;

 private:
  void setup_devices();
  void setup_console_input();
  void on_console_input();
  void on_input_retry();
  void deliver_console_input();
  void setup_signals();
  void boot_vcpus();
  void vcpu_thread(hv::Vcpu& vcpu);
  void handle_exit(hv::Vcpu& vcpu, hv::Exit& exit);
  // Logs reason as an error and stops with kStatusError: the VMM, not the guest, failed.
  void fail(const std::string& reason);
  void join_all();
  void restore_host_state();

  MachineConfig cfg_;
  std::string cmdline_;

  // Declaration order is teardown order reversed: devices go before the event loop they use,
  // the VM before the memory it maps.
  std::unique_ptr<hv::Hypervisor> hv_;
  std::optional<GuestMemory> mem_;
  std::unique_ptr<hv::Vm> vm_;
  EventLoop loop_;
  Bus mmio_bus_{"mmio"};
  Bus pio_bus_{"pio"};
  std::shared_ptr<devices::Serial> serial_;
  std::vector<std::shared_ptr<virtio::MmioTransport>> transports_;
  std::vector<UniqueFd> ioeventfds_;
  std::vector<std::unique_ptr<hv::Vcpu>> vcpus_;

  // Console input and signals; restored when the machine ends.
  UniqueFd signal_fd_;
  bool signals_blocked_ = false;
  sigset_t old_sigmask_{};
  struct ConsoleInput;
  std::unique_ptr<ConsoleInput> input_;

  std::thread loop_thread_;
  std::vector<std::thread> vcpu_threads_;
  bool started_ = false;
  bool joined_ = false;
  bool devices_stopped_ = false;  // on_machine_stopped() called

  std::atomic<bool> stopping_{false};
  mutable std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  std::optional<int> status_;  // guarded by stop_mu_
  std::string reason_;         // guarded by stop_mu_
};

}  // namespace sm::vmm
