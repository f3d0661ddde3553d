#include <gtest/gtest.h>

#include <array>

#include "devices/serial.h"

namespace sm::devices {
namespace {

void write_reg(Serial& uart, uint64_t offset, uint8_t v) {
  std::array<std::byte, 1> b{std::byte{v}};
  uart.write(offset, b);
}

// The VMM holds host input until the guest driver listens: Linux clears the FIFO when it opens
// the port, so bytes offered earlier would be lost.
TEST(SerialInput, AcceptsInputOnlyWhileTheReceiveInterruptIsOn) {
  Serial uart(nullptr, {});
  EXPECT_FALSE(uart.accepting_input());
  write_reg(uart, 1, 0x01);  // IER: received data available
  EXPECT_TRUE(uart.accepting_input());
  write_reg(uart, 1, 0x02);  // IER: THR empty only (Linux throttling input)
  EXPECT_FALSE(uart.accepting_input());
  write_reg(uart, 3, 0x80);  // DLAB: offset 1 is the divisor latch, not IER
  write_reg(uart, 1, 0x01);
  EXPECT_FALSE(uart.accepting_input());
}

}  // namespace
}  // namespace sm::devices
