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
//
// Snapshots (docs/snapshot-format.md): snapshot() pauses every vCPU at an instruction boundary
// (a completed MMIO/PIO access is handed to the guest first, so nothing is replayed) and the
// I/O thread, saves guest memory and every piece of state, and resumes. The restoring
// constructor builds the same platform and loads that state instead of booting a kernel; the
// clone's memory is the snapshot's memory file mapped copy-on-write.
#pragma once

#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "arch/x86_64/cpu_state.h"
#include "hypervisor/hypervisor.h"
#include "vmm/bus.h"
#include "vmm/event_loop.h"
#include "vmm/guest_memory.h"
#include "vmm/machine_config.h"
#include "vmm/machine_shape.h"
#include "snapshot/format.h"

namespace sm::devices {
class Serial;
class I8042;
}
namespace sm::virtio {
class MmioTransport;
}
namespace sm::net {
class Backend;
}

namespace sm::vmm {

struct SnapshotOptions {
  bool resume = true;  // false: the VM stays paused afterwards, until stop()
  std::vector<snapshot::Section> extra;  // the owner's own sections (names must not clash)
};
struct SnapshotStats {
  uint64_t memory_bytes = 0;  // data written to the memory file
  std::chrono::nanoseconds paused{0};
};

class Machine {
 public:
  // Exit statuses the VMM itself gives (others come from the guest).
  static constexpr int kStatusReset = 0;
  static constexpr int kStatusError = 1;

  // Validates cfg, opens the hypervisor, builds memory, loads the kernel and initrd, writes the
  // boot structures and creates vCPUs and devices. Nothing runs yet. Throws sm::Error.
  explicit Machine(MachineConfig cfg);
  // Restores the VM saved in `snapshot_dir` (by snapshot()). cfg gives the host side (disks'
  // paths, the vsock socket, the console) and must describe the same machine: same memory,
  // vCPUs, devices, kernel, initramfs, disks and identities, else sm::Error says what differs.
  // Nothing runs yet; start() runs it from where it was captured. Throws sm::Error
  // (snapshot::SnapshotError for a damaged or foreign snapshot).
  Machine(MachineConfig cfg, const std::filesystem::path& snapshot_dir);
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

  using SnapshotOptions = vmm::SnapshotOptions;
  using SnapshotStats = vmm::SnapshotStats;
  // Captures the running VM into `dir` (created if missing; must not hold a snapshot yet):
  // dir/memory and dir/state. One snapshot at a time; any thread but the VM's own. Throws
  // sm::Error, leaving the VM running (and no partial snapshot behind).
  SnapshotStats snapshot(const std::filesystem::path& dir, const SnapshotOptions& options = {});
  // The restored snapshot's sections, for the owner's own (empty for a booted VM).
  [[nodiscard]] const snapshot::StateFile* restored_state() const { return restored_state_.get(); }

  [[nodiscard]] const std::string& cmdline() const { return cmdline_; }
  // Why the VM ended, in words ("guest reset", "guest exit status 3", ...); empty while running.
  [[nodiscard]] std::string stop_reason() const;
  // The status once the VM is ending (stop() was called, by the guest or the host); nullopt
  // while it runs. Non-blocking.
  [[nodiscard]] std::optional<int> status() const;

  // The network backend (published ports, counters); nullptr without a network device. Lives as
  // long as the Machine; its methods are thread-safe.
  [[nodiscard]] net::Backend* network() const { return net_backend_.get(); }

 private:
  struct Restore;
  void build_platform();
  void boot_kernel();
  void restore_state(const Restore& r);
  [[nodiscard]] MachineShape shape() const;
  [[nodiscard]] std::vector<std::pair<std::string, std::string>> identities() const;
  void setup_devices(const Restore* r);
  void park(hv::Vcpu& vcpu);
  void pause(bool capture);
  void resume();
  void log_guest_error(const char* where, const std::exception& e);
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
  std::shared_ptr<devices::I8042> i8042_;
  std::shared_ptr<net::Backend> net_backend_;  // before the devices that use it
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

  std::unique_ptr<snapshot::StateFile> restored_state_;
  std::atomic<uint64_t> guest_errors_{0};  // per VM, so one noisy guest cannot silence others

  // Pausing (snapshot): vCPU threads and the I/O thread park while pause_requested_ is set.
  std::mutex snapshot_mu_;  // one snapshot at a time
  std::atomic<bool> pause_requested_{false};
  bool pause_capture_ = false;                  // guarded by pause_mu_
  std::mutex pause_mu_;
  std::condition_variable pause_cv_;
  unsigned vcpus_parked_ = 0;                   // guarded by pause_mu_
  bool io_parked_ = false;                      // guarded by pause_mu_
  uint64_t pause_gen_ = 0;                      // guarded by pause_mu_: pauses so far
  uint64_t resumed_gen_ = 0;                    // guarded by pause_mu_: the last pause resumed
  std::vector<std::optional<x86::VcpuState>> captured_;  // guarded by pause_mu_, by vCPU id
  std::string capture_error_;                   // guarded by pause_mu_

  std::atomic<bool> stopping_{false};
  mutable std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  std::optional<int> status_;  // guarded by stop_mu_
  std::string reason_;         // guarded by stop_mu_
};

}  // namespace sm::vmm
