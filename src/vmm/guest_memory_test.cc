#include "vmm/guest_memory.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <limits>
#include <filesystem>
#include <fstream>

#include <stdlib.h>
#include <sys/stat.h>

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

namespace sm {
namespace {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string t = (std::filesystem::temp_directory_path() / "sm-mem-test.XXXXXX").string();
    path = ::mkdtemp(t.data());
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

uint64_t allocated_bytes(const std::filesystem::path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

TEST(GuestMemorySnapshot, SavesSparselyAndMapsBackCopyOnWrite) {
  TempDir dir;
  const GuestMemory::RegionSpec specs[] = {{0, 0x100000}, {0x200000, 0x100000}};
  auto mem = GuestMemory::create(specs);
  mem.write_obj<uint64_t>(0x1000, 0xabcdef);
  mem.write_obj<uint64_t>(0x2ff000, 42);
  mem.write_obj<uint64_t>(0x3000, 0);  // touched but zero: stays a hole
  const auto file = dir.path / "memory";
  EXPECT_EQ(mem.save_to(file), 2 * 4096u);
  EXPECT_EQ(std::filesystem::file_size(file), 0x200000u);
  EXPECT_LE(allocated_bytes(file), 64 * 1024u);  // two pages of data, not 2 MiB
  EXPECT_THROW(mem.save_to(file), Error);        // never overwrites

  auto clone = GuestMemory::map_private(file, specs);
  EXPECT_TRUE(clone.is_private_mapping());
  EXPECT_EQ(clone.read_obj<uint64_t>(0x1000), 0xabcdefu);
  EXPECT_EQ(clone.read_obj<uint64_t>(0x2ff000), 42u);
  clone.write_obj<uint64_t>(0x1000, 7);         // over file data
  clone.write_obj<uint64_t>(0x250000, 9);       // in a hole of the file
  auto other = GuestMemory::map_private(file, specs);
  EXPECT_EQ(other.read_obj<uint64_t>(0x1000), 0xabcdefu);  // clones do not see each other
  EXPECT_EQ(other.read_obj<uint64_t>(0x250000), 0u);

  // A clone's capture holds its own writes over the file's data.
  const auto file2 = dir.path / "memory2";
  EXPECT_EQ(clone.save_to(file2), 3 * 4096u);
  auto again = GuestMemory::map_private(file2, specs);
  EXPECT_EQ(again.read_obj<uint64_t>(0x1000), 7u);
  EXPECT_EQ(again.read_obj<uint64_t>(0x250000), 9u);
  EXPECT_EQ(again.read_obj<uint64_t>(0x2ff000), 42u);

  // The source file is unchanged.
  auto check = GuestMemory::map_private(file, specs);
  EXPECT_EQ(check.read_obj<uint64_t>(0x1000), 0xabcdefu);
}

TEST(GuestMemorySnapshot, RefusesAMemoryFileOfAnotherSize) {
  TempDir dir;
  const GuestMemory::RegionSpec specs[] = {{0, 0x100000}};
  const auto file = dir.path / "memory";
  { std::ofstream(file) << "short"; }
  EXPECT_THROW(GuestMemory::map_private(file, specs), Error);
  EXPECT_THROW(GuestMemory::map_private(dir.path / "missing", specs), Error);
}

}  // namespace
}  // namespace sm
