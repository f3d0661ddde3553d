#include "arch/x86_64/boot_params.h"

#include <algorithm>
#include <cstring>

#include "arch/x86_64/bootparam_abi.h"
#include "arch/x86_64/layout.h"
#include "common/error.h"

namespace sm::x86 {

std::vector<E820Entry> e820_map(uint64_t ram_bytes) {
  if (ram_bytes <= kHighMemStart)
    throw Error(fmt::format("e820: {} bytes of RAM do not reach past 1 MiB", ram_bytes));
  std::vector<E820Entry> map;
  // Conventional memory up to the EBDA, which holds our MP table; the EBDA, the VGA window and
  // the BIOS area up to 1 MiB are reserved (Linux reserves that range itself as well).
  map.push_back({0, kEbdaStart, E820Type::kRam});
  map.push_back({kEbdaStart, kHighMemStart - kEbdaStart, E820Type::kReserved});
  map.push_back({kHighMemStart, low_ram_end(ram_bytes) - kHighMemStart, E820Type::kRam});
  if (ram_bytes > kMmioHoleStart)
    map.push_back({kMmioHoleEnd, ram_bytes - kMmioHoleStart, E820Type::kRam});
  return map;
}

void write_boot_params(GuestMemory& mem, const LoadedKernel& kernel, std::string_view cmdline,
                       std::optional<InitrdPlacement> initrd, uint64_t ram_bytes) {
  if (cmdline.find('\0') != std::string_view::npos)
    throw Error("kernel command line contains a NUL byte");
  if (cmdline.size() > kernel.cmdline_size)
    throw Error(fmt::format(
        "kernel command line is {} bytes; this kernel accepts at most {} (cmdline_size in its "
        "setup header): shorten it",
        cmdline.size(), kernel.cmdline_size));
  if (cmdline.size() + 1 > kCmdlineMaxBytes)
    throw Error(fmt::format("kernel command line is {} bytes; supermachine passes at most {}",
                            cmdline.size(), kCmdlineMaxBytes - 1));

  // The command line buffer: the text and its NUL.
  std::vector<std::byte> buf(cmdline.size() + 1, std::byte{0});
  std::memcpy(buf.data(), cmdline.data(), cmdline.size());
  mem.write(kCmdlineAddr, buf);

  abi::BootParams bp;
  std::memset(&bp, 0, sizeof bp);
  if (kernel.format == KernelFormat::kBzImage) {
    // 64-bit boot protocol: the kernel's own setup header goes into a zeroed zero page.
    const size_t n = std::min(kernel.setup_header.size(), abi::kSetupHeaderMaxCopy);
    std::memcpy(reinterpret_cast<std::byte*>(&bp) + abi::kSetupHeaderOffset,
                kernel.setup_header.data(), n);
  } else {
    // A vmlinux has no setup header; fill in the identifying fields a bzImage would carry.
    bp.hdr.boot_flag = abi::kBootFlagMagic;
    bp.hdr.header = abi::kHeaderMagic;
    bp.hdr.kernel_alignment = 16 * kMiB;
    bp.hdr.cmdline_size = static_cast<uint32_t>(cmdline.size());
  }
  bp.hdr.type_of_loader = abi::kLoaderTypeUndefined;
  bp.hdr.loadflags |= abi::kLoadedHigh;
  bp.hdr.cmd_line_ptr = static_cast<uint32_t>(kCmdlineAddr);
  if (initrd) {
    bp.hdr.ramdisk_image = static_cast<uint32_t>(initrd->addr);
    bp.ext_ramdisk_image = static_cast<uint32_t>(initrd->addr >> 32);
    bp.hdr.ramdisk_size = static_cast<uint32_t>(initrd->size);
    bp.ext_ramdisk_size = static_cast<uint32_t>(initrd->size >> 32);
  }

  const auto map = e820_map(ram_bytes);
  static_assert(abi::kE820MaxEntriesZeroPage >= 4);
  for (size_t i = 0; i < map.size(); ++i)
    bp.e820_table[i] = {map[i].addr, map[i].size, static_cast<uint32_t>(map[i].type)};
  bp.e820_entries = static_cast<uint8_t>(map.size());

  mem.write_obj(kZeroPageAddr, bp);
}

}  // namespace sm::x86
