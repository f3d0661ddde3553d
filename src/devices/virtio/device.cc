#include "devices/virtio/device.h"

#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

#include "snapshot/codec.h"

namespace sm::virtio {

void VirtioInterrupt::signal(uint32_t reason) {
  status_.fetch_or(reason);
  if (line_) line_->trigger();
}

void VirtioDevice::read_config(uint64_t offset, std::span<std::byte> data) {
  std::fill(data.begin(), data.end(), std::byte{0});
  auto cfg = config_bytes();
  if (offset >= cfg.size()) return;
  size_t n = std::min<uint64_t>(data.size(), cfg.size() - offset);
  std::memcpy(data.data(), cfg.data() + offset, n);
}

void VirtioDevice::write_config(uint64_t offset, std::span<const std::byte> data) {
  // Every field of the devices here is read-only for the driver (virtio 1.2 §5.2.4, §5.10.4).
  spdlog::debug("{}: ignoring a {}-byte write to config offset {:#x}", name(), data.size(), offset);
}

void VirtioDevice::activate(GuestMemory& mem, uint64_t features, std::vector<Queue> queues,
                            std::shared_ptr<VirtioInterrupt> interrupt) {
  mem_ = &mem;
  features_ = features;
  queues_ = std::move(queues);
  interrupt_ = std::move(interrupt);
  active_ = true;
  needs_reset_ = false;
  try {
    on_activate();
  } catch (const GuestError& e) {
    fail(e);
  }
}

void save(snapshot::Encoder& e, const DeviceState& s) {
  e.boolean(s.active);
  e.boolean(s.needs_reset);
  e.u64(s.features);
  e.count(s.queues.size());
  for (const auto& q : s.queues) save(e, q);
}

DeviceState load_device_state(snapshot::Decoder& d) {
  DeviceState s;
  s.active = d.boolean();
  s.needs_reset = d.boolean();
  s.features = d.u64();
  size_t n = d.count(kMaxSnapshotQueues, kQueueStateBytes);
  s.queues.reserve(n);
  for (size_t i = 0; i < n; ++i) s.queues.push_back(load_queue_state(d));
  if (!s.active && (s.features != 0 || !s.queues.empty()))
    d.fail("an inactive virtio device holds negotiated features or queues");
  if (s.active && !(s.features & kFeatureVersion1)) d.fail("an active virtio device without VIRTIO_F_VERSION_1");
  return s;
}

void VirtioDevice::restore(GuestMemory& mem, const DeviceState& s, std::shared_ptr<VirtioInterrupt> interrupt) {
  if (active_) throw Error(fmt::format("{}: restore into a device that is already active", name()));
  auto refuse = [&](const std::string& why) {
    throw snapshot::SnapshotError(fmt::format("{}: {}", name(), why));
  };
  if (!s.active) {
    if (s.features != 0 || !s.queues.empty()) refuse("inactive, yet with negotiated features or queues");
    needs_reset_ = s.needs_reset;
    return;
  }
  if (s.features & ~device_features())
    refuse(fmt::format("saved features {:#x} are not all offered ({:#x})", s.features, device_features()));
  const auto max_sizes = queue_max_sizes();
  if (s.queues.size() != max_sizes.size())
    refuse(fmt::format("{} queues saved, the device has {}", s.queues.size(), max_sizes.size()));
  std::vector<Queue> queues;
  queues.reserve(s.queues.size());
  for (size_t i = 0; i < s.queues.size(); ++i) {
    if (s.queues[i].max_size != max_sizes[i])
      refuse(fmt::format("queue {} was saved with maximum size {}, the device has {}", i, s.queues[i].max_size,
                         max_sizes[i]));
    Queue q(s.queues[i]);
    // The transport validated a ready queue at DRIVER_OK; the device relies on that (a size of 0
    // would divide by zero), so a snapshot must not skip it.
    if (q.ready()) {
      try {
        q.validate(mem);
      } catch (const GuestError& e) {
        refuse(fmt::format("queue {}: {}", i, e.what()));
      }
    }
    queues.push_back(std::move(q));
  }
  mem_ = &mem;
  features_ = s.features;
  queues_ = std::move(queues);
  interrupt_ = std::move(interrupt);
  active_ = true;
  needs_reset_ = s.needs_reset;
  if (needs_reset_) return;  // broken before the snapshot: the driver must reset it
  try {
    on_restore();
  } catch (const GuestError& e) {
    fail(e);
  }
}

DeviceState VirtioDevice::save_device_state() const {
  DeviceState s;
  s.active = active_;
  s.needs_reset = needs_reset_;
  if (!active_) return s;
  s.features = features_;
  s.queues.reserve(queues_.size());
  for (const auto& q : queues_) s.queues.push_back(q.save_state());
  return s;
}

void VirtioDevice::notify_queue(uint16_t q) {
  if (!active_ || needs_reset_) return;
  if (q >= queues_.size() || !queues_[q].ready()) {
    ++guest_errors_;
    if (guest_errors_ <= 3) spdlog::warn("{}: driver notified queue {}, which is not set up", name(), q);
    return;
  }
  try {
    process_queue(q);
  } catch (const GuestError& e) {
    fail(e);
  } catch (const std::exception& e) {
    // A host-side failure (e.g. out of memory) must not take the vCPU thread down either.
    spdlog::error("{}: {}", name(), e.what());
    fail(GuestError(e.what()));
  }
}

void VirtioDevice::reset() {
  if (active_) on_reset();
  active_ = false;
  needs_reset_ = false;
  features_ = 0;
  queues_.clear();
  mem_ = nullptr;
  interrupt_.reset();
}

void VirtioDevice::fail(const GuestError& e) {
  // Rate limited: a hostile guest can make this happen in a loop (reset, break, reset, ...).
  ++guest_errors_;
  if (guest_errors_ <= 3 || guest_errors_ % 1000 == 0) {
    spdlog::warn("{}: invalid request from the guest: {}; the device needs a reset "
                 "(error #{})",
                 name(), e.what(), guest_errors_);
  }
  if (needs_reset_) return;
  needs_reset_ = true;
  if (interrupt_) interrupt_->signal_config_change();
}

void VirtioDevice::signal_used(uint16_t q) {
  if (!active_ || !mem_ || q >= queues_.size()) return;
  if (queues_[q].needs_notification(*mem_) && interrupt_) interrupt_->signal_used();
}

}  // namespace sm::virtio
