#include "vmm/bus.h"

#include <gtest/gtest.h>

#include <array>
#include <cstring>

#include "common/error.h"

namespace sm {
namespace {

struct Recorder : IoHandler {
  uint64_t last_offset = ~0ull;
  void read(uint64_t offset, std::span<std::byte> data) override {
    last_offset = offset;
    std::memset(data.data(), 0x5a, data.size());
  }
  void write(uint64_t offset, std::span<const std::byte>) override { last_offset = offset; }
};

TEST(Bus, DispatchesOffsetsRelativeToRange) {
  Bus bus("mmio");
  auto dev = std::make_shared<Recorder>();
  bus.add(0xd0000000, 0x1000, dev);
  std::array<std::byte, 4> buf{};
  EXPECT_TRUE(bus.read(0xd0000010, buf));
  EXPECT_EQ(dev->last_offset, 0x10u);
  EXPECT_EQ(buf[0], std::byte{0x5a});
  EXPECT_FALSE(bus.read(0xd0001000, buf));
  EXPECT_EQ(buf[0], std::byte{0xff});
  EXPECT_FALSE(bus.write(0xd0000ffe, buf));  // straddles the end of the range
}

TEST(Bus, RefusesOverlapsAndLateAdds) {
  Bus bus("pio");
  bus.add(0x3f8, 8, std::make_shared<Recorder>());
  EXPECT_THROW(bus.add(0x3f0, 9, std::make_shared<Recorder>()), Error);
  EXPECT_THROW(bus.add(0x3ff, 1, std::make_shared<Recorder>()), Error);
  EXPECT_THROW(bus.add(0, 0, std::make_shared<Recorder>()), Error);
  bus.add(0x400, 1, std::make_shared<Recorder>());
  bus.freeze();
  EXPECT_THROW(bus.add(0x500, 1, std::make_shared<Recorder>()), Error);
}

}  // namespace
}  // namespace sm
