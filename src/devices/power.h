// The exit device: one write-only byte at I/O port 0x501. A guest write of byte N asks the VMM to
// power the VM off with exit status N. supermachine's guests have no ACPI, so this is how our own
// guest programs (the test init, the agent) end the VM with a result: `outb(N, 0x501)`.
// Reads return 0. The callback runs on the vCPU thread that wrote the byte.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "vmm/bus.h"

namespace sm::devices {

class ExitDevice : public IoHandler {
 public:
  static constexpr uint64_t kPortCount = 1;
  explicit ExitDevice(std::function<void(uint8_t)> on_exit) : on_exit_(std::move(on_exit)) {}

  void read(uint64_t offset, std::span<std::byte> data) override;
  void write(uint64_t offset, std::span<const std::byte> data) override;

 private:
  std::function<void(uint8_t)> on_exit_;
};

}  // namespace sm::devices
