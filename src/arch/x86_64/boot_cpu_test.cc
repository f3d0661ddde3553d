#include "arch/x86_64/boot_cpu.h"

#include <gtest/gtest.h>

#include "arch/x86_64/layout.h"

namespace sm::x86 {
namespace {

GuestMemory ram(uint64_t bytes) {
  auto layout = memory_layout(bytes);
  return GuestMemory::create(layout);
}

// Translates a virtual address through 4-level page tables in guest memory, as the MMU would.
// Returns nullopt for a non-present entry.
std::optional<uint64_t> translate(const GuestMemory& mem, uint64_t cr3, uint64_t va) {
  constexpr uint64_t kAddrMask = 0x000ffffffffff000ull;
  uint64_t table = cr3 & kAddrMask;
  for (int level = 3; level >= 0; --level) {
    const uint64_t idx = (va >> (12 + 9 * level)) & 0x1ff;
    const auto entry = mem.read_obj<uint64_t>(table + idx * 8);
    if (!(entry & 1)) return std::nullopt;
    const bool large = entry & (1ull << 7);
    if (level == 2 && large) return (entry & 0x000fffffc0000000ull) | (va & ((1ull << 30) - 1));
    if (level == 1 && large) return (entry & 0x000fffffffe00000ull) | (va & ((1ull << 21) - 1));
    table = entry & kAddrMask;
  }
  return (table & kAddrMask) | (va & 0xfff);
}

// Decodes an 8-byte GDT descriptor into our Segment (without the selector).
Segment decode(uint64_t d, uint16_t selector) {
  Segment s;
  s.base = ((d >> 16) & 0xffffff) | (((d >> 56) & 0xff) << 24);
  uint32_t limit = static_cast<uint32_t>((d & 0xffff) | (((d >> 48) & 0xf) << 16));
  s.type = (d >> 40) & 0xf;
  s.s = (d >> 44) & 1;
  s.dpl = (d >> 45) & 3;
  s.present = (d >> 47) & 1;
  s.avl = (d >> 52) & 1;
  s.l = (d >> 53) & 1;
  s.db = (d >> 54) & 1;
  s.g = (d >> 55) & 1;
  s.limit = s.g ? (limit << 12) | 0xfff : limit;
  s.selector = selector;
  return s;
}

TEST(BootCpu, PageTablesIdentityMapTheFirstFourGiB) {
  auto mem = ram(64 * kMiB);
  write_boot_tables(mem);
  const auto st = boot_cpu_state(0x1000000);
  for (uint64_t va : std::initializer_list<uint64_t>{0x0, 0x7000, 0x100200, 0x1000000, 0x3fffffff, 0x12345678,
                      kGiB, 0xbfffffff, 0xd0000000, 0xfec00000, 0xffffffff}) {
    const auto pa = translate(mem, st.cr3, va);
    ASSERT_TRUE(pa) << std::hex << va;
    EXPECT_EQ(*pa, va) << std::hex << va;
  }
  // Every 2 MiB page of the first GiB maps to itself.
  for (uint64_t va = 0; va < kGiB; va += 2 * kMiB) EXPECT_EQ(translate(mem, st.cr3, va + 0x1234), va + 0x1234);
  EXPECT_FALSE(translate(mem, st.cr3, 4 * kGiB));
}

TEST(BootCpu, GdtHoldsTheLinuxBootSelectors) {
  auto mem = ram(64 * kMiB);
  write_boot_tables(mem);
  const auto st = boot_cpu_state(0x100200);
  EXPECT_EQ(st.gdt.base, kGdtAddr);
  ASSERT_GE(st.gdt.limit + 1u, kBootTssSelector + 16u);
  EXPECT_EQ(mem.read_obj<uint64_t>(kGdtAddr), 0u);  // null descriptor
  // The segment registers' hidden parts agree with the descriptors the kernel will reload.
  EXPECT_EQ(decode(mem.read_obj<uint64_t>(kGdtAddr + kBootCsSelector), kBootCsSelector), st.cs);
  EXPECT_EQ(decode(mem.read_obj<uint64_t>(kGdtAddr + kBootDsSelector), kBootDsSelector), st.ds);
  EXPECT_EQ(decode(mem.read_obj<uint64_t>(kGdtAddr + kBootTssSelector), kBootTssSelector), st.tr);
  EXPECT_EQ(mem.read_obj<uint64_t>(kGdtAddr + kBootTssSelector + 8), 0u);  // base[63:32]
}

TEST(BootCpu, RegistersFollowThe64BitBootProtocol) {
  const auto st = boot_cpu_state(0x100200);
  EXPECT_EQ(st.rip, 0x100200u);
  EXPECT_EQ(st.rsi, kZeroPageAddr);
  EXPECT_EQ(st.rsp, kBootStackPointer);
  EXPECT_EQ(st.rflags, 0x2u);  // interrupts off
  EXPECT_EQ(st.cr3, kPml4Addr);
  EXPECT_TRUE(st.cr0 & kCr0Pe);
  EXPECT_TRUE(st.cr0 & kCr0Pg);
  EXPECT_TRUE(st.cr4 & kCr4Pae);
  EXPECT_EQ(st.efer & (kEferLme | kEferLma), kEferLme | kEferLma);
  // 64-bit code: L set, D clear; flat 4 GiB segments.
  EXPECT_EQ(st.cs.selector, 0x10);
  EXPECT_EQ(st.cs.l, 1);
  EXPECT_EQ(st.cs.db, 0);
  EXPECT_EQ(st.cs.type & 0x8, 0x8);  // code
  EXPECT_EQ(st.cs.limit, 0xffffffffu);
  for (const Segment* s : {&st.ds, &st.es, &st.ss, &st.fs, &st.gs}) {
    EXPECT_EQ(s->selector, 0x18);
    EXPECT_EQ(s->type & 0xa, 0x2);  // data, writable
    EXPECT_EQ(s->present, 1);
    EXPECT_EQ(s->limit, 0xffffffffu);
  }
  EXPECT_EQ(st.tr.s, 0);
  EXPECT_EQ(st.tr.type, 0xb);
  EXPECT_EQ(st.ldt.type, 0x2);
  EXPECT_EQ(st.idt.base, kIdtAddr);
}

TEST(BootCpu, TablesDoNotOverlapTheOtherBootPieces) {
  // GDT, IDT, zero page, stack, page tables, command line: disjoint and in low RAM.
  EXPECT_LT(kIdtAddr + 16, kZeroPageAddr);
  EXPECT_LE(kZeroPageAddr + kPageSize, kBootStackPointer);
  EXPECT_LT(kBootStackPointer, kPml4Addr);
  EXPECT_LE(kPdAddr + 4 * kPageSize, kCmdlineAddr);
  EXPECT_LE(kCmdlineAddr + kCmdlineMaxBytes, kEbdaStart);
}

}  // namespace
}  // namespace sm::x86
