#include "devices/serial.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "snapshot/codec.h"

namespace sm::devices {

namespace {

// Register offsets (include/uapi/linux/serial_reg.h). DLAB (LCR bit 7) swaps offsets 0 and 1
// for the divisor latch.
constexpr uint64_t kRbrThr = 0;  // DLAB=1: DLL
constexpr uint64_t kIer = 1;     // DLAB=1: DLM
constexpr uint64_t kIirFcr = 2;
constexpr uint64_t kLcr = 3;
constexpr uint64_t kMcr = 4;
constexpr uint64_t kLsr = 5;
constexpr uint64_t kMsr = 6;
constexpr uint64_t kScr = 7;

constexpr uint8_t kIerRdi = 0x01;   // received data available
constexpr uint8_t kIerThri = 0x02;  // transmitter holding register empty
constexpr uint8_t kIerMask = 0x0f;  // a 16550A has four enable bits; the rest read 0

constexpr uint8_t kIirNoInt = 0x01;
constexpr uint8_t kIirThri = 0x02;
constexpr uint8_t kIirRdi = 0x04;
constexpr uint8_t kIirFifosEnabled = 0xc0;  // a 16550A with FIFOs on reads 11 in bits 7:6

constexpr uint8_t kFcrEnableFifo = 0x01;
constexpr uint8_t kFcrClearRcvr = 0x02;
constexpr uint8_t kFcrStored = 0xc9;  // enable, DMA mode, trigger level; the clear bits self-clear

constexpr uint8_t kLcrDlab = 0x80;

constexpr uint8_t kMcrDtr = 0x01, kMcrRts = 0x02, kMcrOut1 = 0x04, kMcrOut2 = 0x08;
constexpr uint8_t kMcrLoop = 0x10;
constexpr uint8_t kMcrMask = 0x1f;

constexpr uint8_t kLsrDr = 0x01;    // data ready
constexpr uint8_t kLsrOe = 0x02;    // overrun error
constexpr uint8_t kLsrThre = 0x20;  // THR empty
constexpr uint8_t kLsrTemt = 0x40;  // transmitter empty

constexpr uint8_t kMsrCts = 0x10, kMsrDsr = 0x20, kMsrRi = 0x40, kMsrDcd = 0x80;

// Why a state cannot be a UART's, or nullopt when it can: every register as the device itself
// would store it, and no more input than it would queue.
std::optional<std::string> check_state(const SerialState& s) {
  if (s.ier & ~kIerMask) return fmt::format("serial IER {:#04x} has reserved bits set", s.ier);
  if (s.mcr & ~kMcrMask) return fmt::format("serial MCR {:#04x} has reserved bits set", s.mcr);
  if (s.fcr & ~kFcrStored) return fmt::format("serial FCR {:#04x} holds bits that self-clear", s.fcr);
  if (s.rx.size() > Serial::kMaxPendingInput)
    return fmt::format("serial input of {} bytes exceeds the {}-byte FIFO", s.rx.size(), Serial::kMaxPendingInput);
  return std::nullopt;
}

}  // namespace

void save(snapshot::Encoder& e, const SerialState& s) {
  for (uint8_t r : {s.ier, s.lcr, s.mcr, s.scr, s.fcr, s.dll, s.dlm}) e.u8(r);
  e.boolean(s.thr_interrupt_pending);
  e.boolean(s.lsr_overrun);
  e.bytes(s.rx);
}

SerialState load_serial_state(snapshot::Decoder& d) {
  SerialState s;
  for (uint8_t* r : {&s.ier, &s.lcr, &s.mcr, &s.scr, &s.fcr, &s.dll, &s.dlm}) *r = d.u8();
  s.thr_interrupt_pending = d.boolean();
  s.lsr_overrun = d.boolean();
  s.rx = d.bytes(Serial::kMaxPendingInput);
  if (auto why = check_state(s)) d.fail(*why);
  return s;
}

Serial::Serial(std::shared_ptr<Interrupt> interrupt, Sink sink)
    : interrupt_(std::move(interrupt)), sink_(std::move(sink)) {}

Serial::Serial(std::shared_ptr<Interrupt> interrupt, Sink sink, const SerialState& state)
    : Serial(std::move(interrupt), std::move(sink)) {
  if (auto why = check_state(state)) throw snapshot::SnapshotError(*why);
  rx_.assign(state.rx.begin(), state.rx.end());
  ier_ = state.ier;
  lcr_ = state.lcr;
  mcr_ = state.mcr;
  scr_ = state.scr;
  fcr_ = state.fcr;
  dll_ = state.dll;
  dlm_ = state.dlm;
  thr_interrupt_pending_ = state.thr_interrupt_pending;
  lsr_overrun_ = state.lsr_overrun;
}

SerialState Serial::save_state() const {
  std::lock_guard lock(mu_);
  SerialState s;
  s.ier = ier_;
  s.lcr = lcr_;
  s.mcr = mcr_;
  s.scr = scr_;
  s.fcr = fcr_;
  s.dll = dll_;
  s.dlm = dlm_;
  s.thr_interrupt_pending = thr_interrupt_pending_;
  s.lsr_overrun = lsr_overrun_;
  s.rx.assign(rx_.begin(), rx_.end());
  return s;
}

uint8_t Serial::iir_locked() const {
  // Priority order of the 16550: line status, received data, THR empty, modem status. We
  // raise neither line status nor modem status interrupts.
  uint8_t id = kIirNoInt;
  if ((ier_ & kIerRdi) && !rx_.empty())
    id = kIirRdi;
  else if ((ier_ & kIerThri) && thr_interrupt_pending_)
    id = kIirThri;
  return id;
}

uint8_t Serial::read_reg(uint64_t offset) {
  const bool dlab = lcr_ & kLcrDlab;
  switch (offset) {
    case kRbrThr: {
      if (dlab) return dll_;
      if (rx_.empty()) return 0;
      const auto b = static_cast<uint8_t>(rx_.front());
      rx_.pop_front();
      return b;
    }
    case kIer:
      return dlab ? dlm_ : ier_;
    case kIirFcr: {
      uint8_t iir = iir_locked();
      // Reading IIR while it reports "THR empty" acknowledges that interrupt.
      if (iir == kIirThri) thr_interrupt_pending_ = false;
      if (fcr_ & kFcrEnableFifo) iir |= kIirFifosEnabled;
      return iir;
    }
    case kLcr:
      return lcr_;
    case kMcr:
      return mcr_;
    case kLsr: {
      // The transmitter is infinitely fast: always empty.
      uint8_t lsr = kLsrThre | kLsrTemt;
      if (!rx_.empty()) lsr |= kLsrDr;
      if (lsr_overrun_) lsr |= kLsrOe;
      lsr_overrun_ = false;  // error bits clear on read
      return lsr;
    }
    case kMsr:
      if (mcr_ & kMcrLoop) {
        // Loopback: the modem control outputs come back as the status inputs (16550D data
        // sheet, 8.6): RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD. Linux's probe checks this.
        uint8_t msr = 0;
        if (mcr_ & kMcrRts) msr |= kMsrCts;
        if (mcr_ & kMcrDtr) msr |= kMsrDsr;
        if (mcr_ & kMcrOut1) msr |= kMsrRi;
        if (mcr_ & kMcrOut2) msr |= kMsrDcd;
        return msr;
      }
      return kMsrDcd | kMsrDsr | kMsrCts;  // a connected, ready terminal
    case kScr:
      return scr_;
    default:
      return 0;
  }
}

void Serial::write_reg(uint64_t offset, uint8_t value, bool& irq, std::optional<std::byte>& out) {
  const bool dlab = lcr_ & kLcrDlab;
  switch (offset) {
    case kRbrThr:
      if (dlab) {
        dll_ = value;
        return;
      }
      if (mcr_ & kMcrLoop) {
        // Loopback: the byte goes to our own receiver, not to the line.
        if (rx_.size() < kMaxPendingInput)
          rx_.push_back(std::byte{value});
        else
          lsr_overrun_ = true;
        if (ier_ & kIerRdi) irq = true;
      } else {
        out = std::byte{value};
      }
      // Sent at once: THR is empty again, which is itself an interrupt when enabled.
      thr_interrupt_pending_ = true;
      if (ier_ & kIerThri) irq = true;
      return;
    case kIer: {
      if (dlab) {
        dlm_ = value;
        return;
      }
      const uint8_t old = ier_;
      ier_ = value & kIerMask;
      // Enabling an interrupt whose condition already holds raises it: a 16550 signals "THR
      // empty" as soon as ETBEI goes on while THR is empty (Linux's 8250 driver relies on it to
      // start transmitting, and its UART_BUG_THRE test checks it).
      if ((ier_ & kIerThri) && !(old & kIerThri)) {
        thr_interrupt_pending_ = true;
        irq = true;
      }
      if ((ier_ & kIerRdi) && !(old & kIerRdi) && !rx_.empty()) irq = true;
      return;
    }
    case kIirFcr:
      // Clearing the transmit FIFO (FCR bit 2) is a no-op: nothing ever waits to be sent.
      if (value & kFcrClearRcvr) rx_.clear();
      fcr_ = value & kFcrStored;
      return;
    case kLcr:
      lcr_ = value;
      return;
    case kMcr:
      mcr_ = value & kMcrMask;
      return;
    case kScr:
      scr_ = value;
      return;
    default:  // LSR and MSR are read-only
      return;
  }
}

void Serial::read(uint64_t offset, std::span<std::byte> data) {
  if (data.empty()) return;
  std::memset(data.data(), 0, data.size());
  std::lock_guard lock(mu_);
  data[0] = std::byte{read_reg(offset)};
}

void Serial::write(uint64_t offset, std::span<const std::byte> data) {
  if (data.empty()) return;
  bool irq = false;
  std::optional<std::byte> out;
  std::function<void()> wake;
  {
    std::lock_guard lock(mu_);
    write_reg(offset, static_cast<uint8_t>(data[0]), irq, out);
    if (out && buffered_) {
      if (out_.size() < kMaxBufferedOutput) {
        if (out_.empty()) wake = on_output_;
        out_.push_back(*out);
      } else {
        ++out_dropped_;
      }
      out.reset();
    }
  }
  // Outside the lock: the sink may block on the host side, and the host input path must not
  // wait for it. A vCPU's next register access happens only after this returns, so the guest's
  // byte order is preserved.
  if (out && sink_) sink_(std::span<const std::byte>(&*out, 1));
  if (wake) wake();
  if (irq && interrupt_) interrupt_->trigger();
}

void Serial::buffer_output(std::function<void()> on_output) {
  std::lock_guard lock(mu_);
  buffered_ = true;
  on_output_ = std::move(on_output);
}

size_t Serial::drain_output(const Writer& write) {
  constexpr size_t kChunk = 16 * 1024;
  std::lock_guard drain(drain_mu_);
  std::vector<std::byte> chunk;
  size_t total = 0;
  for (;;) {
    {
      std::lock_guard lock(mu_);
      const size_t n = std::min(out_.size(), kChunk);
      if (n == 0) break;
      chunk.assign(out_.begin(), out_.begin() + static_cast<std::ptrdiff_t>(n));
    }
    // Without mu_: vCPUs keep appending meanwhile; only this (serialized) drain removes bytes,
    // so the front of the buffer is still the chunk afterwards.
    const size_t took = std::min(write(chunk), chunk.size());
    {
      std::lock_guard lock(mu_);
      out_.erase(out_.begin(), out_.begin() + static_cast<std::ptrdiff_t>(took));
    }
    total += took;
    if (took < chunk.size()) break;
  }
  return total;
}

size_t Serial::buffered_output() const {
  std::lock_guard lock(mu_);
  return out_.size();
}

uint64_t Serial::output_dropped() const {
  std::lock_guard lock(mu_);
  return out_dropped_;
}

size_t Serial::enqueue_input(std::span<const std::byte> bytes) {
  size_t n = 0;
  bool irq = false;
  {
    std::lock_guard lock(mu_);
    n = std::min(bytes.size(), kMaxPendingInput - rx_.size());
    rx_.insert(rx_.end(), bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
    irq = n > 0 && (ier_ & kIerRdi);
  }
  if (irq && interrupt_) interrupt_->trigger();
  return n;
}

bool Serial::accepting_input() const {
  std::lock_guard lock(mu_);
  // Linux's 8250 probe writes IER = 0x0f with MCR still 0 to see whether IER exists, and its
  // loopback test runs with IER 0; only a port it has opened has OUT2 (the PC's IRQ gate) on,
  // loopback off and the receive interrupt on (8250_port.c, serial8250_do_startup).
  return (ier_ & kIerRdi) && (mcr_ & kMcrOut2) && !(mcr_ & kMcrLoop);
}

bool Serial::input_space() const {
  std::lock_guard lock(mu_);
  return rx_.size() < kMaxPendingInput;
}

}  // namespace sm::devices
