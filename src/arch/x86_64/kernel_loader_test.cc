#include "arch/x86_64/kernel_loader.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "arch/x86_64/layout.h"
#include "arch/x86_64/test_kernels.h"
#include "common/error.h"

namespace sm::x86 {
namespace {

using testing::ElfSegment;
using testing::make_bzimage;
using testing::make_elf;
using testing::pattern;

GuestMemory ram(uint64_t bytes) {
  auto layout = memory_layout(bytes);
  return GuestMemory::create(layout);
}

// Expects load_kernel to throw an sm::Error whose message contains `needle`.
void expect_error(GuestMemory& mem, const std::vector<std::byte>& file, const std::string& needle) {
  try {
    (void)load_kernel(mem, file);
    ADD_FAILURE() << "expected an error mentioning \"" << needle << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

std::vector<std::byte> guest_bytes(GuestMemory& mem, uint64_t gpa, uint64_t len) {
  auto s = mem.span(gpa, len);
  return {s.begin(), s.end()};
}

TEST(ElfLoader, LoadsSegmentsAtPhysicalAddressesAndZeroesBss) {
  auto mem = ram(64 * kMiB);
  // Dirty the bss area first: the loader must clear it, not rely on fresh memory.
  std::vector<std::byte> junk(0x1000, std::byte{0xee});
  mem.write(0x1000000 + 0x2000, junk);
  const auto text = pattern(0x2000, 1);
  const auto data = pattern(0x800, 9);
  const auto elf = make_elf(0x1000000, {{0x1000000, text, 0x3000}, {0x1400000, data, 0x800}});
  const auto k = load_kernel(mem, elf);
  EXPECT_EQ(k.format, KernelFormat::kElf);
  EXPECT_EQ(k.entry, 0x1000000u);
  EXPECT_EQ(k.load_start, 0x1000000u);
  EXPECT_EQ(k.end, 0x1400800u);
  EXPECT_TRUE(k.setup_header.empty());
  EXPECT_FALSE(k.pvh_entry);
  EXPECT_EQ(guest_bytes(mem, 0x1000000, text.size()), text);
  EXPECT_EQ(guest_bytes(mem, 0x1400000, data.size()), data);
  EXPECT_EQ(guest_bytes(mem, 0x1002000, 0x1000), std::vector<std::byte>(0x1000, std::byte{0}));
}

TEST(ElfLoader, FindsThePvhEntryNote) {
  auto mem = ram(64 * kMiB);
  const auto elf = make_elf(0x1000000, {{0x1000000, pattern(64, 0), 0x1000},
                                        {0, testing::pvh_note(0x1000123), 0, PT_NOTE}});
  const auto k = load_kernel(mem, elf);
  ASSERT_TRUE(k.pvh_entry);
  EXPECT_EQ(*k.pvh_entry, 0x1000123u);
}

TEST(ElfLoader, RejectsTruncatedFiles) {
  auto mem = ram(64 * kMiB);
  const auto elf = make_elf(0x1000000, {{0x1000000, pattern(0x1000, 1), 0x1000}});
  expect_error(mem, {elf.begin(), elf.begin() + 40}, "truncated");
  expect_error(mem, {elf.begin(), elf.begin() + sizeof(Elf64_Ehdr) + 20}, "past the end");
  expect_error(mem, {elf.begin(), elf.end() - 1}, "runs past the end");
}

TEST(ElfLoader, RejectsOtherArchitecturesAndTypes) {
  auto mem = ram(64 * kMiB);
  auto elf = make_elf(0x1000000, {{0x1000000, pattern(0x100, 1), 0x100}});
  auto arm = elf;
  testing::ehdr(arm)->e_machine = EM_AARCH64;
  expect_error(mem, arm, "not a 64-bit x86-64 kernel");
  auto elf32 = elf;
  testing::ehdr(elf32)->e_ident[EI_CLASS] = ELFCLASS32;
  expect_error(mem, elf32, "not a 64-bit x86-64 kernel");
  auto shared = elf;
  testing::ehdr(shared)->e_type = ET_DYN;
  expect_error(mem, shared, "not an executable vmlinux");
}

TEST(ElfLoader, RejectsHostileProgramHeaders) {
  auto mem = ram(64 * kMiB);
  const auto good = make_elf(0x1000000, {{0x1000000, pattern(0x100, 1), 0x1000}});

  auto many = good;
  testing::ehdr(many)->e_phnum = 0xffff;
  expect_error(mem, many, "program headers");

  auto none = good;
  testing::ehdr(none)->e_phnum = 0;
  expect_error(mem, none, "program headers");

  auto entsize = good;
  testing::ehdr(entsize)->e_phentsize = 32;
  expect_error(mem, entsize, "program header size");

  auto phoff = good;
  testing::ehdr(phoff)->e_phoff = ~0ull - 8;  // offset + size overflows
  expect_error(mem, phoff, "past the end");

  auto filesz = good;
  testing::phdr(filesz, 0)->p_filesz = 0x2000;  // > p_memsz
  expect_error(mem, filesz, "file size");

  auto offset = good;
  testing::phdr(offset, 0)->p_offset = ~0ull - 0x10;  // overflowing file offset
  expect_error(mem, offset, "runs past the end");

  auto wrap = good;
  testing::phdr(wrap, 0)->p_paddr = ~0ull - 0x10;  // address + size overflows
  testing::ehdr(wrap)->e_entry = ~0ull - 0x10;
  expect_error(mem, wrap, "overflows");

  auto no_load = good;
  testing::phdr(no_load, 0)->p_type = PT_NOTE;
  expect_error(mem, no_load, "no loadable segments");

  auto entry = good;
  testing::ehdr(entry)->e_entry = 0xffffffff81000000ull;  // a virtual entry point
  expect_error(mem, entry, "entry point");
}

TEST(ElfLoader, RejectsSegmentsOutsideRamOrInTheBootArea) {
  auto mem = ram(64 * kMiB);
  expect_error(mem, make_elf(0x8000, {{0x8000, pattern(0x100, 1), 0x100}}), "boot area");
  expect_error(mem, make_elf(0x4000000, {{0x4000000, pattern(0x100, 1), 0x100}}),
               "outside guest RAM");
  // Starts inside RAM, but its bss runs past the end.
  expect_error(mem, make_elf(0x3fff000, {{0x3fff000, pattern(0x100, 1), 0x2000}}),
               "outside guest RAM");
  // Inside the MMIO hole of a 5 GiB VM.
  auto big = ram(5 * kGiB);
  expect_error(big, make_elf(0xd0000000, {{0xd0000000, pattern(0x100, 1), 0x100}}),
               "outside guest RAM");
}

TEST(KernelLoader, RejectsEmptyAndUnrecognisedFiles) {
  auto mem = ram(64 * kMiB);
  expect_error(mem, {}, "empty");
  expect_error(mem, pattern(3, 0), "unrecognised kernel file: expected an ELF vmlinux or a bzImage");
  expect_error(mem, pattern(100000, 0), "unrecognised kernel file: expected an ELF vmlinux or a bzImage");
  std::vector<std::byte> script(4096, std::byte{'#'});
  expect_error(mem, script, "unrecognised kernel file");
}

TEST(BzImageLoader, LoadsProtectedModeCodeAtOneMiB) {
  auto mem = ram(64 * kMiB);
  const auto img = make_bzimage();
  const auto k = load_kernel(mem, img);
  EXPECT_EQ(k.format, KernelFormat::kBzImage);
  EXPECT_EQ(k.entry, 0x100200u);
  EXPECT_EQ(k.load_start, 0x100000u);
  // Decompresses at pref_address (16 MiB) and needs init_size from there.
  EXPECT_EQ(k.end, 0x1000000u + 0x400000u);
  EXPECT_EQ(k.protocol_version, 0x020f);
  EXPECT_EQ(k.cmdline_size, 2047u);
  EXPECT_EQ(k.initrd_addr_max, 0x7fffffffu);
  ASSERT_EQ(k.setup_header.size(), testing::kBzHeaderEnd - 0x1f1);
  EXPECT_TRUE(std::equal(k.setup_header.begin(), k.setup_header.end(), img.begin() + 0x1f1));
  const size_t setup = 5 * 512;
  EXPECT_EQ(guest_bytes(mem, 0x100000, img.size() - setup),
            std::vector<std::byte>(img.begin() + setup, img.end()));
}

TEST(BzImageLoader, SetupSectsZeroMeansFour) {
  auto mem = ram(64 * kMiB);
  testing::BzImageParams p;
  p.setup_sects = 0;
  const auto img = make_bzimage(p);
  (void)load_kernel(mem, img);
  EXPECT_EQ(guest_bytes(mem, 0x100000, 16),
            std::vector<std::byte>(img.begin() + 5 * 512, img.begin() + 5 * 512 + 16));
}

TEST(BzImageLoader, RejectsOldProtocolsAnd32BitKernels) {
  auto mem = ram(64 * kMiB);
  testing::BzImageParams old;
  old.version = 0x020b;
  expect_error(mem, make_bzimage(old), "2.12 or newer");
  testing::BzImageParams k32;
  k32.xloadflags = 0;
  expect_error(mem, make_bzimage(k32), "XLF_KERNEL_64");
}

TEST(BzImageLoader, RejectsTruncatedAndHostileImages) {
  auto mem = ram(64 * kMiB);
  const auto img = make_bzimage();
  expect_error(mem, {img.begin(), img.begin() + 0x210}, "truncated");
  expect_error(mem, {img.begin(), img.begin() + 5 * 512}, "truncated");      // no kernel at all
  expect_error(mem, {img.begin(), img.begin() + 5 * 512 + 100}, "truncated");  // short of syssize

  auto sects = img;
  sects[0x1f1] = std::byte{0xff};  // 256 setup sectors: past the end of the file
  expect_error(mem, sects, "truncated");

  auto syssize = img;
  const uint32_t huge = 0xffffffff;
  std::memcpy(syssize.data() + 0x1f4, &huge, 4);
  expect_error(mem, syssize, "truncated");

  testing::BzImageParams align;
  align.kernel_alignment = 0x300000;
  expect_error(mem, make_bzimage(align), "power of two");

  testing::BzImageParams pref;
  pref.pref_address = ~0ull;
  expect_error(mem, make_bzimage(pref), "pref_address");

  testing::BzImageParams init;
  init.init_size = 0xffffffff;  // needs 4 GiB to decompress
  expect_error(mem, make_bzimage(init), "give it more memory");
}

TEST(Initrd, PlacedHighPageAlignedAboveTheKernel) {
  auto mem = ram(64 * kMiB);
  const auto k = load_kernel(mem, make_bzimage());
  const auto initrd = pattern(0x12345, 5);
  const auto p = load_initrd(mem, initrd, k, 64 * kMiB);
  EXPECT_EQ(p.size, initrd.size());
  EXPECT_EQ(p.addr % kPageSize, 0u);
  EXPECT_LE(p.addr + p.size, 64 * kMiB);
  EXPECT_GT(p.addr + p.size + kPageSize, 64 * kMiB);  // as high as it goes
  EXPECT_GE(p.addr, k.end);
  EXPECT_EQ(guest_bytes(mem, p.addr, p.size), initrd);
}

TEST(Initrd, HonoursInitrdAddrMaxAndTheMmioHole) {
  testing::BzImageParams params;
  params.initrd_addr_max = 0x37ffffff;
  auto mem = ram(5 * kGiB);
  const auto k = load_kernel(mem, make_bzimage(params));
  const auto p = load_initrd(mem, pattern(0x1000, 1), k, 5 * kGiB);
  EXPECT_EQ(p.addr, 0x38000000u - 0x1000);

  testing::BzImageParams high;
  high.initrd_addr_max = 0xffffffff;
  auto mem2 = ram(5 * kGiB);
  const auto k2 = load_kernel(mem2, make_bzimage(high));
  const auto p2 = load_initrd(mem2, pattern(0x1000, 1), k2, 5 * kGiB);
  EXPECT_EQ(p2.addr, kMmioHoleStart - 0x1000);  // below the hole, not in it
}

TEST(Initrd, ErrorsWhenItDoesNotFit) {
  auto mem = ram(32 * kMiB);
  const auto k = load_kernel(mem, make_bzimage());  // ends at 20 MiB
  EXPECT_THROW((void)load_initrd(mem, pattern(13 * kMiB, 1), k, 32 * kMiB), Error);
  EXPECT_NO_THROW((void)load_initrd(mem, pattern(12 * kMiB, 1), k, 32 * kMiB));
  EXPECT_THROW((void)load_initrd(mem, {}, k, 32 * kMiB), Error);
}

// The project's own kernel, when scripts/setup has built it on this machine.
std::vector<std::byte> read_cached_kernel(const char* name) {
  const char* home = std::getenv("HOME");
  if (!home) return {};
  const auto path = std::filesystem::path(home) / ".cache/supermachine/kernel/current" / name;
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) return {};
  std::vector<std::byte> out(size);
  std::ifstream in(path, std::ios::binary);
  if (!in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(size))) return {};
  return out;
}

TEST(RealKernel, ParsesTheCachedVmlinux) {
  const auto file = read_cached_kernel("vmlinux");
  if (file.empty()) GTEST_SKIP() << "no ~/.cache/supermachine/kernel/current/vmlinux";
  auto mem = ram(256 * kMiB);
  const auto k = load_kernel(mem, file);
  EXPECT_EQ(k.format, KernelFormat::kElf);
  EXPECT_GE(k.load_start, kHighMemStart);
  EXPECT_GE(k.entry, k.load_start);
  EXPECT_LT(k.entry, k.end);
  EXPECT_TRUE(k.pvh_entry) << "the project's kernel is built with PVH";
}

TEST(RealKernel, ParsesTheCachedBzImage) {
  const auto file = read_cached_kernel("bzImage");
  if (file.empty()) GTEST_SKIP() << "no ~/.cache/supermachine/kernel/current/bzImage";
  auto mem = ram(256 * kMiB);
  const auto k = load_kernel(mem, file);
  EXPECT_EQ(k.format, KernelFormat::kBzImage);
  EXPECT_GE(k.protocol_version, 0x020c);
  EXPECT_EQ(k.entry, 0x100200u);
  EXPECT_GE(k.cmdline_size, 255u);
  EXPECT_GT(k.end, k.load_start);
}

}  // namespace
}  // namespace sm::x86
