#include "devices/serial.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "snapshot/codec.h"

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

// ---------------------------------------------------------------- buffered output

struct BufferedOutputTest : SerialTest {
  int wakes = 0;
  void SetUp() override { uart.buffer_output([this] { ++wakes; }); }
  void print(const std::string& s) {
    for (char c : s) out(THR, static_cast<uint8_t>(c));
  }
  std::string drain(size_t max_per_call = SIZE_MAX) {
    std::string got;
    uart.drain_output([&](std::span<const std::byte> b) {
      const size_t n = std::min(b.size(), max_per_call);
      got.append(reinterpret_cast<const char*>(b.data()), n);
      return n;
    });
    return got;
  }
};

TEST_F(BufferedOutputTest, BytesWaitForTheHostAndWakeItOnce) {
  print("boot");
  EXPECT_EQ(output, "");  // the sink is no longer called on the vCPU thread
  EXPECT_EQ(wakes, 1);    // empty -> non-empty only
  EXPECT_EQ(uart.buffered_output(), 4u);
  EXPECT_EQ(drain(), "boot");
  EXPECT_EQ(uart.buffered_output(), 0u);
  print("ok");
  EXPECT_EQ(wakes, 2);
  EXPECT_EQ(drain(), "ok");
  EXPECT_EQ(drain(), "");
}

TEST_F(BufferedOutputTest, APartialWriteKeepsTheRestInOrder) {
  print("abcdef");
  EXPECT_EQ(drain(4), "abcd");  // the fd took 4: stop there
  print("gh");
  EXPECT_EQ(wakes, 1);  // never empty in between
  EXPECT_EQ(drain(), "efgh");
}

TEST_F(BufferedOutputTest, AStalledConsoleDropsAndCountsInsteadOfBlocking) {
  const size_t n = Serial::kMaxBufferedOutput + 100;
  for (size_t i = 0; i < n; ++i) out(THR, 'x');
  EXPECT_EQ(uart.buffered_output(), Serial::kMaxBufferedOutput);
  EXPECT_EQ(uart.output_dropped(), 100u);
  EXPECT_EQ(uart.drain_output([](std::span<const std::byte>) { return size_t{0}; }), 0u);  // still stalled
  EXPECT_EQ(drain().size(), Serial::kMaxBufferedOutput);
  print("y");
  EXPECT_EQ(drain(), "y");
  EXPECT_EQ(uart.output_dropped(), 100u);
}

TEST_F(BufferedOutputTest, DrainingWhileAVcpuPrintsLosesAndReordersNothing) {
  constexpr int kBytes = 100000;
  std::thread vcpu([&] {
    for (int i = 0; i < kBytes; ++i) out(THR, static_cast<uint8_t>('a' + i % 26));
  });
  std::string got;
  while (got.size() + uart.output_dropped() < kBytes) got += drain(1000);
  vcpu.join();
  got += drain();
  EXPECT_EQ(uart.output_dropped(), 0u);  // the drain keeps up with a buffer this big
  ASSERT_EQ(got.size(), static_cast<size_t>(kBytes));
  for (int i = 0; i < kBytes; ++i) ASSERT_EQ(got[i], static_cast<char>('a' + i % 26)) << i;
}

// ---------------------------------------------------------------- snapshots

std::vector<std::byte> encode(const SerialState& s) {
  snapshot::Encoder e;
  save(e, s);
  return e.take();
}

SerialState decode(std::span<const std::byte> data) {
  snapshot::Decoder d(data, "serial");
  SerialState s = load_serial_state(d);
  d.finish();
  return s;
}

// Drives the UART as Linux's console would (divisor, 8N1, FIFOs, interrupts on), leaves input
// pending and the THRE interrupt latched, then restores a second UART from the encoded state:
// from there both answer every register read alike.
TEST_F(SerialTest, SnapshotRoundTripBehavesIdentically) {
  out(LCR, 0x80);
  out(DLL, 0x01);
  out(DLM, 0x00);
  out(LCR, 0x03);
  out(FCR, 0x07);  // enable + clear both FIFOs: only the enable bit stays
  out(MCR, 0x0b);  // DTR | RTS | OUT2
  out(SCR, 0x5a);
  out(IER, 0x03);  // RDI | THRI: latches THRE
  feed("hello");
  out(THR, '!');   // THRE latched again after a byte

  const SerialState saved = uart.save_state();
  EXPECT_EQ(saved.rx.size(), 5u);
  EXPECT_TRUE(saved.thr_interrupt_pending);
  auto irq2 = std::make_shared<CountingInterrupt>();
  std::string output2;
  const SerialState decoded = decode(encode(saved));
  EXPECT_EQ(decoded, saved);
  Serial restored(irq2, [&](std::span<const std::byte> b) { output2.append(reinterpret_cast<const char*>(b.data()), b.size()); },
                  decoded);
  EXPECT_EQ(restored.save_state(), saved);
  EXPECT_EQ(irq2->count, 0);  // restoring raises nothing: a pending edge is the irqchip's state

  auto in2 = [&](uint64_t off) {
    std::byte b{0xaa};
    restored.read(off, std::span(&b, 1));
    return static_cast<uint8_t>(b);
  };
  EXPECT_TRUE(restored.accepting_input());
  // IIR (received data first), LSR, then the bytes themselves, then THRE, then nothing.
  for (uint64_t reg : {IIR, LSR, LCR, MCR, SCR, IER, MSR}) EXPECT_EQ(in2(reg), in(reg)) << "register " << reg;
  EXPECT_EQ(in2(IIR), 0xc4);
  std::string got;
  while (in2(LSR) & 0x01) got += static_cast<char>(in2(RBR));
  EXPECT_EQ(got, "hello");
  EXPECT_EQ(in2(IIR), 0xc2);  // THRE, and reading it acknowledges it
  EXPECT_EQ(in2(IIR), 0xc1);
  const std::byte dlab{0x80};
  restored.write(LCR, std::span(&dlab, 1));
  EXPECT_EQ(in2(DLL), 0x01);
  EXPECT_EQ(in2(DLM), 0x00);
  // Output still goes to the restored UART's own sink.
  const std::byte lcr{0x03}, c{'x'};
  restored.write(LCR, std::span(&lcr, 1));
  restored.write(THR, std::span(&c, 1));
  EXPECT_EQ(output2, "x");
}

TEST(SerialSnapshot, OverrunBitAndAFullFifoSurvive) {
  SerialState s;
  s.lsr_overrun = true;
  s.rx.assign(Serial::kMaxPendingInput, std::byte{'z'});
  Serial uart(nullptr, {}, decode(encode(s)));
  std::byte lsr{};
  uart.read(5, std::span(&lsr, 1));
  EXPECT_EQ(static_cast<uint8_t>(lsr) & 0x03, 0x03);  // DR | OE
  uart.read(5, std::span(&lsr, 1));
  EXPECT_EQ(static_cast<uint8_t>(lsr) & 0x03, 0x01);  // OE clears on read
  EXPECT_FALSE(uart.input_space());
  const std::byte more{'m'};
  EXPECT_EQ(uart.enqueue_input(std::span(&more, 1)), 0u);
}

TEST(SerialSnapshot, RefusesTruncatedAndInvalidStates) {
  SerialState s;
  s.ier = 0x01;
  s.rx = {std::byte{1}, std::byte{2}};
  const auto good = encode(s);
  for (size_t n = 0; n < good.size(); ++n)
    EXPECT_THROW((void)decode(std::span(good).first(n)), snapshot::SnapshotError) << n;
  auto longer = good;
  longer.push_back(std::byte{0});
  EXPECT_THROW((void)decode(longer), snapshot::SnapshotError);  // finish(): another shape

  auto bad_ier = good;
  bad_ier[0] = std::byte{0xff};
  EXPECT_THROW((void)decode(bad_ier), snapshot::SnapshotError);
  auto bad_bool = good;
  bad_bool[7] = std::byte{2};  // thr_interrupt_pending
  EXPECT_THROW((void)decode(bad_bool), snapshot::SnapshotError);
  auto huge = good;
  const uint32_t n = Serial::kMaxPendingInput + 1;
  std::memcpy(huge.data() + 9, &n, 4);
  EXPECT_THROW((void)decode(huge), snapshot::SnapshotError);

  SerialState too_much;
  too_much.rx.resize(Serial::kMaxPendingInput + 1);
  EXPECT_THROW(Serial(nullptr, {}, too_much), snapshot::SnapshotError);
  SerialState bad_mcr;
  bad_mcr.mcr = 0x20;
  EXPECT_THROW(Serial(nullptr, {}, bad_mcr), snapshot::SnapshotError);
}

}  // namespace
}  // namespace sm::devices
