#include "arch/x86_64/cpuid.h"

#include <algorithm>
#include <bit>

namespace sm::x86 {

namespace {

// Leaf 1 (Intel SDM vol. 2A, CPUID; AMD APM vol. 3, E.3.2).
constexpr uint32_t kLeaf1EcxMonitor = 1u << 3;
constexpr uint32_t kLeaf1EcxHypervisor = 1u << 31;
constexpr uint32_t kLeaf1EdxHtt = 1u << 28;
constexpr uint32_t kLeaf6EaxArat = 1u << 2;
constexpr uint32_t kAmdLeaf80000001EcxCmpLegacy = 1u << 1;
// Leaf 0xB / 0x1F level types.
constexpr uint32_t kLevelSmt = 1, kLevelCore = 2;

// Bits needed to number n things (the APIC ID field width for a topology level).
uint32_t id_bits(unsigned n) { return n <= 1 ? 0 : static_cast<uint32_t>(std::bit_width(n - 1u)); }

void set_bits(uint32_t& reg, unsigned lo, unsigned width, uint32_t value) {
  const uint32_t mask = (width >= 32 ? ~0u : ((1u << width) - 1)) << lo;
  reg = (reg & ~mask) | ((value << lo) & mask);
}

void extended_topology(CpuidEntry& e, uint32_t apic_id, unsigned num_cpus) {
  // One thread per core, all cores in one package.
  const uint32_t level = e.index;
  e.edx = apic_id;
  if (level == 0) {
    e.eax = 0;  // no bits of the APIC ID select the thread
    e.ebx = 1;
    e.ecx = (kLevelSmt << 8) | level;
  } else if (level == 1) {
    e.eax = id_bits(num_cpus);
    e.ebx = num_cpus;
    e.ecx = (kLevelCore << 8) | level;
  } else {
    e.eax = 0;
    e.ebx = 0;
    e.ecx = level;  // level type 0: invalid, ends the enumeration
  }
}

}  // namespace

CpuidEntry* find_cpuid(std::vector<CpuidEntry>& entries, uint32_t function, uint32_t index) {
  auto it = std::find_if(entries.begin(), entries.end(), [&](const CpuidEntry& e) {
    return e.function == function && e.index == index;
  });
  return it == entries.end() ? nullptr : &*it;
}

void apply_cpuid_policy(std::vector<CpuidEntry>& entries, unsigned vcpu_index, unsigned num_cpus) {
  const uint32_t apic_id = vcpu_index;
  const uint32_t cpus = std::max(num_cpus, 1u);
  const CpuidEntry* leaf0 = find_cpuid(entries, 0);
  // "AuthenticAMD" / "HygonGenuine": EBX holds the first four characters.
  const bool amd = leaf0 && (leaf0->ebx == 0x68747541 || leaf0->ebx == 0x6f677948);
  for (auto& e : entries) {
    switch (e.function) {
      case 0x1:
        set_bits(e.ebx, 24, 8, apic_id);
        set_bits(e.ebx, 16, 8, std::min(cpus, 255u));  // logical processors per package
        set_bits(e.ebx, 8, 8, 8);                      // CLFLUSH line: 8 * 8 = 64 bytes
        e.ecx |= kLeaf1EcxHypervisor;
        e.ecx &= ~kLeaf1EcxMonitor;  // MONITOR/MWAIT would just trap; idle with HLT
        if (cpus > 1)
          e.edx |= kLeaf1EdxHtt;
        else
          e.edx &= ~kLeaf1EdxHtt;
        break;
      case 0x4: {
        // Deterministic cache parameters (Intel): EAX[31:26] cores per package - 1,
        // EAX[25:14] logical processors sharing this cache - 1. L1/L2 are per core,
        // L3 is shared by the package.
        const uint32_t cache_level = (e.eax >> 5) & 0x7;
        if ((e.eax & 0x1f) == 0) break;  // no cache at this sub-leaf
        set_bits(e.eax, 26, 6, std::min(cpus, 64u) - 1);
        set_bits(e.eax, 14, 12, cache_level >= 3 ? std::min(cpus, 4096u) - 1 : 0);
        break;
      }
      case 0x5:  // MONITOR/MWAIT parameters: hidden with the feature bit
        e.eax = e.ebx = e.ecx = e.edx = 0;
        break;
      case 0x6:  // thermal and power management: a VM has none to offer, but its APIC timer
                 // keeps running in idle (ARAT)
        e.eax &= kLeaf6EaxArat;
        e.ebx = e.ecx = e.edx = 0;
        break;
      case 0xb:
      case 0x1f:
        extended_topology(e, apic_id, cpus);
        break;
      case 0x80000001:
        if (cpus > 1)
          e.ecx |= kAmdLeaf80000001EcxCmpLegacy;
        else
          e.ecx &= ~kAmdLeaf80000001EcxCmpLegacy;
        break;
      case 0x80000008:
        // AMD: ECX[7:0] cores per package - 1, ECX[15:12] APIC ID bits that number the core.
        // Intel reserves ECX here and reports it as 0; leave it so.
        if (amd) {
          set_bits(e.ecx, 0, 8, std::min(cpus, 256u) - 1);
          set_bits(e.ecx, 12, 4, id_bits(cpus));
        }
        break;
      case 0x8000001e:
        // AMD extended APIC ID: EAX = APIC ID, EBX[7:0] core ID, EBX[15:8] threads per core - 1,
        // ECX node ID 0 with one node per package.
        e.eax = apic_id;
        e.ebx = apic_id & 0xff;
        e.ecx = 0;
        e.edx = 0;
        break;
      default:
        // 0x40000000..0x400000ff are the hypervisor's own leaves (KVM's signature and feature
        // bits); everything else is kept as the hypervisor reported it.
        break;
    }
  }
}

std::vector<std::pair<uint32_t, uint64_t>> boot_msrs() {
  return {
      {kMsrIa32SysenterCs, 0},
      {kMsrIa32SysenterEsp, 0},
      {kMsrIa32SysenterEip, 0},
      {kMsrStar, 0},
      {kMsrCstar, 0},
      {kMsrKernelGsBase, 0},
      {kMsrSyscallMask, 0},
      {kMsrLstar, 0},
      {kMsrIa32Tsc, 0},
      {kMsrIa32MiscEnable, kMiscEnableFastString},
  };
}

}  // namespace sm::x86
