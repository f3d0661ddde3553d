// The KVM backend (Documentation/virt/kvm/api.rst, the ioctls named below).
#include "hypervisor/kvm/kvm.h"

#include <fcntl.h>
#include "hypervisor/kvm/kvm_uapi.h"
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <array>
#include <atomic>
#include <cstring>
#include <mutex>
#include <system_error>
#include <vector>

#include "arch/x86_64/boot_cpu.h"
#include "arch/x86_64/cpu_state.h"
#include "arch/x86_64/cpuid.h"
#include "arch/x86_64/layout.h"
#include "common/error.h"
#include "hypervisor/kvm/kvm_state.h"
#include "vmm/guest_memory.h"

namespace sm::hv::kvm {
namespace {

const char* const kNestedHint =
    "to run guests on this machine anyway, run supermachine inside the nested-KVM harness: "
    "scripts/nested supermachine ...";

// Capabilities the VMM relies on, with why (KVM_CHECK_EXTENSION).
struct RequiredCap {
  int cap;
  const char* name;
};
constexpr std::array kRequiredCaps = {
    RequiredCap{KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY (guest RAM from our memfd)"},
    RequiredCap{KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP (in-kernel PIC/IOAPIC/LAPIC)"},
    RequiredCap{KVM_CAP_PIT2, "KVM_CAP_PIT2 (in-kernel PIT for the guest's timer calibration)"},
    RequiredCap{KVM_CAP_IRQFD, "KVM_CAP_IRQFD (device interrupts without a vCPU exit)"},
    RequiredCap{KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD (queue notifications without a vCPU exit)"},
    RequiredCap{KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"},
    RequiredCap{KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID (KVM_GET_SUPPORTED_CPUID)"},
    RequiredCap{KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT (stopping vCPUs without races)"},
};

// ---- kicking vCPUs ----------------------------------------------------------------------------
// The kick signal is SIGRTMIN. The first run() of any vCPU installs its handler process-wide
// and unblocks it on each thread that runs a vCPU. kick() sends it to the thread in run(); the
// handler sets immediate_exit in that thread's kvm_run, so a signal landing just before KVM_RUN
// still makes KVM_RUN return at once (api.rst, "immediate_exit"); one landing during KVM_RUN
// interrupts it with EINTR.
//
// For an embedding program: SIGRTMIN belongs to supermachine on the threads that run vCPUs
// (they keep tls_run set for the rest of their life). If the program had its own SIGRTMIN
// handler when the first vCPU ran, ours chains to it for the signal on every other thread
// (tls_run == nullptr), with the same signo/siginfo/context; that handler's own sa_mask and
// SA_RESETHAND/SA_NODEFER flags are not reapplied. A handler the program installs for SIGRTMIN
// after the first vCPU ran replaces ours and breaks kick(): chain to the one it replaces.
thread_local kvm_run* tls_run = nullptr;

// The handler that was installed for the kick signal before ours, when it was a function;
// written once, before our handler is installed, and published through chain_previous_kick.
struct sigaction previous_kick_action {};
std::atomic<bool> chain_previous_kick{false};
static_assert(std::atomic<bool>::is_always_lock_free, "read from a signal handler");

void on_kick_signal(int sig, siginfo_t* info, void* context) {
  if (tls_run) {
    tls_run->immediate_exit = 1;
    return;
  }
  if (!chain_previous_kick.load(std::memory_order_acquire)) return;
  const struct sigaction& prev = previous_kick_action;
  if (prev.sa_flags & SA_SIGINFO) {
    if (prev.sa_sigaction) prev.sa_sigaction(sig, info, context);
  } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler) {
    prev.sa_handler(sig);
  }
}

int kick_signal() { return SIGRTMIN; }

void install_kick_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction prev {};
    if (::sigaction(kick_signal(), nullptr, &prev) != 0) throw sys_error("sigaction(SIGRTMIN) query");
    const bool is_function = (prev.sa_flags & SA_SIGINFO)
                                 ? prev.sa_sigaction != nullptr
                                 : prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN;
    if (is_function) {
      previous_kick_action = prev;
      chain_previous_kick.store(true, std::memory_order_release);
    }
    struct sigaction sa {};
    sa.sa_sigaction = on_kick_signal;
    sigemptyset(&sa.sa_mask);
    // Other system calls on a vCPU thread (writing the console) restart; KVM_RUN never does.
    sa.sa_flags = SA_RESTART | SA_SIGINFO;
    if (::sigaction(kick_signal(), &sa, nullptr) != 0) throw sys_error("sigaction(SIGRTMIN)");
  });
}

// ---- interrupts ------------------------------------------------------------------------------
class IrqFd : public Interrupt {
 public:
  explicit IrqFd(UniqueFd fd) : fd_(std::move(fd)) {}
  void trigger() override {
    uint64_t one = 1;
    // EAGAIN means the counter is saturated: an interrupt is pending anyway.
    [[maybe_unused]] auto n = ::write(fd_.get(), &one, sizeof one);
  }

 private:
  UniqueFd fd_;  // closing it detaches the irqfd from the VM (the kernel sees EPOLLHUP)
};

// ---- register dump for internal errors -------------------------------------------------------
std::string dump_registers(int vcpu_fd) {
  kvm_regs r{};
  kvm_sregs s{};
  if (xioctl(vcpu_fd, KVM_GET_REGS, &r) != 0 || xioctl(vcpu_fd, KVM_GET_SREGS, &s) != 0)
    return fmt::format("(registers unavailable: {})", std::strerror(errno));
  return fmt::format(
      "rip={:#018x} rsp={:#018x} rflags={:#x}\n"
      "rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n"
      "rsi={:#018x} rdi={:#018x} rbp={:#018x}\n"
      "r8={:#018x} r9={:#018x} r10={:#018x} r11={:#018x}\n"
      "r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}\n"
      "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}\n"
      "cs={:#x} (base {:#x} l={} db={}) ss={:#x} gdt={:#x}+{:#x} idt={:#x}+{:#x}",
      r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10,
      r.r11, r.r12, r.r13, r.r14, r.r15, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector,
      s.cs.base, s.cs.l, s.cs.db, s.ss.selector, s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit);
}

const char* internal_suberror_name(uint32_t sub) {
  switch (sub) {
    case KVM_INTERNAL_ERROR_EMULATION:
      return "instruction emulation failed";
    case KVM_INTERNAL_ERROR_SIMUL_EX:
      return "exception while delivering an exception";
    case KVM_INTERNAL_ERROR_DELIVERY_EV:
      return "exit while delivering an event";
    case KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON:
      return "unexpected exit reason";
    default:
      return "unknown suberror";
  }
}

// ---- vCPU ------------------------------------------------------------------------------------
class KvmVcpu : public Vcpu {
 public:
  KvmVcpu(uint32_t id, UniqueFd fd, size_t run_size, VcpuStateConfig state_config)
      : id_(id), fd_(std::move(fd)), run_size_(run_size), state_config_(std::move(state_config)) {
    void* p = ::mmap(nullptr, run_size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    if (p == MAP_FAILED) throw sys_error(fmt::format("mapping kvm_run of vCPU {}", id_));
    run_ = static_cast<kvm_run*>(p);
  }
  ~KvmVcpu() override { ::munmap(run_, run_size_); }

  [[nodiscard]] uint32_t id() const override { return id_; }

  Exit run() override {
    {
      std::lock_guard lock(kick_mu_);
      if (!thread_) {
        // First run on this thread: make sure the kick signal can reach it.
        install_kick_handler();
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, kick_signal());
        pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
      }
      thread_ = pthread_self();
      tls_run = run_;
      if (kick_pending_) {
        kick_pending_ = false;
        run_->immediate_exit = 0;
        return exit::Interrupted{};
      }
    }
    int r = ::ioctl(fd_.get(), KVM_RUN, 0);
    int err = errno;
    {
      std::lock_guard lock(kick_mu_);
      thread_.reset();
      if (r < 0 && (err == EINTR || err == EAGAIN)) {
        kick_pending_ = false;
        run_->immediate_exit = 0;
        return exit::Interrupted{};
      }
    }
    if (r < 0) throw sys_error(fmt::format("KVM_RUN on vCPU {}", id_), err);
    return translate_exit();
  }

  void kick() override {
    std::lock_guard lock(kick_mu_);
    kick_pending_ = true;
    // Under kick_mu_ the thread cannot leave run() and exit, so the id is alive.
    if (thread_) pthread_kill(*thread_, kick_signal());
  }

  void set_boot_state(const x86::BootCpuState& st) override {
    kvm_sregs s{};
    if (xioctl(fd_.get(), KVM_GET_SREGS, &s) != 0) throw sys_error("KVM_GET_SREGS");
    s.cs = to_kvm(st.cs);
    s.ds = to_kvm(st.ds);
    s.es = to_kvm(st.es);
    s.fs = to_kvm(st.fs);
    s.gs = to_kvm(st.gs);
    s.ss = to_kvm(st.ss);
    s.tr = to_kvm(st.tr);
    s.ldt = to_kvm(st.ldt);
    s.gdt.base = st.gdt.base;
    s.gdt.limit = st.gdt.limit;
    s.idt.base = st.idt.base;
    s.idt.limit = st.idt.limit;
    s.cr0 = st.cr0;
    s.cr3 = st.cr3;
    s.cr4 = st.cr4;
    s.efer = st.efer;
    if (xioctl(fd_.get(), KVM_SET_SREGS, &s) != 0) throw sys_error("KVM_SET_SREGS");

    kvm_regs r{};
    r.rip = st.rip;
    r.rsp = st.rsp;
    r.rbp = st.rbp;
    r.rsi = st.rsi;
    r.rflags = st.rflags;
    if (xioctl(fd_.get(), KVM_SET_REGS, &r) != 0) throw sys_error("KVM_SET_REGS");

    // x87 and SSE control words as after FNINIT / reset (Intel SDM vol. 1, 8.1.5 and 10.2.3).
    kvm_fpu fpu{};
    fpu.fcw = 0x37f;
    fpu.mxcsr = 0x1f80;
    if (xioctl(fd_.get(), KVM_SET_FPU, &fpu) != 0) throw sys_error("KVM_SET_FPU");
  }

  void set_cpuid(std::span<const x86::CpuidEntry> entries) override {
    kvm::set_cpuid(fd_.get(), id_, entries);
    // Remembered for save_state(); which MSRs KVM reads can depend on the CPUID (the PMU's).
    cpuid_.assign(entries.begin(), entries.end());
    readable_msrs_.reset();
  }

  void set_msrs(std::span<const std::pair<uint32_t, uint64_t>> msrs) override {
    kvm::set_msrs(fd_.get(), id_, msrs);
  }

  void setup_lapic_lints() override {
    // Local APIC register offsets and LVT delivery modes (Intel SDM vol. 3, 10.5.1).
    constexpr size_t kLvtLint0 = 0x350;
    constexpr size_t kLvtLint1 = 0x360;
    constexpr uint32_t kModeExtInt = 7u << 8;
    constexpr uint32_t kModeNmi = 4u << 8;
    constexpr uint32_t kModeMask = 7u << 8;
    kvm_lapic_state lapic{};
    if (xioctl(fd_.get(), KVM_GET_LAPIC, &lapic) != 0) throw sys_error("KVM_GET_LAPIC");
    auto set_mode = [&](size_t off, uint32_t mode) {
      uint32_t v;
      std::memcpy(&v, lapic.regs + off, sizeof v);
      v = (v & ~kModeMask) | mode;
      std::memcpy(lapic.regs + off, &v, sizeof v);
    };
    set_mode(kLvtLint0, kModeExtInt);
    set_mode(kLvtLint1, kModeNmi);
    if (xioctl(fd_.get(), KVM_SET_LAPIC, &lapic) != 0) throw sys_error("KVM_SET_LAPIC");
  }

  Exit finish_pending_io() override {
    // One KVM_RUN with immediate_exit set: KVM first completes the access the last exit asked
    // for (copies an MMIO/PIO read's data into the guest's registers, finishes the instruction),
    // then sees immediate_exit and returns EINTR without entering the guest; or returns 0 with a
    // new exit when the instruction needs another access (api.rst, "immediate_exit" and the
    // KVM_EXIT_IO / KVM_EXIT_MMIO notes on completing an exit).
    //
    // This is not run(): the caller guarantees no run() is in progress, so thread_ stays empty
    // (kick() has no thread to signal, and needs none: this entry does not wait), and a pending
    // kick is left pending for the next run() to report.
    {
      std::lock_guard lock(kick_mu_);
      run_->immediate_exit = 1;
    }
    int r = ::ioctl(fd_.get(), KVM_RUN, 0);
    int err = errno;
    {
      std::lock_guard lock(kick_mu_);
      // run() checks kick_pending_ before it enters, so clearing this loses no kick.
      run_->immediate_exit = 0;
    }
    if (r < 0 && (err == EINTR || err == EAGAIN)) return exit::Interrupted{};
    if (r < 0) throw sys_error(fmt::format("KVM_RUN (finishing pending I/O) on vCPU {}", id_), err);
    return translate_exit();
  }

  x86::VcpuState save_state() override {
    if (!readable_msrs_) {
      if (!state_config_.msr_candidates) throw Error(fmt::format("vCPU {}: no MSR list to save", id_));
      readable_msrs_ = probe_readable_msrs(fd_.get(), id_, *state_config_.msr_candidates);
    }
    x86::VcpuState s = save_vcpu_state(fd_.get(), id_, state_config_, *readable_msrs_);
    s.cpuid = cpuid_.empty() ? get_cpuid(fd_.get(), id_) : cpuid_;
    return s;
  }

  void restore_state(const x86::VcpuState& state) override {
    // CPUID first: KVM checks much of what follows (XSAVE features, MSRs) against it.
    if (state.cpuid.empty()) throw Error(fmt::format("restoring vCPU {}: the saved state has no CPUID", id_));
    set_cpuid(state.cpuid);
    restore_vcpu_state(fd_.get(), id_, state_config_, state);
  }

 private:
  Exit translate_exit() {
    switch (run_->exit_reason) {
      case KVM_EXIT_MMIO: {
        auto len = std::min<uint32_t>(run_->mmio.len, sizeof run_->mmio.data);
        return exit::Mmio{run_->mmio.phys_addr,
                          std::span(reinterpret_cast<std::byte*>(run_->mmio.data), len),
                          run_->mmio.is_write != 0};
      }
      case KVM_EXIT_IO: {
        const auto& io = run_->io;
        uint64_t bytes = uint64_t{io.size} * io.count;
        if (io.data_offset + bytes > run_size_)
          return exit::InternalError{fmt::format("KVM_EXIT_IO data outside kvm_run (offset {:#x}, {} bytes)",
                                                 io.data_offset, bytes)};
        return exit::Pio{io.port, io.size,
                         std::span(reinterpret_cast<std::byte*>(run_) + io.data_offset, bytes),
                         io.direction == KVM_EXIT_IO_OUT};
      }
      case KVM_EXIT_HLT:
        return exit::Hlt{};
      case KVM_EXIT_SHUTDOWN:
        return exit::Shutdown{};
      case KVM_EXIT_INTR:
        return exit::Interrupted{};
      case KVM_EXIT_SYSTEM_EVENT: {
        uint32_t t = run_->system_event.type;
        auto kind = t == KVM_SYSTEM_EVENT_SHUTDOWN ? exit::SystemEvent::Kind::kShutdown
                    : t == KVM_SYSTEM_EVENT_RESET  ? exit::SystemEvent::Kind::kReset
                    : t == KVM_SYSTEM_EVENT_CRASH  ? exit::SystemEvent::Kind::kCrash
                                                   : exit::SystemEvent::Kind::kOther;
        return exit::SystemEvent{kind, t};
      }
      case KVM_EXIT_INTERNAL_ERROR: {
        const auto& ie = run_->internal;
        std::string data;
        for (uint32_t i = 0; i < std::min<uint32_t>(ie.ndata, 16); ++i)
          data += fmt::format(" {:#x}", ie.data[i]);
        std::string insn;
        if (ie.suberror == KVM_INTERNAL_ERROR_EMULATION &&
            (run_->emulation_failure.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)) {
          const auto& ef = run_->emulation_failure;
          for (unsigned i = 0; i < std::min<unsigned>(ef.insn_size, 15); ++i)
            insn += fmt::format(" {:02x}", ef.insn_bytes[i]);
          insn = "\ninstruction bytes:" + insn;
        }
        return exit::InternalError{fmt::format(
            "KVM internal error on vCPU {}: suberror {} ({}), data:{}{}\n{}", id_, ie.suberror,
            internal_suberror_name(ie.suberror), data.empty() ? " none" : data, insn,
            dump_registers(fd_.get()))};
      }
      case KVM_EXIT_FAIL_ENTRY:
        return exit::InternalError{fmt::format(
            "KVM could not enter vCPU {}: hardware entry failure reason {:#x} on host CPU {}\n{}",
            id_, run_->fail_entry.hardware_entry_failure_reason, run_->fail_entry.cpu,
            dump_registers(fd_.get()))};
      case KVM_EXIT_UNKNOWN:
        return exit::InternalError{fmt::format("KVM exit unknown on vCPU {}: hardware exit reason {:#x}\n{}",
                                               id_, run_->hw.hardware_exit_reason, dump_registers(fd_.get()))};
      default:
        return exit::InternalError{fmt::format("unhandled KVM exit reason {} on vCPU {}\n{}",
                                               run_->exit_reason, id_, dump_registers(fd_.get()))};
    }
  }

  uint32_t id_;
  UniqueFd fd_;
  size_t run_size_;
  kvm_run* run_ = nullptr;
  VcpuStateConfig state_config_;
  std::vector<x86::CpuidEntry> cpuid_;                 // what set_cpuid() was given
  std::optional<std::vector<uint32_t>> readable_msrs_;  // probed at the first save_state()

  std::mutex kick_mu_;
  bool kick_pending_ = false;              // guarded by kick_mu_
  std::optional<pthread_t> thread_;        // the thread inside run(), guarded by kick_mu_
};

// ---- VM --------------------------------------------------------------------------------------
class KvmVm : public Vm {
 public:
  KvmVm(UniqueFd fd, size_t run_size, std::shared_ptr<const std::vector<uint32_t>> msr_candidates)
      : fd_(std::move(fd)), run_size_(run_size), msr_candidates_(std::move(msr_candidates)) {
    // On Intel VMX, KVM needs three pages for a real-mode TSS and one for an identity page
    // table, inside guest-physical space but outside RAM (api.rst, KVM_SET_TSS_ADDR and
    // KVM_SET_IDENTITY_MAP_ADDR). The layout reserves them at the top of the MMIO hole.
    uint64_t identity = x86::kHypervisorIdentityMapAddr;
    if (xioctl(fd_.get(), KVM_SET_IDENTITY_MAP_ADDR, &identity) != 0)
      throw sys_error("KVM_SET_IDENTITY_MAP_ADDR");
    if (xioctl(fd_.get(), KVM_SET_TSS_ADDR, static_cast<unsigned long>(x86::kHypervisorTssAddr)) != 0)
      throw sys_error("KVM_SET_TSS_ADDR");
  }

  void map_memory(const GuestMemory& mem) override {
    for (const auto& r : mem.regions()) {
      kvm_userspace_memory_region m{};
      m.slot = next_slot_++;
      m.guest_phys_addr = r.gpa;
      m.memory_size = r.size;
      m.userspace_addr = reinterpret_cast<uint64_t>(r.host);
      if (xioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &m) != 0)
        throw sys_error(fmt::format("KVM_SET_USER_MEMORY_REGION {:#x}+{:#x}", r.gpa, r.size));
    }
  }

  void create_irqchip() override {
    if (xioctl(fd_.get(), KVM_CREATE_IRQCHIP, 0) != 0) throw sys_error("KVM_CREATE_IRQCHIP");
    // The PIT's port 0x61 speaker bits are emulated as a dummy so Linux's PIT calibration works
    // without a userspace speaker.
    kvm_pit_config pit{};
    pit.flags = KVM_PIT_SPEAKER_DUMMY;
    if (xioctl(fd_.get(), KVM_CREATE_PIT2, &pit) != 0) throw sys_error("KVM_CREATE_PIT2");
  }

  std::unique_ptr<Vcpu> create_vcpu(uint32_t id) override {
    int fd = xioctl(fd_.get(), KVM_CREATE_VCPU, static_cast<unsigned long>(id));
    if (fd < 0) throw sys_error(fmt::format("KVM_CREATE_VCPU {}", id));
    UniqueFd vcpu_fd(fd);
    VcpuStateConfig cfg;
    // The XSAVE size depends on the dynamic features this process may give guests
    // (arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM)), fixed by the time vCPUs exist: asked per vCPU.
    int xsave2 = xioctl(fd_.get(), KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
    if (xsave2 > static_cast<int>(sizeof(kvm_xsave))) cfg.xsave_size = static_cast<size_t>(xsave2);
    cfg.has_xcrs = xioctl(fd_.get(), KVM_CHECK_EXTENSION, KVM_CAP_XCRS) > 0;
    cfg.msr_candidates = msr_candidates_;
    return std::make_unique<KvmVcpu>(id, std::move(vcpu_fd), run_size_, std::move(cfg));
  }

  std::unique_ptr<Interrupt> irq(uint32_t gsi) override {
    UniqueFd efd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!efd) throw sys_error("eventfd for irqfd");
    kvm_irqfd req{};
    req.fd = static_cast<uint32_t>(efd.get());
    req.gsi = gsi;
    if (xioctl(fd_.get(), KVM_IRQFD, &req) != 0) throw sys_error(fmt::format("KVM_IRQFD gsi {}", gsi));
    return std::make_unique<IrqFd>(std::move(efd));
  }

  void set_irq_line(uint32_t gsi, bool high) override {
    kvm_irq_level l{};
    l.irq = gsi;
    l.level = high ? 1 : 0;
    if (xioctl(fd_.get(), KVM_IRQ_LINE, &l) != 0) throw sys_error(fmt::format("KVM_IRQ_LINE {}", gsi));
  }

  UniqueFd ioeventfd(uint64_t addr, uint32_t len, std::optional<uint64_t> datamatch) override {
    UniqueFd efd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!efd) throw sys_error("eventfd for ioeventfd");
    kvm_ioeventfd req{};
    req.addr = addr;
    req.len = len;
    req.fd = efd.get();
    if (datamatch) {
      req.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
      req.datamatch = *datamatch;
    }
    if (xioctl(fd_.get(), KVM_IOEVENTFD, &req) != 0)
      throw sys_error(fmt::format("KVM_IOEVENTFD {:#x}/{}", addr, len));
    return efd;
  }

  x86::PlatformState save_platform() override { return save_platform_state(fd_.get()); }

  void restore_platform(const x86::PlatformState& state) override { restore_platform_state(fd_.get(), state); }

 private:
  UniqueFd fd_;
  size_t run_size_;
  std::shared_ptr<const std::vector<uint32_t>> msr_candidates_;
  uint32_t next_slot_ = 0;
};

// ---- hypervisor ------------------------------------------------------------------------------
class KvmHypervisor : public Hypervisor {
 public:
  explicit KvmHypervisor(UniqueFd fd) : fd_(std::move(fd)) {
    int size = xioctl(fd_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
    if (size < static_cast<int>(sizeof(kvm_run))) throw sys_error("KVM_GET_VCPU_MMAP_SIZE");
    run_size_ = static_cast<size_t>(size);
    // The MSRs a snapshot saves, fetched once (KVM_GET_MSR_INDEX_LIST is a /dev/kvm ioctl).
    msr_candidates_ = std::make_shared<const std::vector<uint32_t>>(msr_candidates(fd_.get()));
  }

  std::string name() const override { return "kvm"; }

  std::string describe() const override {
    int vcpus = xioctl(fd_.get(), KVM_CHECK_EXTENSION, KVM_CAP_NR_VCPUS);
    int max_vcpus = xioctl(fd_.get(), KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
    return fmt::format("KVM API {}, up to {} vCPUs per VM (recommended {}), irqchip, PIT, irqfd, ioeventfd",
                       kApiVersion, max_vcpus, vcpus);
  }

  std::unique_ptr<Vm> create_vm() override {
    int fd = xioctl(fd_.get(), KVM_CREATE_VM, 0);
    if (fd < 0) throw sys_error("KVM_CREATE_VM");
    return std::make_unique<KvmVm>(UniqueFd(fd), run_size_, msr_candidates_);
  }

  std::vector<x86::CpuidEntry> supported_cpuid() override {
    // The kernel says E2BIG until the buffer holds every entry; grow until it fits.
    for (uint32_t n = 64; n <= 4096; n *= 2) {
      std::vector<std::byte> buf(sizeof(kvm_cpuid2) + n * sizeof(kvm_cpuid_entry2));
      auto* c = reinterpret_cast<kvm_cpuid2*>(buf.data());
      c->nent = n;
      if (xioctl(fd_.get(), KVM_GET_SUPPORTED_CPUID, c) != 0) {
        if (errno == E2BIG) continue;
        throw sys_error("KVM_GET_SUPPORTED_CPUID");
      }
      std::vector<x86::CpuidEntry> out;
      out.reserve(c->nent);
      for (uint32_t i = 0; i < c->nent; ++i) {
        const auto& k = c->entries[i];
        out.push_back({k.function, k.index, k.flags, k.eax, k.ebx, k.ecx, k.edx});
      }
      return out;
    }
    throw Error("KVM_GET_SUPPORTED_CPUID: more than 4096 entries");
  }

 private:
  UniqueFd fd_;
  size_t run_size_ = 0;
  std::shared_ptr<const std::vector<uint32_t>> msr_candidates_;
};

}  // namespace

UniqueFd probe(const ProbeOptions& opts) {
  const std::string dev = opts.device.string();
  const bool pvm = std::filesystem::exists(opts.sys_module / "kvm_pvm");
  const std::string pvm_note =
      "this host's KVM is PVM (the kvm_pvm module is loaded): PVM runs only PVM-patched guest "
      "kernels, not a standard Linux guest";

  UniqueFd fd(::open(dev.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) {
    int err = errno;
    if (err == ENOENT) {
      if (pvm)
        throw Error(fmt::format("{} not found, and {}; {}", dev, pvm_note, kNestedHint));
      throw Error(fmt::format(
          "{} not found: this host offers no KVM. Load kvm_intel or kvm_amd (modprobe kvm_intel / "
          "kvm_amd) and enable virtualization (VT-x / AMD-V) in the firmware; {}",
          dev, kNestedHint));
    }
    if (err == EACCES || err == EPERM) {
      throw Error(fmt::format(
          "permission denied opening {}: add yourself to the kvm group (sudo usermod -aG kvm "
          "$USER, then log in again) or run as root",
          dev));
    }
    throw sys_error(fmt::format("opening {}", dev), err);
  }

  int version = ::ioctl(fd.get(), KVM_GET_API_VERSION, 0);
  if (version < 0)
    throw Error(fmt::format("{} is not a KVM device: KVM_GET_API_VERSION failed: {}", dev,
                            std::strerror(errno)));
  if (version != kApiVersion)
    throw Error(fmt::format("{} speaks KVM API version {}, supermachine needs version {}", dev,
                            version, kApiVersion));

  if (pvm) throw Error(fmt::format("{}; {}", pvm_note, kNestedHint));

  for (const auto& c : kRequiredCaps) {
    if (::ioctl(fd.get(), KVM_CHECK_EXTENSION, c.cap) <= 0)
      throw Error(fmt::format("{} lacks {}: this host's KVM is too old or restricted; {}", dev,
                              c.name, kNestedHint));
  }
  return fd;
}

std::unique_ptr<Hypervisor> open(const ProbeOptions& opts) {
  return std::make_unique<KvmHypervisor>(probe(opts));
}

}  // namespace sm::hv::kvm
