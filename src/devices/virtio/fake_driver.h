// Test support: a driver that talks to an MmioTransport through its registers the way Linux's
// virtio_mmio does, over queues laid out by FakeQueue. Header-only, for tests.
#pragma once

#include <atomic>
#include <cstring>
#include <vector>

#include "devices/virtio/device.h"
#include "devices/virtio/fake_queue.h"
#include "devices/virtio/mmio.h"
#include "vmm/interrupt.h"

namespace sm::virtio::testing {

struct CountingInterrupt : Interrupt {
  std::atomic<int> count{0};
  void trigger() override { ++count; }
};

inline uint32_t reg_read(MmioTransport& t, uint64_t offset) {
  uint32_t v = 0;
  t.read(offset, std::as_writable_bytes(std::span(&v, 1)));
  return v;
}
inline void reg_write(MmioTransport& t, uint64_t offset, uint32_t v) {
  t.write(offset, std::as_bytes(std::span(&v, 1)));
}

// Reset, ACKNOWLEDGE, DRIVER, features (the device's offer & mask), FEATURES_OK, one FakeQueue
// per queue (nullptr leaves that queue not ready), DRIVER_OK. Returns the final Status.
inline uint32_t mmio_activate(MmioTransport& t, const std::vector<FakeQueue*>& queues,
                              uint64_t features_mask = ~0ull) {
  reg_write(t, 0x70, 0);
  reg_write(t, 0x70, kStatusAcknowledge);
  reg_write(t, 0x70, kStatusAcknowledge | kStatusDriver);
  uint64_t offered = 0;
  for (uint32_t sel = 0; sel < 2; ++sel) {
    reg_write(t, 0x14, sel);
    offered |= uint64_t{reg_read(t, 0x10)} << (32 * sel);
  }
  uint64_t wanted = offered & features_mask;
  for (uint32_t sel = 0; sel < 2; ++sel) {
    reg_write(t, 0x24, sel);
    reg_write(t, 0x20, static_cast<uint32_t>(wanted >> (32 * sel)));
  }
  reg_write(t, 0x70, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  for (uint32_t i = 0; i < queues.size(); ++i) {
    if (!queues[i]) continue;
    reg_write(t, 0x30, i);
    reg_write(t, 0x38, queues[i]->size());
    reg_write(t, 0x80, static_cast<uint32_t>(queues[i]->desc_addr()));
    reg_write(t, 0x84, static_cast<uint32_t>(queues[i]->desc_addr() >> 32));
    reg_write(t, 0x90, static_cast<uint32_t>(queues[i]->avail_addr()));
    reg_write(t, 0x94, static_cast<uint32_t>(queues[i]->avail_addr() >> 32));
    reg_write(t, 0xa0, static_cast<uint32_t>(queues[i]->used_addr()));
    reg_write(t, 0xa4, static_cast<uint32_t>(queues[i]->used_addr() >> 32));
    reg_write(t, 0x44, 1);
  }
  reg_write(t, 0x70, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
  return reg_read(t, 0x70);
}

}  // namespace sm::virtio::testing
