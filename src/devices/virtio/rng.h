// virtio-rng / entropy device (virtio 1.2 §5.4): one request queue; every chain's writable
// buffers are filled from getrandom(2), at most max_bytes_per_request per chain.
// Snapshots: nothing beyond the configuration and what VirtioDevice saves (the queues).
#pragma once

#include <cstdint>
#include <vector>

#include "devices/virtio/device.h"

namespace sm::virtio {

class Rng final : public VirtioDevice {
 public:
  explicit Rng(uint32_t max_bytes_per_request = 64 * 1024, uint16_t queue_size = 256)
      : max_bytes_(max_bytes_per_request), queue_size_(queue_size) {}

  [[nodiscard]] uint32_t device_id() const override { return kDeviceIdEntropy; }
  [[nodiscard]] uint64_t device_features() const override;
  [[nodiscard]] std::vector<uint16_t> queue_max_sizes() const override { return {queue_size_}; }

 protected:
  void process_queue(uint16_t q) override;
  [[nodiscard]] std::string name() const override { return "virtio-rng"; }

 private:
  uint32_t max_bytes_;
  uint16_t queue_size_;
};

}  // namespace sm::virtio
