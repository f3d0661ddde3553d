// The PC keyboard controller (Intel 8042) at ports 0x60 (data) and 0x64 (status/command), only as
// much as Linux's i8042 driver needs to probe it without hanging, plus the one thing we use it
// for: command 0xFE (pulse the CPU reset line), which Linux's reboot path writes, becomes the
// on_reset callback. No keyboard or mouse is attached; there is nothing to type into.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>

#include "vmm/bus.h"
#include "vmm/interrupt.h"

namespace sm::snapshot {
class Encoder;
class Decoder;
}  // namespace sm::snapshot

namespace sm::devices {

// Everything an I8042 holds, for snapshots (save_state() and the restoring constructor).
struct I8042State {
  uint8_t command_byte = 0x45;
  uint8_t output_port = 0x01;
  std::optional<uint8_t> pending_command;  // a command waiting for its data byte on port 0x60
  std::optional<uint8_t> output;           // the byte in the output buffer
  bool timeout = false;                    // status bit 6 for that byte
  bool last_write_was_command = false;     // status bit 3

  bool operator==(const I8042State&) const = default;
};

// Snapshot encoding; load_i8042_state throws snapshot::SnapshotError for a truncated or invalid
// state (a pending command that takes no data byte). It does not call Decoder::finish().
void save(snapshot::Encoder& e, const I8042State& s);
[[nodiscard]] I8042State load_i8042_state(snapshot::Decoder& d);

class I8042 : public IoHandler {
 public:
  // The bus range starts at port 0x60 and spans 5 ports (0x60..0x64); offset 0 is the data port,
  // offset 4 the status/command port. Ports 0x61..0x63 read 0.
  static constexpr uint64_t kDataOffset = 0;
  static constexpr uint64_t kCommandOffset = 4;
  static constexpr uint64_t kPortCount = 5;

  // interrupt (IRQ 1) may be null. on_reset is called (outside the lock) when the guest asks the
  // controller to reset the CPU.
  I8042(std::shared_ptr<Interrupt> interrupt, std::function<void()> on_reset);
  // Restore: a controller in exactly the saved state (throws snapshot::SnapshotError when it is
  // invalid). Raises no interrupt and does not reset: both happen only on guest writes.
  I8042(std::shared_ptr<Interrupt> interrupt, std::function<void()> on_reset, const I8042State& state);

  // For snapshots, with the vCPUs paused (takes the lock).
  [[nodiscard]] I8042State save_state() const;

  void read(uint64_t offset, std::span<std::byte> data) override;
  void write(uint64_t offset, std::span<const std::byte> data) override;

 private:
  std::shared_ptr<Interrupt> interrupt_;
  std::function<void()> on_reset_;

  mutable std::mutex mu_;
  uint8_t command_byte_ = 0x45;  // keyboard interrupt on, system flag, translate; as a BIOS leaves it
  uint8_t output_port_ = 0x01;   // bit 0: the reset line is not asserted
  std::optional<uint8_t> pending_command_;  // a command that takes a data byte on port 0x60
  std::optional<uint8_t> output_;           // byte waiting in the output buffer
  bool timeout_ = false;                    // status bit 6 for the byte in output_
  bool last_write_was_command_ = false;     // status bit 3
};

}  // namespace sm::devices
