#include "devices/power.h"

#include <gtest/gtest.h>

#include <array>
#include <optional>

namespace sm::devices {
namespace {

TEST(ExitDevice, GuestByteBecomesTheExitStatus) {
  std::optional<int> status;
  ExitDevice dev([&](uint8_t s) { status = s; });
  const std::byte b{42};
  dev.write(0, std::span(&b, 1));
  EXPECT_EQ(status, 42);
  const std::byte zero{0};
  dev.write(0, std::span(&zero, 1));
  EXPECT_EQ(status, 0);
}

TEST(ExitDevice, ReadsZeroAndIgnoresOddAccesses) {
  int calls = 0;
  ExitDevice dev([&](uint8_t) { ++calls; });
  std::array<std::byte, 2> buf{std::byte{1}, std::byte{1}};
  dev.read(0, buf);
  EXPECT_EQ(buf[0], std::byte{0});
  EXPECT_EQ(buf[1], std::byte{0});
  dev.write(0, {});
  dev.write(1, buf);
  EXPECT_EQ(calls, 0);
  ExitDevice no_callback({});
  no_callback.write(0, buf);  // harmless
}

}  // namespace
}  // namespace sm::devices
