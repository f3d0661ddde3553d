// Synthetic kernel images for the unit tests: a minimal ELF64 vmlinux and a minimal bzImage,
// built byte by byte so each test can corrupt exactly the field it is about.
#pragma once

#include <elf.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "arch/x86_64/bootparam_abi.h"

namespace sm::x86::testing {

struct ElfSegment {
  uint64_t paddr;
  std::vector<std::byte> data;  // p_filesz = data.size()
  uint64_t memsz;
  uint32_t type = PT_LOAD;
};

inline std::vector<std::byte> pattern(size_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte(static_cast<uint8_t>(seed + i * 7));
  return v;
}

inline std::vector<std::byte> make_elf(uint64_t entry, const std::vector<ElfSegment>& segs) {
  Elf64_Ehdr eh{};
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_ident[EI_VERSION] = EV_CURRENT;
  eh.e_type = ET_EXEC;
  eh.e_machine = EM_X86_64;
  eh.e_version = EV_CURRENT;
  eh.e_entry = entry;
  eh.e_phoff = sizeof(Elf64_Ehdr);
  eh.e_ehsize = sizeof(Elf64_Ehdr);
  eh.e_phentsize = sizeof(Elf64_Phdr);
  eh.e_phnum = static_cast<uint16_t>(segs.size());
  uint64_t data_off = sizeof(Elf64_Ehdr) + segs.size() * sizeof(Elf64_Phdr);
  std::vector<std::byte> out(data_off);
  std::memcpy(out.data(), &eh, sizeof eh);
  for (size_t i = 0; i < segs.size(); ++i) {
    Elf64_Phdr ph{};
    ph.p_type = segs[i].type;
    ph.p_flags = PF_R | PF_X;
    ph.p_offset = out.size();
    ph.p_vaddr = 0xffffffff80000000ull + segs[i].paddr;
    ph.p_paddr = segs[i].paddr;
    ph.p_filesz = segs[i].data.size();
    ph.p_memsz = segs[i].memsz;
    ph.p_align = 0x1000;
    std::memcpy(out.data() + sizeof(Elf64_Ehdr) + i * sizeof(Elf64_Phdr), &ph, sizeof ph);
    out.insert(out.end(), segs[i].data.begin(), segs[i].data.end());
  }
  return out;
}

// Patches the i-th program header of an image made by make_elf.
inline Elf64_Phdr* phdr(std::vector<std::byte>& elf, size_t i) {
  return reinterpret_cast<Elf64_Phdr*>(elf.data() + sizeof(Elf64_Ehdr) + i * sizeof(Elf64_Phdr));
}
inline Elf64_Ehdr* ehdr(std::vector<std::byte>& elf) {
  return reinterpret_cast<Elf64_Ehdr*>(elf.data());
}

// A PT_NOTE payload holding Xen's PHYS32_ENTRY note with an 8-byte descriptor.
inline std::vector<std::byte> pvh_note(uint64_t entry) {
  std::vector<std::byte> v(12 + 4 + 8);
  const uint32_t hdr[3] = {4, 8, 18};
  std::memcpy(v.data(), hdr, 12);
  std::memcpy(v.data() + 12, "Xen", 4);
  std::memcpy(v.data() + 16, &entry, 8);
  return v;
}

struct BzImageParams {
  uint16_t version = 0x020f;
  uint16_t xloadflags = abi::kXlfKernel64;
  uint8_t setup_sects = 4;
  size_t pm_size = 8192;  // protected-mode part
  uint32_t cmdline_size = 2047;
  uint32_t initrd_addr_max = 0x7fffffff;
  uint64_t pref_address = 0x1000000;
  uint32_t init_size = 0x400000;
  uint32_t kernel_alignment = 0x200000;
};

constexpr uint64_t kBzHeaderEnd = 0x26c;  // 0x202 + the jump offset byte at 0x201

inline std::vector<std::byte> make_bzimage(const BzImageParams& p = {}) {
  const size_t setup = (p.setup_sects == 0 ? 4 : p.setup_sects) + 1;
  std::vector<std::byte> out(setup * 512, std::byte{0});
  abi::SetupHeader h{};
  h.setup_sects = p.setup_sects;
  h.syssize = static_cast<uint32_t>((p.pm_size + 15) / 16);
  h.vid_mode = 0xffff;
  h.boot_flag = abi::kBootFlagMagic;
  h.jump = static_cast<uint16_t>(0xeb | ((kBzHeaderEnd - 0x202) << 8));  // "jmp short" past it
  h.header = abi::kHeaderMagic;
  h.version = p.version;
  h.loadflags = abi::kLoadedHigh;
  h.code32_start = 0x100000;
  h.initrd_addr_max = p.initrd_addr_max;
  h.kernel_alignment = p.kernel_alignment;
  h.relocatable_kernel = 1;
  h.min_alignment = 21;
  h.xloadflags = p.xloadflags;
  h.cmdline_size = p.cmdline_size;
  h.pref_address = p.pref_address;
  h.init_size = p.init_size;
  std::memcpy(out.data() + abi::kSetupHeaderOffset, &h, sizeof h);
  auto pm = pattern(p.pm_size, 0x33);
  out.insert(out.end(), pm.begin(), pm.end());
  return out;
}

}  // namespace sm::x86::testing
