// The boot vCPU's state for the 64-bit Linux boot protocol (Documentation/x86/boot.rst, "64-bit
// Boot Protocol"): long mode with paging on, an identity map covering the kernel, zero page and
// command line, a GDT with flat __BOOT_CS (0x10) and __BOOT_DS (0x18), interrupts off, and
// %rsi = the zero page. Plain structs so every hypervisor backend can translate them.
#pragma once

#include <cstdint>

#include "vmm/guest_memory.h"

namespace sm::x86 {

// Selectors in the boot GDT (Linux's __BOOT_CS / __BOOT_DS, arch/x86/include/asm/segment.h).
inline constexpr uint16_t kBootCsSelector = 0x10;
inline constexpr uint16_t kBootDsSelector = 0x18;
inline constexpr uint16_t kBootTssSelector = 0x20;  // 16-byte system descriptor (slots 4 and 5)

// A segment register as hypervisors describe it (the hidden part included). limit is in bytes,
// already scaled by the granularity bit.
struct Segment {
  uint64_t base = 0;
  uint32_t limit = 0;
  uint16_t selector = 0;
  uint8_t type = 0;  // descriptor type field (4 bits)
  uint8_t present = 0;
  uint8_t dpl = 0;
  uint8_t db = 0;  // default operation size (32-bit segment)
  uint8_t s = 0;   // 1 = code/data, 0 = system
  uint8_t l = 0;   // 64-bit code segment
  uint8_t g = 0;   // granularity (limit in 4 KiB units in the descriptor)
  uint8_t avl = 0;
  uint8_t unusable = 0;
  bool operator==(const Segment&) const = default;
};

struct DescriptorTable {
  uint64_t base = 0;
  uint16_t limit = 0;
};

// Architectural bits used below.
inline constexpr uint64_t kCr0Pe = 1ull << 0;
inline constexpr uint64_t kCr0Et = 1ull << 4;
inline constexpr uint64_t kCr0Ne = 1ull << 5;
inline constexpr uint64_t kCr0Pg = 1ull << 31;
inline constexpr uint64_t kCr4Pae = 1ull << 5;
inline constexpr uint64_t kEferLme = 1ull << 8;
inline constexpr uint64_t kEferLma = 1ull << 10;

struct BootCpuState {
  uint64_t rip = 0;
  uint64_t rsp = 0;
  uint64_t rbp = 0;
  uint64_t rsi = 0;  // zero page
  uint64_t rflags = 0x2;  // bit 1 is reserved-as-one; IF clear
  uint64_t cr0 = 0;
  uint64_t cr3 = 0;
  uint64_t cr4 = 0;
  uint64_t efer = 0;
  Segment cs, ds, es, fs, gs, ss, tr, ldt;
  DescriptorTable gdt, idt;
};

// Writes the boot GDT (kGdtAddr), an empty IDT (kIdtAddr) and identity page tables mapping the
// first 4 GiB with 2 MiB pages (kPml4Addr..) into guest memory. Call once per boot.
void write_boot_tables(GuestMemory& mem);

// The BSP's registers to enter the kernel at `entry` with those tables. Pure; APs start through
// INIT/SIPI from the kernel and need nothing from us.
[[nodiscard]] BootCpuState boot_cpu_state(uint64_t entry);

}  // namespace sm::x86
