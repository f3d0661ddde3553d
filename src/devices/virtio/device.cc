#include "devices/virtio/device.h"

#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

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
