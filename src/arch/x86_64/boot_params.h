// The Linux zero page (struct boot_params) and the e820 memory map, per Documentation/x86/
// boot.rst and arch/x86/include/uapi/asm/bootparam.h. Our own packed structs mirror the kernel's
// layout; static_asserts pin every offset we use.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "arch/x86_64/kernel_loader.h"
#include "vmm/guest_memory.h"

namespace sm::x86 {

// e820 entry types (arch/x86/include/asm/e820/types.h).
enum class E820Type : uint32_t { kRam = 1, kReserved = 2 };

struct E820Entry {
  uint64_t addr;
  uint64_t size;
  E820Type type;
  bool operator==(const E820Entry&) const = default;
};

// The e820 map for a VM of ram_bytes: RAM [0, kEbdaStart), reserved [kEbdaStart, 1 MiB), RAM
// [1 MiB, low_ram_end), and RAM [4 GiB, ...) for what lies above the MMIO hole.
[[nodiscard]] std::vector<E820Entry> e820_map(uint64_t ram_bytes);

// Writes the command line at kCmdlineAddr and the zero page at kZeroPageAddr: the kernel's setup
// header (bzImage) or a minimal one (vmlinux), type_of_loader 0xff, loadflags, cmd_line_ptr,
// initrd address and size, e820 map. Throws sm::Error when the command line is longer than the
// kernel's cmdline_size or than our buffer, or contains a NUL byte.
void write_boot_params(GuestMemory& mem, const LoadedKernel& kernel, std::string_view cmdline,
                       std::optional<InitrdPlacement> initrd, uint64_t ram_bytes);

}  // namespace sm::x86
