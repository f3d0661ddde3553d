// The hypervisor seam: three small interfaces (Hypervisor, Vm, Vcpu) that the VMM codes
// against, so that KVM today and HVF/WHP later sit behind the same calls. KVM's own types never
// leave src/hypervisor/kvm/; devices see only sm::Interrupt and sm::IoHandler.
//
// Lifetimes: a Vm must outlive its Vcpus and every Interrupt / ioeventfd it handed out.
// Threads: a Vcpu is run by one thread at a time; kick() may be called from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "common/unique_fd.h"
#include "vmm/interrupt.h"

namespace sm {
class GuestMemory;
}

namespace sm::x86 {
struct BootCpuState;
struct CpuidEntry;
struct VcpuState;
struct PlatformState;
}  // namespace sm::x86

namespace sm::hv {

// ---- What Vcpu::run() returns -------------------------------------------------------------
// `data` spans point into the backend's per-vCPU exit page and stay valid until the next run():
// for a read the VMM fills them in, and the backend hands the bytes to the guest on the next run.
namespace exit {
struct Mmio {
  uint64_t addr;
  std::span<std::byte> data;  // access width 1, 2, 4 or 8
  bool is_write;
};
// Port I/O. `size` is the access width; string instructions (rep ins/outs) repeat it:
// data.size() == size * count, one access after another.
struct Pio {
  uint16_t port;
  uint8_t size;
  std::span<std::byte> data;
  bool is_write;
};
struct Hlt {};
// Triple fault or a reset request the backend saw: on x86 the guest asked to reboot.
struct Shutdown {};
struct SystemEvent {
  enum class Kind { kShutdown, kReset, kCrash, kOther };
  Kind kind;
  uint32_t raw;  // backend's own code, for messages
};
// The backend could not go on with this vCPU (emulation failure, failed entry). `detail` holds
// a readable reason and a register dump.
struct InternalError {
  std::string detail;
};
// run() returned because kick() was called (or a signal arrived); nothing to emulate.
struct Interrupted {};
}  // namespace exit

using Exit = std::variant<exit::Mmio, exit::Pio, exit::Hlt, exit::Shutdown, exit::SystemEvent,
                          exit::InternalError, exit::Interrupted>;

[[nodiscard]] std::string describe(const Exit& e);

// ---- vCPU --------------------------------------------------------------------------------------
class Vcpu {
 public:
  virtual ~Vcpu() = default;
  [[nodiscard]] virtual uint32_t id() const = 0;
  // Runs the vCPU until it needs the VMM. Throws sm::Error only for failures of the backend
  // itself (a failed ioctl), never for guest behaviour.
  [[nodiscard]] virtual Exit run() = 0;
  // Makes a run() in progress on another thread return exit::Interrupted promptly, or the next
  // run() return it at once if none is in progress. Thread-safe and async in effect.
  virtual void kick() = 0;

#if defined(__x86_64__)
  // ---- x86_64 extension: boot state, CPUID, MSRs, local APIC. ----
  // Loads registers, segments, control registers and descriptor tables (sm::x86 builds them).
  virtual void set_boot_state(const x86::BootCpuState& state) = 0;
  virtual void set_cpuid(std::span<const x86::CpuidEntry> entries) = 0;
  // (index, value) pairs, as sm::x86::boot_msrs() gives them.
  virtual void set_msrs(std::span<const std::pair<uint32_t, uint64_t>> msrs) = 0;
  // LINT0 as ExtINT (the legacy PIC's output) and LINT1 as NMI, as the MP spec's virtual wire
  // mode expects (Intel MP spec 1.4, 3.6.2.2); needs the in-kernel irqchip.
  virtual void setup_lapic_lints() = 0;

  // ---- snapshots (x86_64). Call only while no thread is in run(). ----
  // Completes an MMIO/PIO exit the VMM has handled but the guest has not seen yet: one entry
  // with the "exit at once" flag set (KVM: KVM_RUN under immediate_exit), so the guest's
  // registers hold the access's result before they are read, and nothing is replayed on
  // restore. Returns exit::Interrupted when done; any other exit is a further access the
  // instruction needs (a string I/O's next chunk): handle it and call again.
  [[nodiscard]] virtual Exit finish_pending_io() = 0;
  // Reads every piece of the vCPU's state (registers, FPU/XSAVE, XCRs, every saveable MSR,
  // LAPIC, events, MP state, debug registers, TSC frequency, the CPUID it was given).
  [[nodiscard]] virtual x86::VcpuState save_state() = 0;
  // Loads a saved state into a freshly created vCPU, in the order the hardware needs (CPUID,
  // MP state, registers and MMU state, XSAVE/XCRs, debug registers, LAPIC, then MSRs so the
  // TSC deadline lands on an APIC in that mode, then events). Throws sm::Error naming the
  // piece the backend refused.
  virtual void restore_state(const x86::VcpuState& state) = 0;
#endif
};

// ---- VM ----------------------------------------------------------------------------------------
class Vm {
 public:
  virtual ~Vm() = default;
  // Maps every RAM region of `mem` into the guest. `mem` must outlive the Vm.
  virtual void map_memory(const GuestMemory& mem) = 0;
  // The in-kernel interrupt controller (on x86: PIC + IOAPIC + per-vCPU LAPIC, and the PIT).
  // Call before create_vcpu.
  virtual void create_irqchip() = 0;
  [[nodiscard]] virtual std::unique_ptr<Vcpu> create_vcpu(uint32_t id) = 0;
  // An edge interrupt on `gsi`, delivered by the kernel (irqfd) without a trip through a vCPU.
  [[nodiscard]] virtual std::unique_ptr<Interrupt> irq(uint32_t gsi) = 0;
  // Drives the legacy line `gsi` high or low (level semantics, from userspace).
  virtual void set_irq_line(uint32_t gsi, bool high) = 0;
  // An eventfd the kernel signals when the guest writes `len` bytes at MMIO address `addr`
  // (matching `datamatch` when given) instead of exiting to the VMM. The registration lasts as
  // long as the Vm; the caller owns the fd and reads it from the event loop.
  [[nodiscard]] virtual UniqueFd ioeventfd(uint64_t addr, uint32_t len,
                                           std::optional<uint64_t> datamatch) = 0;
#if defined(__x86_64__)
  // The in-kernel PICs, IOAPIC, PIT and paravirtual clock. Call with every vCPU out of run().
  [[nodiscard]] virtual x86::PlatformState save_platform() = 0;
  // Into a VM whose irqchip exists; before its vCPUs restore their state.
  virtual void restore_platform(const x86::PlatformState& state) = 0;
#endif
};

// ---- Hypervisor --------------------------------------------------------------------------------
struct ProbeOptions {
  std::filesystem::path device = "/dev/kvm";
  std::filesystem::path sys_module = "/sys/module";  // where a PVM host shows kvm_pvm
};

class Hypervisor {
 public:
  virtual ~Hypervisor() = default;
  // Probes the host and returns the backend that can run a standard guest here. Throws sm::Error
  // saying why not (no device, no permission, wrong API, a PVM host) and what to do.
  [[nodiscard]] static std::unique_ptr<Hypervisor> open(const ProbeOptions& opts = {});

  [[nodiscard]] virtual std::string name() const = 0;  // "kvm"
  // One line about the backend for `kvm-check` and debug logs.
  [[nodiscard]] virtual std::string describe() const = 0;
  [[nodiscard]] virtual std::unique_ptr<Vm> create_vm() = 0;
#if defined(__x86_64__)
  // CPUID leaves this host can offer a guest, before the VMM's policy trims them.
  [[nodiscard]] virtual std::vector<x86::CpuidEntry> supported_cpuid() = 0;
#endif
};

}  // namespace sm::hv
