#include "devices/i8042.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "snapshot/codec.h"

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

// ---------------------------------------------------------------- snapshots

std::vector<std::byte> encode(const I8042State& s) {
  snapshot::Encoder e;
  save(e, s);
  return e.take();
}

I8042State decode(std::span<const std::byte> data) {
  snapshot::Decoder d(data, "i8042");
  I8042State s = load_i8042_state(d);
  d.finish();
  return s;
}

// A byte waiting in the output buffer (with the timeout bit), a changed command byte and output
// port, and a command waiting for its data byte: the restored controller carries on from there.
TEST_F(I8042Test, SnapshotRoundTripBehavesIdentically) {
  EXPECT_EQ(command(0xd1, 0x03), std::nullopt);  // output port
  EXPECT_EQ(command(0xad), std::nullopt);        // keyboard disabled: CTR bit 4
  out(DATA, 0xf2);                               // NAK + timeout waiting in the output buffer
  out(CMD, 0x60);                                // write CTR: waits for its data byte
  const I8042State saved = kbc.save_state();
  ASSERT_TRUE(saved.pending_command);
  ASSERT_TRUE(saved.output);
  EXPECT_TRUE(saved.timeout);
  EXPECT_EQ(decode(encode(saved)), saved);

  auto irq2 = std::make_shared<CountingInterrupt>();
  int resets2 = 0;
  I8042 restored(irq2, [&] { ++resets2; }, decode(encode(saved)));
  EXPECT_EQ(restored.save_state(), saved);
  EXPECT_EQ(irq2->count, 0);
  auto in2 = [&](uint64_t off) {
    std::byte b{};
    restored.read(off, std::span(&b, 1));
    return static_cast<uint8_t>(b);
  };
  auto out2 = [&](uint64_t off, uint8_t v) {
    const std::byte b{v};
    restored.write(off, std::span(&b, 1));
  };
  EXPECT_EQ(in2(CMD), in(CMD));
  EXPECT_EQ(in2(CMD) & 0x49, 0x49);  // output full, timeout, last write was a command
  EXPECT_EQ(in2(DATA), 0xfe);
  EXPECT_EQ(in(DATA), 0xfe);
  out2(DATA, 0x01);  // completes the pending CTR write on the restored controller
  out(DATA, 0x01);
  out2(CMD, 0x20);
  EXPECT_EQ(in2(DATA), 0x01);
  out2(CMD, 0xd0);
  EXPECT_EQ(in2(DATA), 0x03);
  EXPECT_EQ(irq2->count, 2);  // the CTR read and the output port read, keyboard interrupt on
  out2(CMD, 0xfe);
  EXPECT_EQ(resets2, 1);
  EXPECT_EQ(resets, 0);
}

TEST(I8042Snapshot, RefusesTruncatedAndInvalidStates) {
  I8042State s;
  s.output = 0xfa;
  const auto good = encode(s);
  for (size_t n = 0; n < good.size(); ++n)
    EXPECT_THROW((void)decode(std::span(good).first(n)), snapshot::SnapshotError) << n;
  auto pending = good;
  pending[2] = std::byte{1};
  pending[3] = std::byte{0x20};  // READ CTR takes no data byte
  EXPECT_THROW((void)decode(pending), snapshot::SnapshotError);
  auto absent = good;
  absent[3] = std::byte{0x60};  // no pending command, yet a value
  EXPECT_THROW((void)decode(absent), snapshot::SnapshotError);
  auto bad_bool = good;
  bad_bool[6] = std::byte{7};
  EXPECT_THROW((void)decode(bad_bool), snapshot::SnapshotError);

  I8042State timeout_without_byte;
  timeout_without_byte.timeout = true;
  EXPECT_THROW(I8042(nullptr, {}, timeout_without_byte), snapshot::SnapshotError);
}

}  // namespace
}  // namespace sm::devices
