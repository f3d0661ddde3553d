#include "arch/x86_64/kernel_loader.h"

#include <elf.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "arch/x86_64/bootparam_abi.h"
#include "arch/x86_64/layout.h"
#include "common/error.h"

namespace sm::x86 {

namespace {

// A real vmlinux has a handful of program headers; anything past this is not a kernel.
constexpr uint16_t kMaxProgramHeaders = 64;
// Xen's PVH entry note (include/xen/interface/elfnote.h).
constexpr uint32_t kXenElfnotePhys32Entry = 18;
// Boot protocol 2.12 (Linux 3.8) is the first with xloadflags and the 64-bit entry flag.
constexpr uint16_t kMinBootProtocol = 0x020c;

constexpr const char* kUnrecognised =
    "unrecognised kernel file: expected an ELF vmlinux or a bzImage";

// [off, off+len) lies inside a buffer of `size` bytes, without overflow.
bool in_bounds(uint64_t off, uint64_t len, uint64_t size) { return off <= size && len <= size - off; }

template <class T>
T read_at(std::span<const std::byte> file, uint64_t off) {
  T v;
  std::memcpy(&v, file.data() + off, sizeof v);
  return v;
}

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

std::optional<uint64_t> find_pvh_entry(std::span<const std::byte> notes) {
  uint64_t off = 0;
  while (in_bounds(off, sizeof(Elf64_Nhdr), notes.size())) {
    const auto nh = read_at<Elf64_Nhdr>(notes, off);
    off += sizeof nh;
    const uint64_t name_len = align_up(nh.n_namesz, 4);
    const uint64_t desc_len = align_up(nh.n_descsz, 4);
    if (!in_bounds(off, name_len, notes.size()) ||
        !in_bounds(off + name_len, desc_len, notes.size()))
      return std::nullopt;  // a malformed note section just means "no PVH entry"
    const bool xen = nh.n_namesz == 4 && std::memcmp(notes.data() + off, "Xen", 4) == 0;
    const uint64_t desc = off + name_len;
    if (xen && nh.n_type == kXenElfnotePhys32Entry) {
      if (nh.n_descsz == 4) return read_at<uint32_t>(notes, desc);
      if (nh.n_descsz == 8) return read_at<uint64_t>(notes, desc);
      return std::nullopt;
    }
    off = desc + desc_len;
  }
  return std::nullopt;
}

LoadedKernel load_elf(GuestMemory& mem, std::span<const std::byte> file) {
  if (file.size() < sizeof(Elf64_Ehdr))
    throw Error(fmt::format("kernel ELF file is truncated: {} bytes, shorter than an ELF header",
                            file.size()));
  const auto eh = read_at<Elf64_Ehdr>(file, 0);
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB ||
      eh.e_machine != EM_X86_64)
    throw Error(fmt::format(
        "kernel ELF file is not a 64-bit x86-64 kernel (class {}, data {}, machine {})",
        eh.e_ident[EI_CLASS], eh.e_ident[EI_DATA], eh.e_machine));
  if (eh.e_type != ET_EXEC)
    throw Error(fmt::format("kernel ELF file is of type {}, not an executable vmlinux", eh.e_type));
  if (eh.e_phentsize != sizeof(Elf64_Phdr))
    throw Error(fmt::format("kernel ELF program header size is {}, expected {}", eh.e_phentsize,
                            sizeof(Elf64_Phdr)));
  if (eh.e_phnum == 0 || eh.e_phnum > kMaxProgramHeaders)
    throw Error(fmt::format("kernel ELF file has {} program headers; expected 1 to {}",
                            eh.e_phnum, kMaxProgramHeaders));
  if (!in_bounds(eh.e_phoff, uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr), file.size()))
    throw Error("kernel ELF program headers lie past the end of the file (truncated?)");

  std::vector<Elf64_Phdr> loads;
  LoadedKernel k;
  k.format = KernelFormat::kElf;
  for (uint16_t i = 0; i < eh.e_phnum; ++i) {
    const auto ph = read_at<Elf64_Phdr>(file, eh.e_phoff + uint64_t{i} * sizeof(Elf64_Phdr));
    if (ph.p_type == PT_NOTE && in_bounds(ph.p_offset, ph.p_filesz, file.size()) && !k.pvh_entry)
      k.pvh_entry = find_pvh_entry(file.subspan(ph.p_offset, ph.p_filesz));
    if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
    if (ph.p_filesz > ph.p_memsz)
      throw Error(fmt::format("kernel ELF segment {} has file size {:#x} > memory size {:#x}", i,
                              ph.p_filesz, ph.p_memsz));
    if (!in_bounds(ph.p_offset, ph.p_filesz, file.size()))
      throw Error(fmt::format(
          "kernel ELF segment {} (file offset {:#x}, {:#x} bytes) runs past the end of the "
          "{}-byte file: the file is truncated or corrupt",
          i, ph.p_offset, ph.p_filesz, file.size()));
    if (ph.p_paddr + ph.p_memsz < ph.p_paddr)
      throw Error(fmt::format("kernel ELF segment {} address {:#x}+{:#x} overflows", i,
                              ph.p_paddr, ph.p_memsz));
    if (ph.p_paddr < kHighMemStart)
      throw Error(fmt::format(
          "kernel ELF segment {} at {:#x} overlaps the boot area below 1 MiB; supermachine "
          "loads kernels linked at 1 MiB or above",
          i, ph.p_paddr));
    if (!mem.contains(ph.p_paddr, ph.p_memsz))
      throw Error(fmt::format(
          "kernel ELF segment {} at {:#x}+{:#x} lies outside guest RAM ({} MiB): give the VM "
          "more memory",
          i, ph.p_paddr, ph.p_memsz, mem.total_size() >> 20));
    loads.push_back(ph);
  }
  if (loads.empty()) throw Error("kernel ELF file has no loadable segments");

  k.load_start = std::numeric_limits<uint64_t>::max();
  for (const auto& ph : loads) {
    k.load_start = std::min(k.load_start, ph.p_paddr);
    k.end = std::max(k.end, ph.p_paddr + ph.p_memsz);
  }
  // Linux links vmlinux with ENTRY(phys_startup_64): e_entry is physical.
  const bool entry_loaded = std::any_of(loads.begin(), loads.end(), [&](const Elf64_Phdr& ph) {
    return eh.e_entry >= ph.p_paddr && eh.e_entry - ph.p_paddr < ph.p_memsz;
  });
  if (!entry_loaded)
    throw Error(fmt::format(
        "kernel ELF entry point {:#x} is not inside a loaded segment (is this a vmlinux with a "
        "physical entry address?)",
        eh.e_entry));
  k.entry = eh.e_entry;

  for (const auto& ph : loads) {
    auto dst = mem.span(ph.p_paddr, ph.p_memsz);
    std::memcpy(dst.data(), file.data() + ph.p_offset, ph.p_filesz);
    std::memset(dst.data() + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);  // .bss
  }
  return k;
}

LoadedKernel load_bzimage(GuestMemory& mem, std::span<const std::byte> file) {
  // Documentation/x86/boot.rst: the setup header sits at 0x1f1 and ends at 0x202 + byte[0x201].
  constexpr uint64_t kNeeded = offsetof(abi::SetupHeader, handover_offset) + abi::kSetupHeaderOffset;
  if (file.size() < kNeeded)
    throw Error(fmt::format("bzImage is truncated: {} bytes, shorter than its setup header",
                            file.size()));
  abi::SetupHeader hdr;
  std::memset(&hdr, 0, sizeof hdr);
  std::memcpy(&hdr, file.data() + abi::kSetupHeaderOffset,
              std::min<uint64_t>(sizeof hdr, file.size() - abi::kSetupHeaderOffset));

  if (hdr.version < kMinBootProtocol)
    throw Error(fmt::format(
        "bzImage uses Linux boot protocol {}.{:02}; supermachine needs 2.12 or newer (Linux 3.8+)",
        hdr.version >> 8, hdr.version & 0xff));
  if (!(hdr.xloadflags & abi::kXlfKernel64))
    throw Error("bzImage has no 64-bit entry point (XLF_KERNEL_64 is clear): is it a 32-bit "
                "kernel? supermachine boots x86-64 kernels");

  const uint64_t header_end = 0x202 + static_cast<uint8_t>(file[0x201]);
  if (header_end > file.size())
    throw Error("bzImage is truncated: its setup header runs past the end of the file");

  const uint64_t setup_sects = hdr.setup_sects == 0 ? 4 : hdr.setup_sects;
  const uint64_t setup_bytes = (setup_sects + 1) * 512;
  if (setup_bytes >= file.size())
    throw Error(fmt::format(
        "bzImage is truncated: its {} setup sectors leave no protected-mode kernel in the "
        "{}-byte file",
        setup_sects, file.size()));
  const auto pm = file.subspan(setup_bytes);
  if (uint64_t{hdr.syssize} * 16 > pm.size())
    throw Error(fmt::format(
        "bzImage is truncated: the header announces {} bytes of kernel, the file holds {}",
        uint64_t{hdr.syssize} * 16, pm.size()));
  if (pm.size() <= kBzImage64BitEntryOffset)
    throw Error("bzImage is truncated: the protected-mode kernel is too short for its entry point");

  // The kernel decompresses itself to max(align_up(load, kernel_alignment), pref_address) and
  // needs init_size bytes from there (boot.rst, init_size; arch/x86/boot/compressed/head_64.S).
  uint64_t alignment = hdr.kernel_alignment == 0 ? 1 : hdr.kernel_alignment;
  if ((alignment & (alignment - 1)) != 0)
    throw Error(fmt::format("bzImage kernel_alignment {:#x} is not a power of two", alignment));
  const uint64_t pref_address = hdr.pref_address;  // a copy: packed fields don't bind to refs
  if (pref_address >= (1ull << 48))
    throw Error(fmt::format("bzImage pref_address {:#x} is not a usable address", pref_address));
  uint64_t runtime_start = pref_address;
  if (hdr.relocatable_kernel)
    runtime_start = std::max(align_up(kBzImageLoadAddr, alignment), pref_address);
  LoadedKernel k;
  k.format = KernelFormat::kBzImage;
  k.load_start = kBzImageLoadAddr;
  k.entry = kBzImageLoadAddr + kBzImage64BitEntryOffset;
  k.end = std::max(kBzImageLoadAddr + pm.size(), runtime_start + hdr.init_size);
  k.protocol_version = hdr.version;
  k.cmdline_size = hdr.cmdline_size;
  k.initrd_addr_max = hdr.initrd_addr_max;
  k.setup_header.assign(file.begin() + abi::kSetupHeaderOffset,
                        file.begin() + abi::kSetupHeaderOffset +
                            std::min<uint64_t>(header_end - abi::kSetupHeaderOffset,
                                               abi::kSetupHeaderMaxCopy));

  if (!mem.contains(kBzImageLoadAddr, k.end - kBzImageLoadAddr))
    throw Error(fmt::format(
        "the kernel needs guest RAM up to {} MiB to load and decompress; the VM has {} MiB "
        "below the MMIO hole: give it more memory",
        (k.end + kMiB - 1) >> 20, mem.regions().empty() ? 0 : mem.regions()[0].size >> 20));
  mem.write(kBzImageLoadAddr, pm);
  return k;
}

}  // namespace

LoadedKernel load_kernel(GuestMemory& mem, std::span<const std::byte> file) {
  if (file.empty()) throw Error("kernel file is empty");
  if (file.size() >= SELFMAG && std::memcmp(file.data(), ELFMAG, SELFMAG) == 0)
    return load_elf(mem, file);
  // A bzImage is recognised by its boot sector flag and the "HdrS" magic.
  const uint64_t boot_flag_at = offsetof(abi::SetupHeader, boot_flag) + abi::kSetupHeaderOffset;
  const uint64_t magic_at = offsetof(abi::SetupHeader, header) + abi::kSetupHeaderOffset;
  if (file.size() >= magic_at + 4 && read_at<uint16_t>(file, boot_flag_at) == abi::kBootFlagMagic &&
      read_at<uint32_t>(file, magic_at) == abi::kHeaderMagic)
    return load_bzimage(mem, file);
  if (file.size() < magic_at + 4)
    throw Error(fmt::format("{} (the file is only {} bytes)", kUnrecognised, file.size()));
  throw Error(kUnrecognised);
}

InitrdPlacement load_initrd(GuestMemory& mem, std::span<const std::byte> initrd,
                            const LoadedKernel& kernel, uint64_t ram_bytes) {
  if (initrd.empty()) throw Error("initrd file is empty");
  // initrd_addr_max is the highest address the initrd may occupy (inclusive).
  const uint64_t limit = std::min(uint64_t{kernel.initrd_addr_max} + 1, low_ram_end(ram_bytes));
  const uint64_t lowest = align_up(kernel.end, kPageSize);
  if (initrd.size() > limit || ((limit - initrd.size()) & ~(kPageSize - 1)) < lowest)
    throw Error(fmt::format(
        "initrd of {} MiB does not fit between the kernel's end ({} MiB) and {} MiB: give the "
        "VM more memory or use a smaller initrd",
        (initrd.size() + kMiB - 1) >> 20, lowest >> 20, limit >> 20));
  const uint64_t addr = (limit - initrd.size()) & ~(kPageSize - 1);
  mem.write(addr, initrd);
  return {addr, initrd.size()};
}

}  // namespace sm::x86
