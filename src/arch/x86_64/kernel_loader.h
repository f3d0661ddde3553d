// Loading a Linux kernel into guest memory for the 64-bit boot protocol
// (Documentation/x86/boot.rst, "64-bit Boot Protocol").
//
// Two formats are accepted, told apart by their magic numbers:
//  - an ELF64 x86-64 vmlinux: each PT_LOAD segment is copied to its p_paddr, the entry point
//    is e_entry (Linux links vmlinux with ENTRY(phys_startup_64), a physical address);
//  - a bzImage (boot protocol >= 2.12 with XLF_KERNEL_64): the protected-mode part is copied to
//    1 MiB and entered at 1 MiB + 0x200; its setup header goes into the zero page.
// Kernel files are untrusted input: every offset and size is checked before use, and a bad file
// raises sm::Error saying what is wrong with it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "vmm/guest_memory.h"

namespace sm::x86 {

enum class KernelFormat { kElf, kBzImage };

struct LoadedKernel {
  KernelFormat format = KernelFormat::kElf;
  uint64_t entry = 0;       // guest-physical 64-bit entry point
  uint64_t load_start = 0;  // lowest guest-physical address the kernel occupies
  uint64_t end = 0;         // first byte past the kernel, including bss/decompression space
  // bzImage only: the setup header bytes from file offset 0x1f1 to its end
  // (0x202 + byte at 0x201), to be copied into the zero page at offset 0x1f1.
  std::vector<std::byte> setup_header;
  uint16_t protocol_version = 0;       // bzImage: setup header "version"; 0 for ELF
  uint32_t cmdline_size = 2047;        // longest command line without its NUL the kernel takes
  uint32_t initrd_addr_max = 0x7fffffff;  // highest address an initrd byte may occupy
  // vmlinux only: the PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY), when the kernel carries one.
  std::optional<uint64_t> pvh_entry;
};

struct InitrdPlacement {
  uint64_t addr = 0;  // guest-physical, page aligned
  uint64_t size = 0;  // bytes
};

// Detects the format, validates the file, copies it into guest memory. Throws sm::Error for an
// empty, truncated or unrecognised file ("unrecognised kernel file: expected an ELF vmlinux or
// a bzImage"), a bzImage older than protocol 2.12 or without a 64-bit entry, segments outside
// RAM or below 1 MiB (where the boot structures live), and hostile headers.
[[nodiscard]] LoadedKernel load_kernel(GuestMemory& mem, std::span<const std::byte> file);

// Places the initrd page aligned, as high as possible below the kernel's initrd_addr_max and the
// end of low RAM (ram_bytes capped at the MMIO hole), above the kernel. Throws sm::Error when it
// does not fit.
[[nodiscard]] InitrdPlacement load_initrd(GuestMemory& mem, std::span<const std::byte> initrd,
                                          const LoadedKernel& kernel, uint64_t ram_bytes);

}  // namespace sm::x86
