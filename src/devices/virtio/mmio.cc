#include "devices/virtio/mmio.h"

#include <cstring>
#include <optional>
#include <string>

#include <spdlog/spdlog.h>

#include "snapshot/codec.h"

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

std::string device_kind(uint32_t id) {
  switch (id) {
    case kDeviceIdNet: return fmt::format("{} (net)", id);
    case kDeviceIdBlock: return fmt::format("{} (block)", id);
    case kDeviceIdEntropy: return fmt::format("{} (entropy)", id);
    case kDeviceIdVsock: return fmt::format("{} (vsock)", id);
    default: return fmt::format("{}", id);
  }
}

// Why no transport could be in state s, or nullopt. What it can tell without the device.
std::optional<std::string> check_transport_state(const MmioTransportState& s) {
  if (s.status & ~(kInitBits | kStatusFailed))
    return fmt::format("virtio-mmio status {:#x} holds bits the transport never stores", s.status);
  switch (s.status & kInitBits) {
    case 0:
    case kStatusAcknowledge:
    case kStatusAcknowledge | kStatusDriver:
    case kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk:
    case kInitBits: break;
    default: return fmt::format("virtio-mmio status {:#x} skips a step of the initialization", s.status);
  }
  if (s.interrupt_status & ~(kInterruptUsedBuffer | kInterruptConfigChange))
    return fmt::format("virtio-mmio interrupt status {:#x} holds unknown bits", s.interrupt_status);
  if (s.config_broken && !(s.status & kStatusDriverOk))
    return "virtio-mmio: a refused DRIVER_OK without DRIVER_OK in the status";
  const bool live = (s.status & kStatusDriverOk) && !s.config_broken;
  if (live != s.device.active)
    return fmt::format("virtio-mmio status {:#x}{} does not match a device that is {}", s.status,
                       s.config_broken ? " (queues refused)" : "", s.device.active ? "active" : "inactive");
  if (s.device.active) {
    if (s.device.features != s.driver_features)
      return fmt::format("virtio-mmio: the device runs with features {:#x}, the driver negotiated {:#x}",
                         s.device.features, s.driver_features);
    if (s.device.queues.size() != s.queues.size())
      return fmt::format("virtio-mmio: {} device queues for {} transport queues", s.device.queues.size(),
                         s.queues.size());
  }
  if (s.queues.size() > kMaxSnapshotQueues) return fmt::format("virtio-mmio: {} queues", s.queues.size());
  return std::nullopt;
}

}  // namespace

void save(snapshot::Encoder& e, const MmioTransportState& s) {
  e.u32(s.device_id);
  e.u32(s.status);
  e.u32(s.device_features_sel);
  e.u32(s.driver_features_sel);
  e.u64(s.driver_features);
  e.u32(s.queue_sel);
  e.u32(s.shm_sel);
  e.boolean(s.config_broken);
  e.u32(s.interrupt_status);
  e.count(s.queues.size());
  for (const auto& q : s.queues) save(e, q);
  save(e, s.device);
}

MmioTransportState load_mmio_transport_state(snapshot::Decoder& d) {
  MmioTransportState s;
  s.device_id = d.u32();
  s.status = d.u32();
  s.device_features_sel = d.u32();
  s.driver_features_sel = d.u32();
  s.driver_features = d.u64();
  s.queue_sel = d.u32();
  s.shm_sel = d.u32();
  s.config_broken = d.boolean();
  s.interrupt_status = d.u32();
  size_t n = d.count(kMaxSnapshotQueues, kQueueStateBytes);
  s.queues.reserve(n);
  for (size_t i = 0; i < n; ++i) s.queues.push_back(load_queue_state(d));
  s.device = load_device_state(d);
  if (auto why = check_transport_state(s)) d.fail(*why);
  return s;
}

MmioTransport::MmioTransport(GuestMemory& mem, std::shared_ptr<VirtioDevice> device,
                             std::shared_ptr<Interrupt> irq)
    : mem_(mem), device_(std::move(device)), interrupt_(std::make_shared<VirtioInterrupt>(std::move(irq))) {
  if (!device_) throw Error("virtio-mmio: no device");
  if (!(device_->device_features() & kFeatureVersion1))
    throw Error("virtio-mmio: the device does not offer VIRTIO_F_VERSION_1");
  for (uint16_t max : device_->queue_max_sizes()) queues_.emplace_back(max);
}

MmioTransport::MmioTransport(GuestMemory& mem, std::shared_ptr<VirtioDevice> device, std::shared_ptr<Interrupt> irq,
                             const MmioTransportState& s)
    : MmioTransport(mem, std::move(device), irq) {
  if (s.device_id != device_->device_id())
    throw snapshot::SnapshotError(fmt::format("virtio-mmio: the snapshot holds device id {}, this slot has device id {}",
                                              device_kind(s.device_id), device_kind(device_->device_id())));
  if (auto why = check_transport_state(s)) throw snapshot::SnapshotError(*why);
  if (s.queues.size() != queues_.size())
    throw snapshot::SnapshotError(fmt::format("virtio-mmio device {}: {} queues saved, the device has {}",
                                              device_kind(s.device_id), s.queues.size(), queues_.size()));
  for (size_t i = 0; i < queues_.size(); ++i) {
    if (s.queues[i].max_size != queues_[i].max_size())
      throw snapshot::SnapshotError(
          fmt::format("virtio-mmio device {}: queue {} was saved with maximum size {}, the device has {}",
                      device_kind(s.device_id), i, s.queues[i].max_size, queues_[i].max_size()));
  }
  const uint64_t offered = device_->device_features();
  if ((s.status & kStatusFeaturesOk) && (s.driver_features & ~offered))
    throw snapshot::SnapshotError(fmt::format("virtio-mmio device {}: negotiated features {:#x} are not all offered "
                                              "({:#x})",
                                              device_kind(s.device_id), s.driver_features, offered));
  for (size_t i = 0; i < queues_.size(); ++i) queues_[i] = Queue(s.queues[i]);
  status_ = s.status;
  device_features_sel_ = s.device_features_sel;
  driver_features_sel_ = s.driver_features_sel;
  driver_features_ = s.driver_features;
  queue_sel_ = s.queue_sel;
  shm_sel_ = s.shm_sel;
  config_broken_ = s.config_broken;
  interrupt_ = std::make_shared<VirtioInterrupt>(std::move(irq), s.interrupt_status);
  std::lock_guard lock(device_->mutex());
  device_->restore(mem_, s.device, interrupt_);
}

MmioTransportState MmioTransport::save_state() const {
  std::lock_guard lock(device_->mutex());
  MmioTransportState s;
  s.device_id = device_->device_id();
  s.status = status_;
  s.device_features_sel = device_features_sel_;
  s.driver_features_sel = driver_features_sel_;
  s.driver_features = driver_features_;
  s.queue_sel = queue_sel_;
  s.shm_sel = shm_sel_;
  s.config_broken = config_broken_;
  s.interrupt_status = interrupt_->status();
  s.queues.reserve(queues_.size());
  for (const auto& q : queues_) s.queues.push_back(q.save_state());
  s.device = device_->save_device_state();
  return s;
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
