#include "arch/x86_64/boot_cpu.h"

#include <array>

#include "arch/x86_64/layout.h"

namespace sm::x86 {

namespace {

// Page table entry bits (Intel SDM vol. 3, 4.5).
constexpr uint64_t kPtePresent = 1ull << 0;
constexpr uint64_t kPteWritable = 1ull << 1;
constexpr uint64_t kPtePageSize = 1ull << 7;  // in a PD entry: maps a 2 MiB page
constexpr uint64_t kPdEntries = 512;
constexpr uint64_t kPdCount = kIdentityMappedBytes / kGiB;  // one PD maps 1 GiB
static_assert(kPdAddr + kPdCount * kPageSize <= kCmdlineAddr, "page tables overlap the cmdline");
static_assert(kPml4Addr > kBootStackPointer && kZeroPageAddr + kPageSize <= kBootStackPointer - 0x800,
              "stack and zero page overlap");

Segment code64() {
  return {.base = 0, .limit = 0xffffffff, .selector = kBootCsSelector, .type = 0xb /* exec/read, accessed */,
          .present = 1, .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1};
}
Segment data() {
  return {.base = 0, .limit = 0xffffffff, .selector = kBootDsSelector, .type = 0x3 /* read/write, accessed */,
          .present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1};
}
Segment tss() {
  // A 64-bit busy TSS; Linux loads its own TR in cpu_init() before it needs one.
  return {.base = 0, .limit = 0x67, .selector = kBootTssSelector, .type = 0xb, .present = 1,
          .dpl = 0, .db = 0, .s = 0, .l = 0, .g = 0};
}

// The 8-byte descriptor for a segment (Intel SDM vol. 3, 3.4.5). A system descriptor in long
// mode takes two slots; the second holds base[63:32], which is 0 here.
uint64_t encode(const Segment& s) {
  const uint64_t limit = s.g ? (uint64_t{s.limit} >> 12) : s.limit;
  uint64_t d = 0;
  d |= limit & 0xffff;
  d |= (s.base & 0xffffff) << 16;
  d |= uint64_t{s.type & 0xfu} << 40;
  d |= uint64_t{s.s & 1u} << 44;
  d |= uint64_t{s.dpl & 3u} << 45;
  d |= uint64_t{s.present & 1u} << 47;
  d |= ((limit >> 16) & 0xf) << 48;
  d |= uint64_t{s.avl & 1u} << 52;
  d |= uint64_t{s.l & 1u} << 53;
  d |= uint64_t{s.db & 1u} << 54;
  d |= uint64_t{s.g & 1u} << 55;
  d |= ((s.base >> 24) & 0xff) << 56;
  return d;
}

constexpr size_t kGdtEntries = 6;  // null, unused, __BOOT_CS, __BOOT_DS, TSS (2 slots)
constexpr uint64_t kIdtBytes = 16;  // one (absent) 64-bit gate
static_assert(kGdtAddr + kGdtEntries * 8 <= kIdtAddr);

}  // namespace

void write_boot_tables(GuestMemory& mem) {
  std::array<uint64_t, kGdtEntries> gdt{};
  gdt[kBootCsSelector / 8] = encode(code64());
  gdt[kBootDsSelector / 8] = encode(data());
  gdt[kBootTssSelector / 8] = encode(tss());
  gdt[kBootTssSelector / 8 + 1] = tss().base >> 32;
  mem.write_obj(kGdtAddr, gdt);
  mem.write_obj(kIdtAddr, std::array<uint8_t, kIdtBytes>{});

  // Identity map of the first 4 GiB with 2 MiB pages: one PML4 entry -> one PDPT whose first
  // four entries -> four page directories of 512 large pages each.
  std::array<uint64_t, 512> pml4{};
  pml4[0] = kPdptAddr | kPtePresent | kPteWritable;
  mem.write_obj(kPml4Addr, pml4);
  std::array<uint64_t, 512> pdpt{};
  for (uint64_t i = 0; i < kPdCount; ++i)
    pdpt[i] = (kPdAddr + i * kPageSize) | kPtePresent | kPteWritable;
  mem.write_obj(kPdptAddr, pdpt);
  for (uint64_t i = 0; i < kPdCount; ++i) {
    std::array<uint64_t, kPdEntries> pd{};
    for (uint64_t j = 0; j < kPdEntries; ++j)
      pd[j] = ((i * kPdEntries + j) << 21) | kPtePresent | kPteWritable | kPtePageSize;
    mem.write_obj(kPdAddr + i * kPageSize, pd);
  }
}

BootCpuState boot_cpu_state(uint64_t entry) {
  BootCpuState st;
  st.rip = entry;
  st.rsp = kBootStackPointer;
  st.rbp = kBootStackPointer;
  st.rsi = kZeroPageAddr;
  st.rflags = 0x2;
  st.cr0 = kCr0Pe | kCr0Et | kCr0Ne | kCr0Pg;
  st.cr3 = kPml4Addr;
  st.cr4 = kCr4Pae;
  st.efer = kEferLme | kEferLma;
  st.cs = code64();
  st.ds = st.es = st.fs = st.gs = st.ss = data();
  st.tr = tss();
  // No LDT: a null selector, but the hidden part as the CPU has it after reset (present LDT type)
  // so hypervisors' VM-entry checks pass.
  st.ldt = {.base = 0, .limit = 0xffff, .selector = 0, .type = 0x2, .present = 1};
  st.gdt = {kGdtAddr, static_cast<uint16_t>(kGdtEntries * 8 - 1)};
  st.idt = {kIdtAddr, static_cast<uint16_t>(kIdtBytes - 1)};
  return st;
}

}  // namespace sm::x86
