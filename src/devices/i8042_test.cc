#include "devices/i8042.h"

#include <gtest/gtest.h>

#include <atomic>

namespace sm::devices {
namespace {

struct CountingInterrupt : Interrupt {
  std::atomic<int> count{0};
  void trigger() override { ++count; }
};

constexpr uint64_t DATA = I8042::kDataOffset, CMD = I8042::kCommandOffset;

struct I8042Test : ::testing::Test {
  std::shared_ptr<CountingInterrupt> irq = std::make_shared<CountingInterrupt>();
  int resets = 0;
  I8042 kbc{irq, [this] { ++resets; }};
  uint8_t in(uint64_t off) {
    std::byte b{};
    kbc.read(off, std::span(&b, 1));
    return static_cast<uint8_t>(b);
  }
  void out(uint64_t off, uint8_t v) {
    const std::byte b{v};
    kbc.write(off, std::span(&b, 1));
  }
  // What Linux's i8042_command() does: write the command, pass parameters, poll OBF, read.
  std::optional<uint8_t> command(uint8_t cmd, std::optional<uint8_t> param = std::nullopt) {
    EXPECT_EQ(in(CMD) & 0x02, 0) << "input buffer must be free";
    out(CMD, cmd);
    if (param) out(DATA, *param);
    if (!(in(CMD) & 0x01)) return std::nullopt;
    return in(DATA);
  }
};

TEST_F(I8042Test, PresentAndIdle) {
  const uint8_t st = in(CMD);
  EXPECT_NE(st, 0xff);        // Linux treats 0xff as "no controller"
  EXPECT_EQ(st & 0x03, 0);    // nothing to read, ready for input
  EXPECT_EQ(st & 0x04, 0x04); // system flag: self-test passed
}

TEST_F(I8042Test, SelfTestAndCommandByte) {
  EXPECT_EQ(command(0xaa), 0x55);
  EXPECT_EQ(command(0xab), 0x00);
  const auto ctr = command(0x20);
  ASSERT_TRUE(ctr);
  EXPECT_EQ(command(0x60, 0x30), std::nullopt);
  EXPECT_EQ(command(0x20), 0x30);
  EXPECT_EQ(in(CMD) & 0x01, 0);  // read emptied the output buffer
  EXPECT_EQ(command(0xa8), std::nullopt);
  EXPECT_EQ(command(0x20), 0x10);  // AUX enable cleared bit 5
  EXPECT_EQ(command(0xad), std::nullopt);
  EXPECT_EQ(command(0x20) .value() & 0x10, 0x10);
}

TEST_F(I8042Test, NoAuxPortFailsLinuxAuxProbeQuickly) {
  // AUX_LOOP answers, but not from the AUX port (status bit 5 clear)...
  out(CMD, 0xd3);
  out(DATA, 0x5a);
  const uint8_t st = in(CMD);
  EXPECT_EQ(st & 0x01, 0x01);
  EXPECT_EQ(st & 0x20, 0);
  (void)in(DATA);
  // ...and the AUX interface test reports a stuck clock line: no mouse.
  const auto r = command(0xa9);
  ASSERT_TRUE(r);
  EXPECT_NE(*r, 0x00);
  EXPECT_NE(*r, 0xfa);
  EXPECT_NE(*r, 0xff);
}

TEST_F(I8042Test, KeyboardBytesGetAnImmediateNakWithTimeout) {
  out(DATA, 0xf2);  // GETID to the (absent) keyboard
  const uint8_t st = in(CMD);
  EXPECT_EQ(st & 0x41, 0x41);
  EXPECT_EQ(in(DATA), 0xfe);
  EXPECT_EQ(in(CMD) & 0x41, 0);
  EXPECT_EQ(irq->count, 1);  // keyboard interrupt enabled in the default command byte
  EXPECT_EQ(command(0x60, 0x00), std::nullopt);  // interrupts off
  out(DATA, 0xf2);
  EXPECT_EQ(irq->count, 1);
}

TEST_F(I8042Test, PulseResetLineCallsOnReset) {
  out(CMD, 0xfe);
  EXPECT_EQ(resets, 1);
  out(CMD, 0xff);  // pulses no line
  EXPECT_EQ(resets, 1);
  out(CMD, 0xd1);  // write output port with the reset bit low
  out(DATA, 0x00);
  EXPECT_EQ(resets, 2);
  out(CMD, 0xd1);
  out(DATA, 0x03);
  EXPECT_EQ(resets, 2);
  EXPECT_EQ(command(0xd0), 0x03);
}

TEST_F(I8042Test, OtherPortsReadZero) {
  EXPECT_EQ(in(1), 0);
  std::array<std::byte, 2> wide{std::byte{0xff}, std::byte{0xff}};
  kbc.read(CMD, wide);
  EXPECT_EQ(wide[1], std::byte{0});
}

}  // namespace
}  // namespace sm::devices
