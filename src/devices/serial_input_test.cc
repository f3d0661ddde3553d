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
  write_reg(uart, 1, 0x0f);  // Linux's probe: does IER exist? (MCR still 0)
  EXPECT_FALSE(uart.accepting_input());
  write_reg(uart, 1, 0x00);
  write_reg(uart, 4, 0x1a);  // loopback test: LOOP | OUT2 | RTS
  EXPECT_FALSE(uart.accepting_input());
  write_reg(uart, 4, 0x0b);  // opened: DTR | RTS | OUT2
  write_reg(uart, 1, 0x05);  // IER: receive data + line status
  EXPECT_TRUE(uart.accepting_input());
  write_reg(uart, 4, 0x1b);  // loopback again
  EXPECT_FALSE(uart.accepting_input());
  write_reg(uart, 4, 0x0b);
  write_reg(uart, 1, 0x02);  // IER: THR empty only (Linux throttling input)
  EXPECT_FALSE(uart.accepting_input());
  write_reg(uart, 3, 0x80);  // DLAB: offset 1 is the divisor latch, not IER
  write_reg(uart, 1, 0x01);
  EXPECT_FALSE(uart.accepting_input());
}

}  // namespace
}  // namespace sm::devices
