#include "arch/x86_64/cpuid.h"

#include <gtest/gtest.h>

namespace sm::x86 {
namespace {

// A trimmed version of what KVM_GET_SUPPORTED_CPUID returns on an Intel and an AMD host.
std::vector<CpuidEntry> supported(bool amd) {
  std::vector<CpuidEntry> v;
  v.push_back({0, 0, 0, 0x1f, amd ? 0x68747541u : 0x756e6547u, 0, 0});
  v.push_back({1, 0, 0, 0x000806f8, 0x00000800, 0xfffa320b | (1u << 3), 0x1f8bfbff});
  v.push_back({4, 0, 1, 0x04000121, 0x01c0003f, 0x3f, 0});  // L1d
  v.push_back({4, 1, 1, 0x04000122, 0x01c0003f, 0x3f, 0});  // L1i
  v.push_back({4, 2, 1, 0x04000143, 0x03c0003f, 0x7ff, 0});  // L2
  v.push_back({4, 3, 1, 0x04000163, 0x0380003f, 0xffff, 0x6});  // L3
  v.push_back({4, 4, 1, 0, 0, 0, 0});
  v.push_back({5, 0, 0, 0x40, 0x40, 3, 0x11142120});
  v.push_back({6, 0, 0, 0x4 | 0x2 | 0x1, 0x2, 0x9, 0x1});
  v.push_back({0xb, 0, 1, 1, 2, 0x100, 7});
  v.push_back({0xb, 1, 1, 4, 8, 0x201, 7});
  v.push_back({0xb, 2, 1, 0, 0, 2, 7});
  v.push_back({0x40000000, 0, 0, 0x40000001, 0x4b4d564b, 0x564b4d56, 0x4d});
  v.push_back({0x80000001, 0, 0, 0, 0, 0x121, 0x2c100800});
  v.push_back({0x80000008, 0, 0, 0x3030, 0, amd ? 0x3007u : 0u, 0});
  if (amd) v.push_back({0x8000001e, 0, 0, 7, 0x103, 0x301, 0});
  return v;
}

TEST(Cpuid, SetsApicIdsAndTopologyPerVcpu) {
  for (unsigned vcpu = 0; vcpu < 4; ++vcpu) {
    auto e = supported(false);
    apply_cpuid_policy(e, vcpu, 4);
    const auto* l1 = find_cpuid(e, 1);
    ASSERT_NE(l1, nullptr);
    EXPECT_EQ(l1->ebx >> 24, vcpu);
    EXPECT_EQ((l1->ebx >> 16) & 0xff, 4u);
    EXPECT_EQ((l1->ebx >> 8) & 0xff, 8u);  // 64-byte CLFLUSH
    EXPECT_TRUE(l1->edx & (1u << 28));      // HTT: more than one logical CPU
    EXPECT_TRUE(l1->ecx & (1u << 31));      // running under a hypervisor
    EXPECT_FALSE(l1->ecx & (1u << 3));      // no MONITOR/MWAIT
    for (uint32_t sub : {0u, 1u, 2u}) EXPECT_EQ(find_cpuid(e, 0xb, sub)->edx, vcpu);
    EXPECT_EQ(find_cpuid(e, 0xb, 0)->ebx, 1u);         // one thread per core
    EXPECT_EQ(find_cpuid(e, 0xb, 0)->ecx, 0x100u);     // SMT level
    EXPECT_EQ(find_cpuid(e, 0xb, 1)->ebx, 4u);         // four cores
    EXPECT_EQ(find_cpuid(e, 0xb, 1)->eax, 2u);         // two APIC ID bits for them
    EXPECT_EQ(find_cpuid(e, 0xb, 1)->ecx, 0x201u);     // core level
    EXPECT_EQ(find_cpuid(e, 0xb, 2)->ecx >> 8, 0u);    // end of the list
  }
}

TEST(Cpuid, SingleCpuHasNoHtt) {
  auto e = supported(false);
  apply_cpuid_policy(e, 0, 1);
  EXPECT_FALSE(find_cpuid(e, 1)->edx & (1u << 28));
  EXPECT_EQ(find_cpuid(e, 0xb, 1)->eax, 0u);
  EXPECT_EQ(find_cpuid(e, 4, 0)->eax >> 26, 0u);
}

TEST(Cpuid, HidesPowerManagementAndMwaitKeepsHypervisorLeaves) {
  auto e = supported(false);
  const auto kvm = *find_cpuid(e, 0x40000000);
  apply_cpuid_policy(e, 0, 2);
  const auto* l5 = find_cpuid(e, 5);
  EXPECT_EQ(l5->eax | l5->ebx | l5->ecx | l5->edx, 0u);
  const auto* l6 = find_cpuid(e, 6);
  EXPECT_EQ(l6->eax, 0x4u);  // ARAT only
  EXPECT_EQ(l6->ebx | l6->ecx | l6->edx, 0u);
  const auto* h = find_cpuid(e, 0x40000000);
  EXPECT_EQ(h->ebx, kvm.ebx);
  EXPECT_EQ(h->ecx, kvm.ecx);
  EXPECT_EQ(h->edx, kvm.edx);
  // Intel's reserved 0x80000008 ECX stays 0.
  EXPECT_EQ(find_cpuid(e, 0x80000008)->ecx, 0u);
}

TEST(Cpuid, IntelCacheLeavesCountCoresAndSharing) {
  auto e = supported(false);
  apply_cpuid_policy(e, 1, 8);
  EXPECT_EQ(find_cpuid(e, 4, 0)->eax >> 26, 7u);
  EXPECT_EQ((find_cpuid(e, 4, 0)->eax >> 14) & 0xfff, 0u);  // L1 per core
  EXPECT_EQ((find_cpuid(e, 4, 3)->eax >> 14) & 0xfff, 7u);  // L3 shared by all
  EXPECT_EQ(find_cpuid(e, 4, 3)->eax & 0x3fff, 0x163u);     // type and level untouched
  EXPECT_EQ(find_cpuid(e, 4, 4)->eax, 0u);                  // terminator untouched
}

TEST(Cpuid, AmdTopologyLeaves) {
  auto e = supported(true);
  apply_cpuid_policy(e, 2, 3);
  EXPECT_EQ(find_cpuid(e, 0x80000008)->ecx & 0xff, 2u);  // 3 cores
  EXPECT_EQ((find_cpuid(e, 0x80000008)->ecx >> 12) & 0xf, 2u);
  EXPECT_EQ(find_cpuid(e, 0x8000001e)->eax, 2u);
  EXPECT_EQ(find_cpuid(e, 0x8000001e)->ebx, 2u);
  EXPECT_TRUE(find_cpuid(e, 0x80000001)->ecx & 0x2);  // CmpLegacy
  auto single = supported(true);
  apply_cpuid_policy(single, 0, 1);
  EXPECT_FALSE(find_cpuid(single, 0x80000001)->ecx & 0x2);
}

TEST(Cpuid, AbsentLeavesStayAbsent) {
  std::vector<CpuidEntry> e{{0, 0, 0, 1, 0x756e6547, 0, 0}, {1, 0, 0, 0, 0, 0, 0}};
  apply_cpuid_policy(e, 0, 1);
  EXPECT_EQ(e.size(), 2u);
  EXPECT_EQ(find_cpuid(e, 0xb), nullptr);
}

TEST(Msrs, BootSetIsTheKnownList) {
  const auto msrs = boot_msrs();
  auto value = [&](uint32_t idx) -> std::optional<uint64_t> {
    for (auto [i, v] : msrs)
      if (i == idx) return v;
    return std::nullopt;
  };
  for (uint32_t idx : {kMsrIa32SysenterCs, kMsrIa32SysenterEsp, kMsrIa32SysenterEip, kMsrStar,
                       kMsrLstar, kMsrCstar, kMsrKernelGsBase, kMsrSyscallMask, kMsrIa32Tsc})
    EXPECT_EQ(value(idx), 0u) << std::hex << idx;
  EXPECT_EQ(value(kMsrIa32MiscEnable), kMiscEnableFastString);
  EXPECT_EQ(msrs.size(), 10u);
}

}  // namespace
}  // namespace sm::x86
