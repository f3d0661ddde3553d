#include "vmm/guest_memory.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <limits>

namespace sm {
namespace {

GuestMemory two_regions() {
  const GuestMemory::RegionSpec specs[] = {{0, 0x10000}, {0x100000, 0x2000}};
  return GuestMemory::create(specs);
}

TEST(GuestMemory, ReadsBackWhatWasWritten) {
  auto mem = two_regions();
  mem.write_obj<uint64_t>(0x100008, 0x1122334455667788ull);
  EXPECT_EQ(mem.read_obj<uint64_t>(0x100008), 0x1122334455667788ull);
  EXPECT_EQ(mem.total_size(), 0x12000u);
}

TEST(GuestMemory, RejectsAccessOutsideRam) {
  auto mem = two_regions();
  EXPECT_THROW((void)mem.read_obj<uint32_t>(0x10000), GuestError);      // in the hole
  EXPECT_THROW((void)mem.read_obj<uint32_t>(0xfffe), GuestError);       // straddles the end
  EXPECT_THROW((void)mem.span(0x101000, 0x2000), GuestError);           // past the last region
  EXPECT_THROW((void)mem.span(0x100000, std::numeric_limits<uint64_t>::max()), GuestError);
  EXPECT_THROW((void)mem.span(std::numeric_limits<uint64_t>::max() - 1, 4), GuestError);
  EXPECT_TRUE(mem.contains(0x10000 - 4, 4));
  EXPECT_TRUE(mem.contains(0x10000, 0));
  EXPECT_FALSE(mem.contains(0x10000, 1));
}

TEST(GuestMemory, RejectsBadLayouts) {
  const GuestMemory::RegionSpec unaligned[] = {{0, 0x1001}};
  EXPECT_THROW(GuestMemory::create(unaligned), Error);
  const GuestMemory::RegionSpec overlapping[] = {{0, 0x2000}, {0x1000, 0x1000}};
  EXPECT_THROW(GuestMemory::create(overlapping), Error);
}

}  // namespace
}  // namespace sm
