// The KVM side of snapshots: translation between KVM's structs and the neutral x86 state
// (arch/x86_64/cpu_state.h), and the get/set ioctls that move it (Documentation/virt/kvm/api.rst:
// KVM_GET/SET_REGS, _SREGS, _XSAVE/_XSAVE2, _XCRS, _LAPIC, _MSRS, _VCPU_EVENTS, _DEBUGREGS,
// _MP_STATE, _TSC_KHZ, _CPUID2; KVM_GET/SET_IRQCHIP, _PIT2, _CLOCK on the VM). Used by kvm.cc
// only; nothing here leaves src/hypervisor/kvm/.
//
// Every function throws sm::Error naming the ioctl and, for vCPU calls, the vCPU id.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "arch/x86_64/boot_cpu.h"
#include "arch/x86_64/cpu_state.h"
#include "arch/x86_64/cpuid.h"
#include "hypervisor/kvm/kvm_uapi.h"

namespace sm::hv::kvm {

// MSR indices with an ordering rule on restore (Intel SDM vol. 4; KVM's paravirtual MSRs from
// Documentation/virt/kvm/x86/msr.rst).
inline constexpr uint32_t kMsrIa32Tsc = 0x10;
inline constexpr uint32_t kMsrIa32TscDeadline = 0x6e0;

// What a VM learnt about the host once, shared by its vCPUs.
struct VcpuStateConfig {
  // Bytes that KVM_GET_XSAVE2 / KVM_SET_XSAVE move: KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM
  // when larger than struct kvm_xsave (AMX-like dynamic state), else 4096 and KVM_GET_XSAVE.
  size_t xsave_size = sizeof(kvm_xsave);
  bool has_xcrs = false;  // KVM_CAP_XCRS
  // MSRs a save tries, in KVM's order: msr_candidates() below.
  std::shared_ptr<const std::vector<uint32_t>> msr_candidates;
};

// ---- pure translations --------------------------------------------------------------------------
[[nodiscard]] kvm_segment to_kvm(const x86::Segment& s);
[[nodiscard]] x86::Segment from_kvm(const kvm_segment& k);

// ---- MSRs ---------------------------------------------------------------------------------------
// KVM_GET_MSR_INDEX_LIST on /dev/kvm (what KVM saves and restores: its msrs_to_save and
// emulated MSRs, paravirtual ones included), followed by the architectural MSRs it does not list
// but a guest changes (MTRRs, PAT, MISC_ENABLE, DEBUGCTL, XSS, machine-check banks),
// deduplicated. KVM's own order is kept: it restores MSRs that depend on each other correctly
// (the Hyper-V VP assist page before PV EOI, PLATFORM_INFO before MISC_FEATURES_ENABLES).
[[nodiscard]] std::vector<uint32_t> msr_candidates(int kvm_fd);

// The candidates KVM_GET_MSRS can read on this vCPU. KVM_GET_MSRS returns how many entries it
// read and stops at the first it cannot, so each short read skips that one index and resumes
// after it. The result is in restore order (order_msrs_for_restore).
[[nodiscard]] std::vector<uint32_t> probe_readable_msrs(int vcpu_fd, uint32_t vcpu_id,
                                                        std::span<const uint32_t> candidates);

// Stable reorder for KVM_SET_MSRS: IA32_TSC_DEADLINE last, so after IA32_TSC (KVM arms the
// deadline timer against the guest TSC as it is when the deadline is written) and, since
// restore sets the LAPIC before MSRs, onto a LAPIC whose timer is already in deadline mode.
void order_msrs_for_restore(std::vector<uint32_t>& msrs);
void order_msrs_for_restore(std::vector<std::pair<uint32_t, uint64_t>>& msrs);

// KVM_GET_MSRS / KVM_SET_MSRS in chunks KVM accepts; throws naming the first MSR KVM did not
// read or refused.
[[nodiscard]] std::vector<std::pair<uint32_t, uint64_t>> get_msrs(int vcpu_fd, uint32_t vcpu_id,
                                                                  std::span<const uint32_t> indices);
void set_msrs(int vcpu_fd, uint32_t vcpu_id, std::span<const std::pair<uint32_t, uint64_t>> msrs);

// ---- CPUID --------------------------------------------------------------------------------------
void set_cpuid(int vcpu_fd, uint32_t vcpu_id, std::span<const x86::CpuidEntry> entries);
// KVM_GET_CPUID2: what the vCPU was given (with KVM's run-time bits, e.g. OSXSAVE, applied).
[[nodiscard]] std::vector<x86::CpuidEntry> get_cpuid(int vcpu_fd, uint32_t vcpu_id);

// ---- whole vCPU / VM ----------------------------------------------------------------------------
// Everything but CPUID (the caller knows what it gave the vCPU). Order: MP state first
// (KVM_GET_MP_STATE first accepts pending INIT/SIPI events, which changes vCPU and LAPIC state),
// registers, special registers, XSAVE, XCRs, debug registers, LAPIC, `msrs` (probe_readable_msrs),
// vCPU events last (other GETs may still move an event), TSC frequency.
[[nodiscard]] x86::VcpuState save_vcpu_state(int vcpu_fd, uint32_t vcpu_id, const VcpuStateConfig& cfg,
                                             std::span<const uint32_t> msrs);

// Into a fresh vCPU whose CPUID the caller has already set from state.cpuid. Order: TSC
// frequency (before the TSC MSR is written, so the written value is read at the new rate), MP
// state, registers (KVM_SET_REGS drops a pending exception, so it precedes the events),
// special registers (the APIC base, before the LAPIC), XSAVE, XCRs, debug registers, LAPIC,
// MSRs (TSC deadline after TSC and after the LAPIC), vCPU events.
void restore_vcpu_state(int vcpu_fd, uint32_t vcpu_id, const VcpuStateConfig& cfg,
                        const x86::VcpuState& state);

// KVM_GET_IRQCHIP (PIC master, PIC slave, IOAPIC), KVM_GET_PIT2, KVM_GET_CLOCK.
[[nodiscard]] x86::PlatformState save_platform_state(int vm_fd);
// The reverse, in the same order; the clock is set to the saved value (the guest sees no time
// pass while it was saved).
void restore_platform_state(int vm_fd, const x86::PlatformState& state);

}  // namespace sm::hv::kvm
