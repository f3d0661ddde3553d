// The guest-physical address map of a supermachine x86_64 microVM, in one place.
//
//   0x0000_0000  real-mode IVT + BIOS data area (left zero)
//   0x0000_0500  GDT (kGdtAddr), then the IDT (kIdtAddr)
//   0x0000_7000  zero page, struct boot_params (kZeroPageAddr)
//   0x0000_8ff0  initial stack pointer, growing down (kBootStackPointer)
//   0x0000_9000  identity page tables: PML4, PDPT, 4 PDs of 2 MiB pages = first 4 GiB
//   0x0002_0000  kernel command line (kCmdlineAddr, at most kCmdlineMaxBytes incl. NUL)
//   0x0009_fc00  EBDA: MP floating pointer + MP configuration table (kMpTableAddr)
//   0x000a_0000  legacy VGA/BIOS hole, reserved in e820 up to 1 MiB
//   0x0010_0000  1 MiB: bzImage protected-mode code (kBzImageLoadAddr); vmlinux segments load
//                where their ELF p_paddr says (normally 16 MiB)
//   ...          initrd as high as the kernel allows, below the MMIO hole
//   0xc000_0000  3 GiB: start of the 32-bit MMIO hole (kMmioHoleStart)
//   0xd000_0000  virtio-mmio devices, 4 KiB each (kVirtioMmioBase)
//   0xfec0_0000  IOAPIC, 0xfee0_0000 local APIC
//   0xfffb_c000  pages reserved for the hypervisor (KVM's identity map + TSS on Intel VMX)
//   0x1_0000_0000  4 GiB: RAM beyond the first 3 GiB continues here
//
// All of it is plain data so the KVM, HVF and WHP backends can share it.
#pragma once

#include <cstdint>
#include <vector>

#include "vmm/guest_memory.h"

namespace sm::x86 {

inline constexpr uint64_t kPageSize = 0x1000;
inline constexpr uint64_t kMiB = 1ull << 20;
inline constexpr uint64_t kGiB = 1ull << 30;

// --- boot structures below 1 MiB (all inside the first e820 RAM range except the EBDA) ---
inline constexpr uint64_t kGdtAddr = 0x500;
inline constexpr uint64_t kIdtAddr = 0x580;
inline constexpr uint64_t kZeroPageAddr = 0x7000;
inline constexpr uint64_t kBootStackPointer = 0x8ff0;
inline constexpr uint64_t kPml4Addr = 0x9000;
inline constexpr uint64_t kPdptAddr = 0xa000;
inline constexpr uint64_t kPdAddr = 0xb000;  // 4 pages: 0xb000..0xefff
inline constexpr uint64_t kIdentityMappedBytes = 4 * kGiB;
inline constexpr uint64_t kCmdlineAddr = 0x20000;
inline constexpr uint64_t kCmdlineMaxBytes = 0x10000;  // including the terminating NUL

// The extended BIOS data area: Linux scans 639-640 KiB for the MP floating pointer
// (arch/x86/kernel/mpparse.c); the configuration table follows and may run on into the
// reserved range below 1 MiB.
inline constexpr uint64_t kEbdaStart = 0x9fc00;
inline constexpr uint64_t kMpTableAddr = kEbdaStart;
inline constexpr uint64_t kHighMemStart = 0x100000;  // 1 MiB; [kEbdaStart, 1 MiB) is reserved

// --- the kernel ---
inline constexpr uint64_t kBzImageLoadAddr = kHighMemStart;  // protected-mode code of a bzImage
inline constexpr uint64_t kBzImage64BitEntryOffset = 0x200;   // Linux boot protocol, 64-bit entry

// --- RAM and the MMIO hole ---
inline constexpr uint64_t kMmioHoleStart = 3 * kGiB;
inline constexpr uint64_t kMmioHoleEnd = 4 * kGiB;  // RAM resumes here
inline constexpr uint64_t kMinRamBytes = 32 * kMiB;
inline constexpr uint64_t kMaxRamBytes = 1ull << 40;  // 1 TiB

// --- devices in the hole ---
inline constexpr uint64_t kVirtioMmioBase = 0xd0000000;
inline constexpr uint64_t kVirtioMmioSize = 0x1000;  // per device
inline constexpr uint64_t kIoApicAddr = 0xfec00000;
inline constexpr uint64_t kLocalApicAddr = 0xfee00000;
// Three pages in the hole that the hypervisor may claim for itself (KVM_SET_IDENTITY_MAP_ADDR
// takes one, KVM_SET_TSS_ADDR the three after it). Nothing else lives there.
inline constexpr uint64_t kHypervisorIdentityMapAddr = 0xfffbc000;
inline constexpr uint64_t kHypervisorTssAddr = 0xfffbd000;

// --- interrupt lines (GSI == IOAPIC pin, identity-routed in the MP table) ---
inline constexpr uint32_t kI8042Irq = 1;
inline constexpr uint32_t kSerialIrq = 4;  // COM1
inline constexpr uint32_t kVirtioIrqBase = 5;
inline constexpr uint32_t kIoApicPins = 24;
inline constexpr uint32_t kMaxVirtioDevices = kIoApicPins - kVirtioIrqBase;  // GSIs 5..23

// --- port I/O ---
inline constexpr uint16_t kI8042DataPort = 0x60;
inline constexpr uint16_t kI8042CommandPort = 0x64;  // status on read
inline constexpr uint16_t kCom1Port = 0x3f8;
inline constexpr uint16_t kCom1PortCount = 8;
inline constexpr uint16_t kExitPort = 0x501;  // sm::devices::ExitDevice, see power.h

// Guest-physical address and GSI of the n-th virtio-mmio device (n < kMaxVirtioDevices).
[[nodiscard]] constexpr uint64_t virtio_mmio_addr(unsigned n) {
  return kVirtioMmioBase + n * kVirtioMmioSize;
}
[[nodiscard]] constexpr uint32_t virtio_irq(unsigned n) { return kVirtioIrqBase + n; }

// RAM regions for a VM with ram_bytes of memory: [0, min(ram, 3 GiB)) and, when more, the rest
// from 4 GiB up. Throws sm::Error when ram_bytes is not a multiple of 1 MiB or lies outside
// [kMinRamBytes, kMaxRamBytes].
[[nodiscard]] std::vector<GuestMemory::RegionSpec> memory_layout(uint64_t ram_bytes);

// The end of RAM below the MMIO hole: min(ram_bytes, kMmioHoleStart).
[[nodiscard]] constexpr uint64_t low_ram_end(uint64_t ram_bytes) {
  return ram_bytes < kMmioHoleStart ? ram_bytes : kMmioHoleStart;
}

}  // namespace sm::x86
