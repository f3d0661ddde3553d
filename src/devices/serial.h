// A 16550A UART (the PC's COM1 at port 0x3f8, 8 registers), enough for Linux's 8250 driver to
// probe it (scratch register, loopback, FIFO bits in IIR) and use it as the console.
//
// Output bytes go to a host sink; input bytes are queued from the host and raise the receive
// interrupt when the guest enabled it. The transmitter is infinitely fast: THR is always empty,
// so the "THR empty" interrupt fires whenever IER enables it and the guest writes a byte.
// Register reference: include/uapi/linux/serial_reg.h and the TI/National PC16550D data sheet.
// Called from vCPU threads and the host input path at once; one mutex guards the state, and
// the sink and the interrupt are called outside it.
//
// Output goes straight to the sink on the vCPU thread by default, so a sink that blocks (a
// stalled console reader) stalls the guest. buffer_output() switches to a bounded buffer the
// host drains from its own thread (drain_output), dropping and counting what does not fit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "vmm/bus.h"
#include "vmm/interrupt.h"

namespace sm::snapshot {
class Encoder;
class Decoder;
}  // namespace sm::snapshot

namespace sm::devices {

// Everything a Serial holds, for snapshots (save_state() and the restoring constructor). Plain
// data; the register fields hold what the guest would read back (reserved bits clear).
struct SerialState {
  uint8_t ier = 0;
  uint8_t lcr = 0;
  uint8_t mcr = 0;
  uint8_t scr = 0;
  uint8_t fcr = 0;
  uint8_t dll = 0x0c;
  uint8_t dlm = 0;
  bool thr_interrupt_pending = false;  // the latched THRE interrupt
  bool lsr_overrun = false;
  std::vector<std::byte> rx;  // input the guest has not read yet, at most Serial::kMaxPendingInput

  bool operator==(const SerialState&) const = default;
};

// Snapshot encoding. load_serial_state throws snapshot::SnapshotError for a truncated or invalid
// state (it does not call Decoder::finish(): the caller owns the section).
void save(snapshot::Encoder& e, const SerialState& s);
[[nodiscard]] SerialState load_serial_state(snapshot::Decoder& d);

class Serial : public IoHandler {
 public:
  using Sink = std::function<void(std::span<const std::byte>)>;
  // The input FIFO the guest has not drained yet holds at most this many bytes; enqueue_input
  // drops the excess (a 16550's FIFO is 16 bytes; we are generous so pasted input survives).
  static constexpr size_t kMaxPendingInput = 64 * 1024;

  // interrupt may be null (no IRQ wired, polling only); sink may be empty (output discarded).
  Serial(std::shared_ptr<Interrupt> interrupt, Sink sink);
  // Restore: a UART in exactly the saved state. Throws snapshot::SnapshotError when the state is
  // invalid. Raises no interrupt: a pending one is part of the interrupt controller's state.
  Serial(std::shared_ptr<Interrupt> interrupt, Sink sink, const SerialState& state);

  // For snapshots, with the vCPUs paused (takes the lock, so any thread may call it).
  [[nodiscard]] SerialState save_state() const;

  void read(uint64_t offset, std::span<std::byte> data) override;
  void write(uint64_t offset, std::span<const std::byte> data) override;

  // --- buffered output (opt-in) ---
  // The output buffer holds at most this many bytes; the guest's bytes beyond it are dropped.
  static constexpr size_t kMaxBufferedOutput = 256 * 1024;
  // Takes bytes for the host; returns how many it took (fewer when a non-blocking fd is full).
  using Writer = std::function<size_t(std::span<const std::byte>)>;
  // From now on the guest's bytes go to the output buffer instead of the sink, so a vCPU never
  // waits for the host console. on_output (may be empty) runs on the vCPU thread, outside the
  // lock, whenever the buffer goes from empty to non-empty: it must not block (write an eventfd,
  // post to the EventLoop). Call before any vCPU runs.
  void buffer_output(std::function<void()> on_output);
  // Hands buffered bytes to write, in order, until the buffer is empty or write takes less than
  // it was offered; returns how many it took. What write did not take stays for the next call
  // (after a partial write, on_output is not called again: wait for the fd to be writable and
  // drain again). Any thread, concurrently with vCPUs; concurrent drains take turns. write runs
  // without the UART's lock held.
  size_t drain_output(const Writer& write);
  [[nodiscard]] size_t buffered_output() const;
  // Bytes the guest wrote while the buffer was full, since construction.
  [[nodiscard]] uint64_t output_dropped() const;

  // Host -> guest bytes. Returns how many were accepted (fewer when the queue is full).
  size_t enqueue_input(std::span<const std::byte> bytes);
  // True when the guest can take more input (for back-pressure on the host's stdin).
  [[nodiscard]] bool input_space() const;
  // True while the guest driver listens for input: IER "received data available" on, MCR OUT2
  // on, loopback off. Linux sets these when the port is opened (after clearing the FIFO) and
  // drops RDI while throttled or closed, so host input offered before then would be lost: hold
  // it until this says yes.
  [[nodiscard]] bool accepting_input() const;

 private:
  uint8_t read_reg(uint64_t offset);
  // irq: an interrupt condition arose; out: a byte for the host sink.
  void write_reg(uint64_t offset, uint8_t value, bool& irq, std::optional<std::byte>& out);
  uint8_t iir_locked() const;

  std::shared_ptr<Interrupt> interrupt_;
  Sink sink_;

  std::mutex drain_mu_;  // one drain at a time; lock order: drain_mu_ -> mu_
  mutable std::mutex mu_;
  bool buffered_ = false;
  std::function<void()> on_output_;
  std::deque<std::byte> out_;  // buffered output, at most kMaxBufferedOutput bytes
  uint64_t out_dropped_ = 0;
  std::deque<std::byte> rx_;
  uint8_t ier_ = 0;
  uint8_t lcr_ = 0;
  uint8_t mcr_ = 0;
  uint8_t scr_ = 0;
  uint8_t fcr_ = 0;
  uint8_t dll_ = 0x0c;  // 9600 baud at 1.8432 MHz, what firmware leaves behind
  uint8_t dlm_ = 0;
  bool thr_interrupt_pending_ = false;  // THRE interrupt latched until IIR is read or THR written
  bool lsr_overrun_ = false;
};

}  // namespace sm::devices
