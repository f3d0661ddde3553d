#include "devices/serial.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

namespace sm::devices {
namespace {

struct CountingInterrupt : Interrupt {
  std::atomic<int> count{0};
  void trigger() override { ++count; }
};

constexpr uint64_t THR = 0, RBR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2, LCR = 3,
                   MCR = 4, LSR = 5, MSR = 6, SCR = 7;

struct SerialTest : ::testing::Test {
  std::shared_ptr<CountingInterrupt> irq = std::make_shared<CountingInterrupt>();
  std::string output;
  Serial uart{irq, [this](std::span<const std::byte> b) {
                output.append(reinterpret_cast<const char*>(b.data()), b.size());
              }};
  uint8_t in(uint64_t off) {
    std::byte b{0xaa};
    uart.read(off, std::span(&b, 1));
    return static_cast<uint8_t>(b);
  }
  void out(uint64_t off, uint8_t v) {
    const std::byte b{v};
    uart.write(off, std::span(&b, 1));
  }
  void feed(const std::string& s) {
    EXPECT_EQ(uart.enqueue_input(std::as_bytes(std::span(s.data(), s.size()))), s.size());
  }
};

// The register dance of Linux's autoconfig() (drivers/tty/serial/8250/8250_port.c).
TEST_F(SerialTest, PassesLinuxAutoconfigAsA16550A) {
  // IER existence test: the low nibble reads back what was written.
  const uint8_t saved = in(IER);
  out(IER, 0);
  EXPECT_EQ(in(IER) & 0x0f, 0);
  out(IER, 0x0f);
  EXPECT_EQ(in(IER) & 0x0f, 0x0f);
  out(IER, saved);
  // Loopback test: MCR = LOOP | OUT2 | RTS must read back DCD | CTS in MSR[7:4].
  const uint8_t mcr = in(MCR);
  out(MCR, 0x10 | 0x0a);
  EXPECT_EQ(in(MSR) & 0xf0, 0x90);
  out(MCR, mcr);
  // FIFO detection: with FIFOs enabled IIR[7:6] == 3 means 16550A.
  out(LCR, 0xbf);
  out(FCR, 0);  // EFR on enhanced parts; FCR here
  out(LCR, 0);
  out(FCR, 0x01);
  EXPECT_EQ(in(IIR) >> 6, 3);
  // No EFR: with LCR 0xBF, offset 2 still reads IIR, which is never 0 here.
  out(LCR, 0xbf);
  EXPECT_NE(in(IIR), 0);
  out(LCR, 0);
  // IER bits 4-7 do not stick (not an XScale).
  out(IER, 0x40);
  EXPECT_EQ(in(IER) & 0x40, 0);
}

TEST_F(SerialTest, ScratchAndDivisorLatch) {
  out(SCR, 0x5a);
  EXPECT_EQ(in(SCR), 0x5a);
  out(LCR, 0x83);  // DLAB, 8N1
  out(DLL, 0x01);
  out(DLM, 0x00);
  EXPECT_EQ(in(DLL), 0x01);
  EXPECT_EQ(in(DLM), 0x00);
  out(LCR, 0x03);
  EXPECT_EQ(in(LCR), 0x03);
  out(THR, 'x');  // with DLAB clear, offset 0 is THR again
  EXPECT_EQ(output, "x");
  EXPECT_EQ(in(IER), 0);  // the DLM write did not land in IER
}

TEST_F(SerialTest, TransmitsToTheSinkAndStaysEmpty) {
  for (char c : std::string("hello\n")) out(THR, static_cast<uint8_t>(c));
  EXPECT_EQ(output, "hello\n");
  EXPECT_EQ(in(LSR) & 0x60, 0x60);  // THRE | TEMT
  EXPECT_EQ(irq->count, 0);         // no interrupts enabled
}

TEST_F(SerialTest, ThrEmptyInterruptOnEnableAndAfterEachByte) {
  out(IER, 0x02);
  EXPECT_EQ(irq->count, 1);
  EXPECT_EQ(in(IIR) & 0x0f, 0x02);  // THR empty, acknowledged by this read
  EXPECT_EQ(in(IIR) & 0x0f, 0x01);  // nothing pending now
  out(THR, 'a');
  EXPECT_EQ(irq->count, 2);
  EXPECT_EQ(in(IIR) & 0x0f, 0x02);
  // Linux's UART_BUG_THRE test: disable, re-enable, THRE must be reasserted.
  out(IER, 0);
  out(IER, 0x02);
  EXPECT_EQ(in(IIR) & 0x01, 0);
}

TEST_F(SerialTest, ReceivesQueuedInputWithInterrupt) {
  feed("ab");
  EXPECT_EQ(irq->count, 0);  // RX interrupt not enabled yet
  EXPECT_EQ(in(LSR) & 0x01, 0x01);
  out(IER, 0x01);
  EXPECT_EQ(irq->count, 1);  // enabling with data waiting raises it
  EXPECT_EQ(in(IIR) & 0x0f, 0x04);
  EXPECT_EQ(in(RBR), 'a');
  EXPECT_EQ(in(RBR), 'b');
  EXPECT_EQ(in(LSR) & 0x01, 0);
  EXPECT_EQ(in(IIR) & 0x0f, 0x01);
  feed("c");
  EXPECT_EQ(irq->count, 2);
  EXPECT_EQ(in(RBR), 'c');
  EXPECT_EQ(in(RBR), 0);  // empty reads 0
}

TEST_F(SerialTest, ReceivedDataOutranksThrEmpty) {
  out(IER, 0x03);
  feed("z");
  EXPECT_EQ(in(IIR) & 0x0f, 0x04);
  EXPECT_EQ(in(RBR), 'z');
  EXPECT_EQ(in(IIR) & 0x0f, 0x02);
}

TEST_F(SerialTest, LoopbackSendsToOurOwnReceiver) {
  out(MCR, 0x10);
  out(THR, 'q');
  EXPECT_EQ(output, "");
  EXPECT_EQ(in(LSR) & 0x01, 0x01);
  EXPECT_EQ(in(RBR), 'q');
}

TEST_F(SerialTest, FifoResetDropsInputAndInputIsBounded) {
  feed("abc");
  out(FCR, 0x03);
  EXPECT_EQ(in(LSR) & 0x01, 0);
  std::string big(Serial::kMaxPendingInput + 10, 'x');
  EXPECT_EQ(uart.enqueue_input(std::as_bytes(std::span(big.data(), big.size()))),
            Serial::kMaxPendingInput);
  EXPECT_FALSE(uart.input_space());
  EXPECT_EQ(in(RBR), 'x');
  EXPECT_TRUE(uart.input_space());
}

TEST_F(SerialTest, WideAccessesTouchOnlyTheAddressedRegister) {
  out(SCR, 0x11);
  std::array<std::byte, 4> buf{};
  buf.fill(std::byte{0xff});
  uart.read(SCR, buf);
  EXPECT_EQ(buf[0], std::byte{0x11});
  EXPECT_EQ(buf[1], std::byte{0});
  uart.read(SCR, {});  // an empty access is harmless
  uart.write(SCR, {});
}

TEST(Serial, ConcurrentOutputAndInputKeepEveryByte) {
  std::mutex mu;
  size_t bytes_out = 0;
  Serial uart(nullptr, [&](std::span<const std::byte> b) {
    std::lock_guard lock(mu);
    bytes_out += b.size();
  });
  constexpr int kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&] {
      const std::byte c{'.'};
      for (int i = 0; i < kPerThread; ++i) uart.write(0, std::span(&c, 1));
    });
  threads.emplace_back([&] {
    const std::byte c{'i'};
    for (int i = 0; i < kPerThread; ++i) (void)uart.enqueue_input(std::span(&c, 1));
  });
  int received = 0;
  threads.emplace_back([&] {
    for (int i = 0; i < 4 * kPerThread && received < kPerThread; ++i) {
      std::byte lsr{}, b{};
      uart.read(5, std::span(&lsr, 1));
      if (static_cast<uint8_t>(lsr) & 1) {
        uart.read(0, std::span(&b, 1));
        if (b == std::byte{'i'}) ++received;
      }
    }
  });
  for (auto& t : threads) t.join();
  EXPECT_EQ(bytes_out, 2u * kPerThread);
  // Whatever the reader did not drain is still queued.
  int left = 0;
  for (;;) {
    std::byte lsr{}, b{};
    uart.read(5, std::span(&lsr, 1));
    if (!(static_cast<uint8_t>(lsr) & 1)) break;
    uart.read(0, std::span(&b, 1));
    ++left;
  }
  EXPECT_EQ(received + left, kPerThread);
}

}  // namespace
}  // namespace sm::devices
