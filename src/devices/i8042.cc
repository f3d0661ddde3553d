#include "devices/i8042.h"

#include <cstring>
#include <string>

#include "snapshot/codec.h"

namespace sm::devices {

namespace {

// Status register bits (drivers/input/serio/i8042.h).
constexpr uint8_t kStatusOutputFull = 0x01;
constexpr uint8_t kStatusSystemFlag = 0x04;  // set once the controller passed its self-test
constexpr uint8_t kStatusCommand = 0x08;     // the last write went to the command port
constexpr uint8_t kStatusUnlocked = 0x10;    // keyboard not inhibited
constexpr uint8_t kStatusTimeout = 0x40;     // the device did not answer
// Input buffer full (0x02) is never set: we consume every write at once, so Linux's kb_wait()
// and i8042_wait_write() never wait.

// Controller commands (port 0x64).
constexpr uint8_t kCmdReadCtr = 0x20;
constexpr uint8_t kCmdWriteCtr = 0x60;
constexpr uint8_t kCmdAuxDisable = 0xa7;
constexpr uint8_t kCmdAuxEnable = 0xa8;
constexpr uint8_t kCmdAuxTest = 0xa9;
constexpr uint8_t kCmdSelfTest = 0xaa;
constexpr uint8_t kCmdKbdTest = 0xab;
constexpr uint8_t kCmdKbdDisable = 0xad;
constexpr uint8_t kCmdKbdEnable = 0xae;
constexpr uint8_t kCmdReadOutputPort = 0xd0;
constexpr uint8_t kCmdWriteOutputPort = 0xd1;
constexpr uint8_t kCmdWriteKbdOutput = 0xd2;
constexpr uint8_t kCmdWriteAuxOutput = 0xd3;  // Linux's AUX_LOOP
constexpr uint8_t kCmdWriteAux = 0xd4;

// Command byte (CTR) bits.
constexpr uint8_t kCtrKbdInt = 0x01;
constexpr uint8_t kCtrKbdDisable = 0x10;
constexpr uint8_t kCtrAuxDisable = 0x20;

constexpr uint8_t kSelfTestOk = 0x55;
constexpr uint8_t kPortTestOk = 0x00;
constexpr uint8_t kAuxTestClockStuck = 0x02;  // "no mouse here": Linux then drops the AUX port
constexpr uint8_t kDeviceNak = 0xfe;
constexpr uint8_t kOutputPortReset = 0x01;  // output port bit 0 drives the CPU reset line (low)

// The commands write() leaves pending for a data byte.
bool takes_data_byte(uint8_t cmd) {
  return cmd == kCmdWriteCtr || cmd == kCmdWriteOutputPort || cmd == kCmdWriteKbdOutput ||
         cmd == kCmdWriteAuxOutput || cmd == kCmdWriteAux;
}

std::optional<std::string> check_state(const I8042State& s) {
  if (s.pending_command && !takes_data_byte(*s.pending_command))
    return fmt::format("i8042 pending command {:#04x} takes no data byte", *s.pending_command);
  if (s.timeout && !s.output) return "i8042 timeout bit set with an empty output buffer";
  return std::nullopt;
}

void save_optional(snapshot::Encoder& e, std::optional<uint8_t> v) {
  e.boolean(v.has_value());
  e.u8(v.value_or(0));
}

std::optional<uint8_t> load_optional(snapshot::Decoder& d) {
  bool present = d.boolean();
  uint8_t v = d.u8();
  if (!present && v != 0) d.fail("i8042: an absent byte holds a value");
  return present ? std::optional<uint8_t>(v) : std::nullopt;
}

}  // namespace

void save(snapshot::Encoder& e, const I8042State& s) {
  e.u8(s.command_byte);
  e.u8(s.output_port);
  save_optional(e, s.pending_command);
  save_optional(e, s.output);
  e.boolean(s.timeout);
  e.boolean(s.last_write_was_command);
}

I8042State load_i8042_state(snapshot::Decoder& d) {
  I8042State s;
  s.command_byte = d.u8();
  s.output_port = d.u8();
  s.pending_command = load_optional(d);
  s.output = load_optional(d);
  s.timeout = d.boolean();
  s.last_write_was_command = d.boolean();
  if (auto why = check_state(s)) d.fail(*why);
  return s;
}

I8042::I8042(std::shared_ptr<Interrupt> interrupt, std::function<void()> on_reset)
    : interrupt_(std::move(interrupt)), on_reset_(std::move(on_reset)) {}

I8042::I8042(std::shared_ptr<Interrupt> interrupt, std::function<void()> on_reset, const I8042State& state)
    : I8042(std::move(interrupt), std::move(on_reset)) {
  if (auto why = check_state(state)) throw snapshot::SnapshotError(*why);
  command_byte_ = state.command_byte;
  output_port_ = state.output_port;
  pending_command_ = state.pending_command;
  output_ = state.output;
  timeout_ = state.timeout;
  last_write_was_command_ = state.last_write_was_command;
}

I8042State I8042::save_state() const {
  std::lock_guard lock(mu_);
  return I8042State{command_byte_, output_port_, pending_command_, output_, timeout_, last_write_was_command_};
}

void I8042::read(uint64_t offset, std::span<std::byte> data) {
  if (data.empty()) return;
  std::memset(data.data(), 0, data.size());
  std::lock_guard lock(mu_);
  if (offset == kDataOffset) {
    if (output_) data[0] = std::byte{*output_};
    output_.reset();
    timeout_ = false;
  } else if (offset == kCommandOffset) {
    uint8_t status = kStatusSystemFlag | kStatusUnlocked;
    if (output_) status |= kStatusOutputFull;
    if (last_write_was_command_) status |= kStatusCommand;
    if (timeout_) status |= kStatusTimeout;
    data[0] = std::byte{status};
  }
}

void I8042::write(uint64_t offset, std::span<const std::byte> data) {
  if (data.empty()) return;
  const auto value = static_cast<uint8_t>(data[0]);
  bool reset = false;
  bool irq = false;
  {
    std::lock_guard lock(mu_);
    auto output = [&](uint8_t b, bool timeout = false) {
      output_ = b;
      timeout_ = timeout;
      if (command_byte_ & kCtrKbdInt) irq = true;
    };
    if (offset == kCommandOffset) {
      last_write_was_command_ = true;
      pending_command_.reset();
      switch (value) {
        case kCmdReadCtr: output(command_byte_); break;
        case kCmdWriteCtr:
        case kCmdWriteOutputPort:
        case kCmdWriteKbdOutput:
        case kCmdWriteAuxOutput:
        case kCmdWriteAux: pending_command_ = value; break;
        case kCmdAuxDisable: command_byte_ |= kCtrAuxDisable; break;
        case kCmdAuxEnable: command_byte_ &= ~kCtrAuxDisable; break;
        case kCmdAuxTest: output(kAuxTestClockStuck); break;
        case kCmdSelfTest: output(kSelfTestOk); break;
        case kCmdKbdTest: output(kPortTestOk); break;
        case kCmdKbdDisable: command_byte_ |= kCtrKbdDisable; break;
        case kCmdKbdEnable: command_byte_ &= ~kCtrKbdDisable; break;
        case kCmdReadOutputPort: output(output_port_); break;
        default:
          // 0xF0-0xFF pulse output port bits 0-3 low for a moment; bit 0 is the CPU reset line,
          // so every even command in that range resets. Linux's reboot path writes 0xFE
          // (arch/x86/kernel/reboot.c, BOOT_KBD).
          if ((value & 0xf0) == 0xf0 && !(value & 0x01)) reset = true;
          break;
      }
    } else if (offset == kDataOffset) {
      last_write_was_command_ = false;
      const auto cmd = pending_command_;
      pending_command_.reset();
      if (!cmd) {
        // A byte for the keyboard; none is attached, so it answers like an absent device: NAK
        // with the timeout bit, which fails Linux's atkbd probe at once instead of after its
        // timeouts.
        output(kDeviceNak, true);
      } else if (*cmd == kCmdWriteCtr) {
        command_byte_ = value;
      } else if (*cmd == kCmdWriteOutputPort) {
        output_port_ = value;
        if (!(value & kOutputPortReset)) reset = true;
      } else if (*cmd == kCmdWriteKbdOutput) {
        output(value);
      } else if (*cmd == kCmdWriteAuxOutput) {
        // There is no AUX port: the byte comes back without the AUX flag, which Linux reads as
        // "AUX loop failed", and its AUX test then reports no mouse.
        output(value);
      }
      // kCmdWriteAux: a byte for the mouse, which is not there; dropped.
    }
  }
  if (irq && interrupt_) interrupt_->trigger();
  if (reset && on_reset_) on_reset_();
}

}  // namespace sm::devices
