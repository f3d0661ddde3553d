#include "arch/x86_64/boot_params.h"

#include <gtest/gtest.h>

#include <string>
#include <type_traits>

#include "arch/x86_64/bootparam_abi.h"
#include "arch/x86_64/layout.h"
#include "arch/x86_64/test_kernels.h"
#include "common/error.h"

// The zero page is a packed struct: gtest's EXPECT_EQ binds its arguments by reference, which
// for a misaligned member is undefined behaviour (UBSan says so). Compare a copy instead.
#define PACKED(x) static_cast<std::remove_cvref_t<decltype(x)>>(x)

namespace sm::x86 {
namespace {

constexpr auto kRam = E820Type::kRam;
constexpr auto kReserved = E820Type::kReserved;

TEST(MemoryLayout, SplitsAroundTheMmioHole) {
  auto small = memory_layout(256 * kMiB);
  ASSERT_EQ(small.size(), 1u);
  EXPECT_EQ(small[0].gpa, 0u);
  EXPECT_EQ(small[0].size, 256 * kMiB);

  auto exact = memory_layout(3 * kGiB);
  ASSERT_EQ(exact.size(), 1u);
  EXPECT_EQ(exact[0].size, 3 * kGiB);

  auto big = memory_layout(5 * kGiB);
  ASSERT_EQ(big.size(), 2u);
  EXPECT_EQ(big[0].gpa, 0u);
  EXPECT_EQ(big[0].size, 3 * kGiB);
  EXPECT_EQ(big[1].gpa, 4 * kGiB);
  EXPECT_EQ(big[1].size, 2 * kGiB);
}

TEST(MemoryLayout, RejectsBadSizes) {
  EXPECT_THROW((void)memory_layout(16 * kMiB), Error);
  EXPECT_THROW((void)memory_layout(64 * kMiB + 4096), Error);
  EXPECT_THROW((void)memory_layout(2 * kMaxRamBytes), Error);
  EXPECT_NO_THROW((void)memory_layout(kMinRamBytes));
}

TEST(MemoryLayout, VirtioWindowAndIrqsStayInTheirLanes) {
  EXPECT_GE(virtio_mmio_addr(0), kMmioHoleStart);
  EXPECT_LT(virtio_mmio_addr(kMaxVirtioDevices - 1) + kVirtioMmioSize, kIoApicAddr);
  EXPECT_EQ(virtio_irq(0), 5u);
  EXPECT_EQ(virtio_irq(kMaxVirtioDevices - 1), kIoApicPins - 1);
}

TEST(E820, SixtyFourMiB) {
  EXPECT_EQ(e820_map(64 * kMiB), (std::vector<E820Entry>{
                                      {0, 0x9fc00, kRam},
                                      {0x9fc00, 0x100000 - 0x9fc00, kReserved},
                                      {0x100000, 63 * kMiB, kRam},
                                  }));
}

TEST(E820, TwoHundredFiftySixMiB) {
  const auto map = e820_map(256 * kMiB);
  ASSERT_EQ(map.size(), 3u);
  EXPECT_EQ(map[2], (E820Entry{0x100000, 255 * kMiB, kRam}));
}

TEST(E820, ThreeGiBFillsUpToTheHole) {
  const auto map = e820_map(3 * kGiB);
  ASSERT_EQ(map.size(), 3u);
  EXPECT_EQ(map[2], (E820Entry{0x100000, 3 * kGiB - kMiB, kRam}));
}

TEST(E820, FiveGiBContinuesAboveFourGiB) {
  const auto map = e820_map(5 * kGiB);
  ASSERT_EQ(map.size(), 4u);
  EXPECT_EQ(map[2], (E820Entry{0x100000, 3 * kGiB - kMiB, kRam}));
  EXPECT_EQ(map[3], (E820Entry{4 * kGiB, 2 * kGiB, kRam}));
  uint64_t ram = 0;
  for (const auto& e : map)
    if (e.type == kRam) ram += e.size;
  EXPECT_EQ(ram, 5 * kGiB - (kMiB - 0x9fc00));  // all RAM but the reserved low range
}

TEST(E820, MatchesTheGuestMemoryRegions) {
  // Every RAM range the guest is told about must be backed by guest memory.
  for (uint64_t size : {64 * kMiB, 256 * kMiB, 3 * kGiB, 5 * kGiB}) {
    auto layout = memory_layout(size);
    auto mem = GuestMemory::create(layout);
    for (const auto& e : e820_map(size))
      EXPECT_TRUE(mem.contains(e.addr, e.size)) << std::hex << e.addr << "+" << e.size;
  }
}

struct ZeroPageTest : ::testing::Test {
  void SetUp() override {
    auto layout = memory_layout(ram_bytes);
    mem.emplace(GuestMemory::create(layout));
  }
  abi::BootParams zero_page() { return mem->read_obj<abi::BootParams>(kZeroPageAddr); }
  std::string cmdline_in_guest(size_t len) {
    auto s = mem->span(kCmdlineAddr, len + 1);
    return std::string(reinterpret_cast<const char*>(s.data()), len + 1);
  }
  uint64_t ram_bytes = 256 * kMiB;
  std::optional<GuestMemory> mem;
};

TEST_F(ZeroPageTest, BzImageHeaderIsCopiedAndFilledIn) {
  const auto image = testing::make_bzimage();
  const auto k = load_kernel(*mem, image);
  const std::string cmd = "console=ttyS0 panic=-1";
  write_boot_params(*mem, k, cmd, InitrdPlacement{0x7000000, 0x123456}, ram_bytes);

  const auto bp = zero_page();
  EXPECT_EQ(PACKED(bp.hdr.boot_flag), abi::kBootFlagMagic);
  EXPECT_EQ(PACKED(bp.hdr.header), abi::kHeaderMagic);
  EXPECT_EQ(PACKED(bp.hdr.version), 0x020f);
  EXPECT_EQ(bp.hdr.xloadflags & abi::kXlfKernel64, abi::kXlfKernel64);
  EXPECT_EQ(PACKED(bp.hdr.type_of_loader), 0xff);
  EXPECT_TRUE(bp.hdr.loadflags & abi::kLoadedHigh);
  EXPECT_EQ(PACKED(bp.hdr.cmd_line_ptr), kCmdlineAddr);
  EXPECT_EQ(PACKED(bp.hdr.cmdline_size), 2047u);  // the kernel's field, untouched
  EXPECT_EQ(PACKED(bp.hdr.ramdisk_image), 0x7000000u);
  EXPECT_EQ(PACKED(bp.hdr.ramdisk_size), 0x123456u);
  EXPECT_EQ(PACKED(bp.ext_ramdisk_image), 0u);
  EXPECT_EQ(PACKED(bp.sentinel), 0);
  EXPECT_EQ(cmdline_in_guest(cmd.size()), cmd + '\0');

  ASSERT_EQ(PACKED(bp.e820_entries), 3);
  EXPECT_EQ(PACKED(bp.e820_table[0].addr), 0u);
  EXPECT_EQ(PACKED(bp.e820_table[0].size), 0x9fc00u);
  EXPECT_EQ(PACKED(bp.e820_table[0].type), 1u);
  EXPECT_EQ(PACKED(bp.e820_table[1].type), 2u);
  EXPECT_EQ(PACKED(bp.e820_table[2].addr), 0x100000u);
  EXPECT_EQ(PACKED(bp.e820_table[2].size), 255 * kMiB);
}

TEST_F(ZeroPageTest, VmlinuxGetsAMinimalHeader) {
  const auto elf = testing::make_elf(
      0x1000000, {{0x1000000, testing::pattern(0x100, 1), 0x1000}});
  const auto k = load_kernel(*mem, elf);
  write_boot_params(*mem, k, "quiet", std::nullopt, ram_bytes);
  const auto bp = zero_page();
  EXPECT_EQ(PACKED(bp.hdr.boot_flag), abi::kBootFlagMagic);
  EXPECT_EQ(PACKED(bp.hdr.header), abi::kHeaderMagic);
  EXPECT_EQ(PACKED(bp.hdr.type_of_loader), 0xff);
  EXPECT_EQ(PACKED(bp.hdr.cmd_line_ptr), kCmdlineAddr);
  EXPECT_EQ(PACKED(bp.hdr.ramdisk_image), 0u);
  EXPECT_EQ(PACKED(bp.hdr.ramdisk_size), 0u);
  EXPECT_EQ(cmdline_in_guest(5), std::string("quiet") + '\0');
}

TEST_F(ZeroPageTest, CommandLineTooLongIsRejected) {
  testing::BzImageParams p;
  p.cmdline_size = 100;
  const auto k = load_kernel(*mem, testing::make_bzimage(p));
  EXPECT_NO_THROW(write_boot_params(*mem, k, std::string(100, 'a'), std::nullopt, ram_bytes));
  try {
    write_boot_params(*mem, k, std::string(101, 'a'), std::nullopt, ram_bytes);
    ADD_FAILURE() << "a 101-byte command line passed a 100-byte limit";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cmdline_size"), std::string::npos) << e.what();
  }
  // Even a kernel that claims to take more cannot overflow our buffer.
  p.cmdline_size = 0xffffffff;
  const auto k2 = load_kernel(*mem, testing::make_bzimage(p));
  EXPECT_THROW(write_boot_params(*mem, k2, std::string(kCmdlineMaxBytes, 'a'), std::nullopt, ram_bytes),
               Error);
  EXPECT_THROW(write_boot_params(*mem, k2, std::string("a\0b", 3), std::nullopt, ram_bytes), Error);
}

TEST_F(ZeroPageTest, InitrdAboveFourGiBUsesTheExtFields) {
  const auto k = load_kernel(*mem, testing::make_bzimage());
  write_boot_params(*mem, k, "", InitrdPlacement{0x123456000, 0x1000}, ram_bytes);
  const auto bp = zero_page();
  EXPECT_EQ(PACKED(bp.hdr.ramdisk_image), 0x23456000u);
  EXPECT_EQ(PACKED(bp.ext_ramdisk_image), 0x1u);
}

struct ZeroPageFiveGiB : ZeroPageTest {
  ZeroPageFiveGiB() { ram_bytes = 5 * kGiB; }
};

TEST_F(ZeroPageFiveGiB, E820InTheZeroPage) {
  const auto k = load_kernel(*mem, testing::make_bzimage());
  write_boot_params(*mem, k, "", std::nullopt, ram_bytes);
  const auto bp = zero_page();
  ASSERT_EQ(PACKED(bp.e820_entries), 4);
  EXPECT_EQ(PACKED(bp.e820_table[3].addr), 4 * kGiB);
  EXPECT_EQ(PACKED(bp.e820_table[3].size), 2 * kGiB);
  EXPECT_EQ(PACKED(bp.e820_table[3].type), 1u);
}

}  // namespace
}  // namespace sm::x86
