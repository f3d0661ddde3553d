#include "devices/power.h"

#include <cstring>

namespace sm::devices {

void ExitDevice::read(uint64_t, std::span<std::byte> data) {
  std::memset(data.data(), 0, data.size());
}

void ExitDevice::write(uint64_t offset, std::span<const std::byte> data) {
  if (offset != 0 || data.empty()) return;
  if (on_exit_) on_exit_(static_cast<uint8_t>(data[0]));
}

}  // namespace sm::devices
