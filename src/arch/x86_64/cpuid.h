// The CPUID and MSR policy for a microVM vCPU. The backend fetches what the hypervisor supports
// (KVM_GET_SUPPORTED_CPUID on KVM), converts to these plain entries, applies the policy, and
// hands the result to the vCPU.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace sm::x86 {

struct CpuidEntry {
  uint32_t function = 0;
  uint32_t index = 0;  // sub-leaf (ECX input)
  uint32_t flags = 0;  // backend-specific (KVM: KVM_CPUID_FLAG_SIGNIFCANT_INDEX...), kept as given
  uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
  bool operator==(const CpuidEntry&) const = default;
};

// Adjusts entries in place for vCPU vcpu_index of num_cpus (one thread per core, one socket):
//  - leaf 1: initial APIC ID = vcpu_index (EBX[31:24]), logical processor count (EBX[23:16]) and
//    HTT, CLFLUSH size 64, hypervisor bit (ECX[31]) set, MONITOR/MWAIT (ECX[3]) cleared;
//  - leaf 4 (Intel cache topology) core/sharing counts; leaf 5 (MONITOR/MWAIT) zeroed;
//  - leaf 6 (thermal and power management) zeroed except ARAT, which a VM's APIC timer honours;
//  - leaves 0xB/0x1F (x2APIC topology): SMT and core levels, x2APIC ID = vcpu_index;
//  - AMD leaves 0x80000001 (CmpLegacy), 0x80000008 (core count), 0x8000001E (extended APIC ID);
//  - hypervisor leaves 0x40000000.. (the KVM signature and features) kept as given.
// Entries absent from the vector stay absent.
void apply_cpuid_policy(std::vector<CpuidEntry>& entries, unsigned vcpu_index, unsigned num_cpus);

// Finds an entry; nullptr when absent.
[[nodiscard]] CpuidEntry* find_cpuid(std::vector<CpuidEntry>& entries, uint32_t function,
                                     uint32_t index = 0);

// MSR indices (Intel SDM vol. 4).
inline constexpr uint32_t kMsrIa32Tsc = 0x10;
inline constexpr uint32_t kMsrIa32SysenterCs = 0x174;
inline constexpr uint32_t kMsrIa32SysenterEsp = 0x175;
inline constexpr uint32_t kMsrIa32SysenterEip = 0x176;
inline constexpr uint32_t kMsrIa32MiscEnable = 0x1a0;
inline constexpr uint32_t kMsrStar = 0xc0000081;
inline constexpr uint32_t kMsrLstar = 0xc0000082;
inline constexpr uint32_t kMsrCstar = 0xc0000083;
inline constexpr uint32_t kMsrSyscallMask = 0xc0000084;
inline constexpr uint32_t kMsrKernelGsBase = 0xc0000102;
inline constexpr uint64_t kMiscEnableFastString = 1ull << 0;

// MSRs every vCPU gets at boot: SYSENTER_*, STAR/LSTAR/CSTAR/SYSCALL_MASK/KERNEL_GS_BASE = 0,
// TSC = 0, MISC_ENABLE = fast strings.
[[nodiscard]] std::vector<std::pair<uint32_t, uint64_t>> boot_msrs();

}  // namespace sm::x86
