// Saved x86_64 CPU and platform state, neutral of the hypervisor: what a snapshot holds per vCPU
// (VcpuState) and per VM (PlatformState). Backends translate their own structures to and from
// these (KVM: src/hypervisor/kvm/kvm_state.cc); the snapshot code encodes them
// (save/load below). Layouts follow the hardware: registers, segment caches, the XSAVE area
// (Intel SDM vol. 1, 13.4), the local APIC register page (SDM vol. 3, 10.4.1), the 8259A PIC,
// the 82093AA IOAPIC and the 8254 PIT.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "arch/x86_64/boot_cpu.h"
#include "arch/x86_64/cpuid.h"
#include "snapshot/codec.h"

namespace sm::x86 {

// DescriptorTable (boot_cpu.h) has no operator== of its own; SpecialRegs' defaulted one needs it.
// Fold into boot_cpu.h (as a defaulted member) and drop this when that file is next edited.
[[nodiscard]] inline bool operator==(const DescriptorTable& a, const DescriptorTable& b) {
  return a.base == b.base && a.limit == b.limit;
}

struct Regs {
  uint64_t rax = 0, rbx = 0, rcx = 0, rdx = 0, rsi = 0, rdi = 0, rsp = 0, rbp = 0;
  uint64_t r8 = 0, r9 = 0, r10 = 0, r11 = 0, r12 = 0, r13 = 0, r14 = 0, r15 = 0;
  uint64_t rip = 0, rflags = 0;
  bool operator==(const Regs&) const = default;
};

struct SpecialRegs {
  Segment cs, ds, es, fs, gs, ss, tr, ldt;
  DescriptorTable gdt, idt;
  uint64_t cr0 = 0, cr2 = 0, cr3 = 0, cr4 = 0, cr8 = 0;
  uint64_t efer = 0, apic_base = 0;
  // Pending external interrupt (one bit per vector), as KVM_GET_SREGS reports it.
  std::array<uint64_t, 4> interrupt_bitmap{};
  bool operator==(const SpecialRegs&) const = default;
};

// Exceptions, interrupts, NMIs and SMIs in flight (what the CPU was about to deliver).
struct VcpuEvents {
  uint8_t exception_injected = 0, exception_nr = 0, exception_has_error_code = 0, exception_pending = 0;
  uint32_t exception_error_code = 0;
  uint8_t exception_has_payload = 0;
  uint64_t exception_payload = 0;
  uint8_t interrupt_injected = 0, interrupt_nr = 0, interrupt_soft = 0, interrupt_shadow = 0;
  uint8_t nmi_injected = 0, nmi_pending = 0, nmi_masked = 0;
  uint32_t sipi_vector = 0;
  uint8_t smi_smm = 0, smi_pending = 0, smi_inside_nmi = 0, smi_latched_init = 0;
  uint8_t triple_fault_pending = 0;
  uint32_t flags = 0;  // which of the optional fields above are valid (backend-defined bits)
  bool operator==(const VcpuEvents&) const = default;
};

struct DebugRegs {
  std::array<uint64_t, 4> db{};
  uint64_t dr6 = 0, dr7 = 0;
  uint64_t flags = 0;
  bool operator==(const DebugRegs&) const = default;
};

// Multiprocessor state (running, halted, waiting for INIT/SIPI, ...), as the backend numbers it.
inline constexpr uint32_t kMpStateRunnable = 0;
inline constexpr uint32_t kMpStateUninitialized = 1;
inline constexpr uint32_t kMpStateInitReceived = 2;
inline constexpr uint32_t kMpStateHalted = 3;
inline constexpr uint32_t kMpStateSipiReceived = 4;

inline constexpr size_t kLapicSize = 1024;
// Caps the decoder enforces (an XSAVE area is 4 KiB unless AMX-like state is passed through).
inline constexpr size_t kMaxXsaveBytes = 64 * 1024;
inline constexpr size_t kMaxMsrs = 1024;
inline constexpr size_t kMaxXcrs = 16;
inline constexpr size_t kMaxCpuidEntries = 4096;

struct VcpuState {
  std::vector<CpuidEntry> cpuid;  // what the vCPU was given (KVM_SET_CPUID2)
  uint32_t mp_state = kMpStateRunnable;
  Regs regs;
  SpecialRegs sregs;
  std::vector<std::byte> xsave;  // the XSAVE area (x87, SSE, AVX, ...) in the SDM's layout
  std::vector<std::pair<uint32_t, uint64_t>> xcrs;  // (XCR index, value): XCR0 at least
  std::array<std::byte, kLapicSize> lapic{};        // local APIC register page
  std::vector<std::pair<uint32_t, uint64_t>> msrs;  // (MSR index, value), in restore order
  VcpuEvents events;
  DebugRegs debug;
  uint32_t tsc_khz = 0;  // the vCPU's TSC frequency
  bool operator==(const VcpuState&) const = default;
};

// One 8259A (KVM's kvm_pic_state fields).
struct PicState {
  uint8_t last_irr = 0, irr = 0, imr = 0, isr = 0, priority_add = 0, irq_base = 0;
  uint8_t read_reg_select = 0, poll = 0, special_mask = 0, init_state = 0, auto_eoi = 0;
  uint8_t rotate_on_auto_eoi = 0, special_fully_nested_mode = 0, init4 = 0, elcr = 0, elcr_mask = 0;
  bool operator==(const PicState&) const = default;
};

inline constexpr size_t kIoapicPins = 24;
struct IoapicState {
  uint64_t base_address = 0;
  uint32_t ioregsel = 0, id = 0, irr = 0;
  std::array<uint64_t, kIoapicPins> redirection{};
  bool operator==(const IoapicState&) const = default;
};

struct PitChannel {
  uint32_t count = 0;
  uint16_t latched_count = 0;
  uint8_t count_latched = 0, status_latched = 0, status = 0, read_state = 0, write_state = 0;
  uint8_t write_latch = 0, rw_mode = 0, mode = 0, bcd = 0, gate = 0;
  int64_t count_load_time = 0;
  bool operator==(const PitChannel&) const = default;
};

struct PitState {
  std::array<PitChannel, 3> channels{};
  uint32_t flags = 0;
  bool operator==(const PitState&) const = default;
};

struct PlatformState {
  std::array<PicState, 2> pic{};  // master, slave
  IoapicState ioapic;
  PitState pit;
  uint64_t clock = 0;  // the paravirtual clock (kvmclock) in ns
  uint32_t clock_flags = 0;
  bool operator==(const PlatformState&) const = default;
};

// Layout versions: each encoded struct starts with its own u32 version, so a later build can add
// fields and still read what this one wrote. load_* refuse a version they do not know.
inline constexpr uint32_t kVcpuStateLayout = 1;
inline constexpr uint32_t kPlatformStateLayout = 1;

// Encoding for the snapshot file. load_* validate sizes and caps and throw
// snapshot::SnapshotError; each consumes exactly what save wrote (the caller calls
// Decoder::finish when the section holds nothing else). save throws SnapshotError for a state
// that exceeds a cap, since no build could load it back.
void save(snapshot::Encoder& e, const VcpuState& s);
[[nodiscard]] VcpuState load_vcpu_state(snapshot::Decoder& d);
void save(snapshot::Encoder& e, const PlatformState& s);
[[nodiscard]] PlatformState load_platform_state(snapshot::Decoder& d);

}  // namespace sm::x86
