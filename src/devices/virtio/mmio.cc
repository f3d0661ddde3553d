#include "devices/virtio/mmio.h"

#include <cstring>

#include <spdlog/spdlog.h>

namespace sm::virtio {

namespace {

// Register offsets (virtio 1.2 §4.2.2).
enum : uint64_t {
  kMagicValue = 0x000,
  kRegVersion = 0x004,
  kDeviceId = 0x008,
  kRegVendorId = 0x00c,
  kDeviceFeatures = 0x010,
  kDeviceFeaturesSel = 0x014,
  kDriverFeatures = 0x020,
  kDriverFeaturesSel = 0x024,
  kQueueSel = 0x030,
  kQueueNumMax = 0x034,
  kQueueNum = 0x038,
  kQueueReady = 0x044,
  kQueueNotify = 0x050,
  kInterruptStatus = 0x060,
  kInterruptAck = 0x064,
  kStatus = 0x070,
  kQueueDescLow = 0x080,
  kQueueDescHigh = 0x084,
  kQueueDriverLow = 0x090,
  kQueueDriverHigh = 0x094,
  kQueueDeviceLow = 0x0a0,
  kQueueDeviceHigh = 0x0a4,
  kShmSel = 0x0ac,
  kShmLenLow = 0x0b0,
  kShmLenHigh = 0x0b4,
  kShmBaseLow = 0x0b8,
  kShmBaseHigh = 0x0bc,
  kConfigGeneration = 0x0fc,
  kConfig = 0x100,
};

constexpr uint32_t kInitBits = kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk;

void set_low(uint64_t& v, uint32_t low) { v = (v & 0xffffffff00000000ull) | low; }
void set_high(uint64_t& v, uint32_t high) { v = (v & 0xffffffffull) | (uint64_t{high} << 32); }

}  // namespace

MmioTransport::MmioTransport(GuestMemory& mem, std::shared_ptr<VirtioDevice> device,
                             std::shared_ptr<Interrupt> irq)
    : mem_(mem), device_(std::move(device)), interrupt_(std::make_shared<VirtioInterrupt>(std::move(irq))) {
  if (!device_) throw Error("virtio-mmio: no device");
  if (!(device_->device_features() & kFeatureVersion1))
    throw Error("virtio-mmio: the device does not offer VIRTIO_F_VERSION_1");
  for (uint16_t max : device_->queue_max_sizes()) queues_.emplace_back(max);
}

uint32_t MmioTransport::status() const {
  std::lock_guard lock(device_->mutex());
  uint32_t s = status_;
  if (config_broken_ || device_->needs_reset()) s |= kStatusDeviceNeedsReset;
  return s;
}

void MmioTransport::read(uint64_t offset, std::span<std::byte> data) {
  if (offset >= kConfig) {
    std::lock_guard lock(device_->mutex());
    device_->read_config(offset - kConfig, data);
    return;
  }
  std::memset(data.data(), 0, data.size());
  // §4.2.2.2: registers are read with 32-bit aligned accesses only.
  if (data.size() != 4 || offset % 4) {
    spdlog::debug("virtio-mmio: ignoring a {}-byte read at {:#x}", data.size(), offset);
    return;
  }
  uint32_t v;
  if (offset == kInterruptStatus) {
    v = interrupt_->status();
  } else {
    std::lock_guard lock(device_->mutex());
    v = read_reg(offset);
  }
  std::memcpy(data.data(), &v, 4);
}

void MmioTransport::write(uint64_t offset, std::span<const std::byte> data) {
  if (offset >= kConfig) {
    std::lock_guard lock(device_->mutex());
    device_->write_config(offset - kConfig, data);
    return;
  }
  if (data.size() != 4 || offset % 4) {
    spdlog::debug("virtio-mmio: ignoring a {}-byte write at {:#x}", data.size(), offset);
    return;
  }
  uint32_t v;
  std::memcpy(&v, data.data(), 4);
  if (offset == kInterruptAck) {
    interrupt_->ack(v);
    return;
  }
  std::lock_guard lock(device_->mutex());
  write_reg(offset, v);
}

void MmioTransport::queue_notify(uint16_t q) {
  std::lock_guard lock(device_->mutex());
  write_reg(kQueueNotify, q);
}

uint32_t MmioTransport::read_reg(uint64_t offset) {
  Queue* q = queue_sel_ < queues_.size() ? &queues_[queue_sel_] : nullptr;
  switch (offset) {
    case kMagicValue: return kMagic;
    case kRegVersion: return kVersion;
    case kDeviceId: return device_->device_id();
    case kRegVendorId: return kVendorId;
    case kDeviceFeatures: {
      uint64_t f = device_->device_features();
      if (device_features_sel_ == 0) return static_cast<uint32_t>(f);
      if (device_features_sel_ == 1) return static_cast<uint32_t>(f >> 32);
      return 0;
    }
    case kQueueNumMax: return q ? q->max_size() : 0;
    case kQueueNum: return q ? q->size() : 0;
    case kQueueReady: return q && q->ready() ? 1 : 0;
    case kStatus: {
      uint32_t s = status_;
      if (config_broken_ || device_->needs_reset()) s |= kStatusDeviceNeedsReset;
      return s;
    }
    case kQueueDescLow: return q ? static_cast<uint32_t>(q->desc_table()) : 0;
    case kQueueDescHigh: return q ? static_cast<uint32_t>(q->desc_table() >> 32) : 0;
    case kQueueDriverLow: return q ? static_cast<uint32_t>(q->avail_ring()) : 0;
    case kQueueDriverHigh: return q ? static_cast<uint32_t>(q->avail_ring() >> 32) : 0;
    case kQueueDeviceLow: return q ? static_cast<uint32_t>(q->used_ring()) : 0;
    case kQueueDeviceHigh: return q ? static_cast<uint32_t>(q->used_ring() >> 32) : 0;
    // No shared memory regions: a length of -1 says so (§4.2.2).
    case kShmLenLow:
    case kShmLenHigh:
    case kShmBaseLow:
    case kShmBaseHigh: return 0xffffffff;
    case kConfigGeneration: return device_->config_generation();
    default: return 0;
  }
}

Queue* MmioTransport::selected_queue_for_config() {
  // §4.2.3.2: the driver sets a queue up after FEATURES_OK and before DRIVER_OK, while the queue
  // is not ready. Outside that window the write is a driver bug; ignoring it keeps the device
  // consistent.
  if ((status_ & kInitBits) != (kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk)) {
    spdlog::debug("virtio-mmio: queue register written in status {:#x}; ignored", status_);
    return nullptr;
  }
  if (queue_sel_ >= queues_.size()) return nullptr;
  return &queues_[queue_sel_];
}

void MmioTransport::write_reg(uint64_t offset, uint32_t v) {
  switch (offset) {
    case kDeviceFeaturesSel: device_features_sel_ = v; return;
    case kDriverFeaturesSel: driver_features_sel_ = v; return;
    case kDriverFeatures:
      // Features are negotiated between DRIVER and FEATURES_OK (§3.1.1 steps 4-5).
      if ((status_ & kInitBits) != (kStatusAcknowledge | kStatusDriver)) {
        spdlog::debug("virtio-mmio: DriverFeatures written in status {:#x}; ignored", status_);
        return;
      }
      if (driver_features_sel_ == 0) set_low(driver_features_, v);
      else if (driver_features_sel_ == 1) set_high(driver_features_, v);
      return;
    case kQueueSel: queue_sel_ = v; return;
    case kQueueNum:
    case kQueueReady:
    case kQueueDescLow:
    case kQueueDescHigh:
    case kQueueDriverLow:
    case kQueueDriverHigh:
    case kQueueDeviceLow:
    case kQueueDeviceHigh: {
      Queue* q = selected_queue_for_config();
      if (!q) return;
      if (offset == kQueueReady) {
        q->set_ready(v == 1);
        return;
      }
      if (q->ready()) return;  // §4.2.2.3: not while the queue is live
      uint64_t a;
      switch (offset) {
        // A size above the maximum (or above 16 bits) is recorded as 0 so activation refuses it.
        case kQueueNum: q->set_size(v <= q->max_size() ? static_cast<uint16_t>(v) : 0); break;
        case kQueueDescLow: a = q->desc_table(); set_low(a, v); q->set_desc_table(a); break;
        case kQueueDescHigh: a = q->desc_table(); set_high(a, v); q->set_desc_table(a); break;
        case kQueueDriverLow: a = q->avail_ring(); set_low(a, v); q->set_avail_ring(a); break;
        case kQueueDriverHigh: a = q->avail_ring(); set_high(a, v); q->set_avail_ring(a); break;
        case kQueueDeviceLow: a = q->used_ring(); set_low(a, v); q->set_used_ring(a); break;
        case kQueueDeviceHigh: a = q->used_ring(); set_high(a, v); q->set_used_ring(a); break;
      }
      return;
    }
    case kQueueNotify:
      if (!(status_ & kStatusDriverOk) || config_broken_) return;
      if (v >= queues_.size()) {
        spdlog::debug("virtio-mmio: notify for queue {} of {}; ignored", v, queues_.size());
        return;
      }
      device_->notify_queue(static_cast<uint16_t>(v));
      return;
    case kStatus: write_status(v); return;
    case kShmSel: shm_sel_ = v; return;
    default:
      spdlog::debug("virtio-mmio: write of {:#x} to read-only or unknown register {:#x}", v, offset);
      return;
  }
}

void MmioTransport::write_status(uint32_t v) {
  if (v == 0) {
    reset_locked();
    return;
  }
  // DEVICE_NEEDS_RESET is the device's bit; a driver that writes back what it read (Linux's
  // virtio_add_status does) must not be refused for it.
  v &= ~kStatusDeviceNeedsReset;
  if (v & kStatusFailed) {
    // The driver gave up (§2.1.1); keep everything as it is until it resets.
    status_ |= kStatusFailed;
    return;
  }
  uint32_t current = status_ & kInitBits;
  uint32_t wanted = v & kInitBits;
  if ((current & ~wanted) != 0 || (v & ~kInitBits) != 0) {
    spdlog::debug("virtio-mmio: status {:#x} -> {:#x} clears bits or sets unknown ones; ignored",
                  status_, v);
    return;
  }
  uint32_t added = wanted & ~current;
  if (added == 0) return;
  // §3.1.1: exactly one step at a time, in order.
  uint32_t expected;
  switch (current) {
    case 0: expected = kStatusAcknowledge; break;
    case kStatusAcknowledge: expected = kStatusDriver; break;
    case kStatusAcknowledge | kStatusDriver: expected = kStatusFeaturesOk; break;
    case kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk: expected = kStatusDriverOk; break;
    default: expected = 0; break;
  }
  if (added != expected) {
    spdlog::debug("virtio-mmio: status {:#x} -> {:#x} skips a step; ignored", status_, v);
    return;
  }
  if (added == kStatusFeaturesOk) {
    uint64_t offered = device_->device_features();
    if ((driver_features_ & ~offered) != 0 || !(driver_features_ & kFeatureVersion1)) {
      // Leaving FEATURES_OK clear is how the device refuses (§3.1.1 step 6).
      spdlog::warn("virtio-mmio: {} driver asked for features {:#x} of {:#x}{}; refused",
                   device_->device_id(), driver_features_, offered,
                   (driver_features_ & kFeatureVersion1) ? "" : " without VERSION_1 (legacy)");
      return;
    }
  }
  if (added == kStatusDriverOk) {
    status_ |= kStatusDriverOk;
    std::vector<Queue> qs = queues_;
    for (size_t i = 0; i < qs.size(); ++i) {
      qs[i].set_features(driver_features_);
      if (!qs[i].ready()) continue;
      try {
        qs[i].validate(mem_);
      } catch (const GuestError& e) {
        spdlog::warn("virtio-mmio: device {} queue {}: {}; the device needs a reset",
                     device_->device_id(), i, e.what());
        config_broken_ = true;
        interrupt_->signal_config_change();
        return;
      }
    }
    device_->activate(mem_, driver_features_, std::move(qs), interrupt_);
    return;
  }
  status_ |= added;
}

void MmioTransport::reset_locked() {
  device_->reset();
  status_ = 0;
  device_features_sel_ = 0;
  driver_features_sel_ = 0;
  driver_features_ = 0;
  queue_sel_ = 0;
  shm_sel_ = 0;
  config_broken_ = false;
  for (auto& q : queues_) q.reset();
  interrupt_->clear();
}

}  // namespace sm::virtio
