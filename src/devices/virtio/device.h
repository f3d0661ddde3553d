// A virtio 1.x device as its transport sees it (virtio 1.2 §2, §4.2 minus the registers).
//
// Devices know nothing of KVM or of how the transport encodes registers: the transport
// (mmio.h) negotiates features, collects the driver's queue configuration and calls activate();
// after that it forwards queue notifications with notify_queue(). A device may also do work on
// its own (vsock reacts to host sockets on the EventLoop thread).
//
// Locking: every device has ONE mutex, mutex(). The transport holds it for every register access
// and around every call into the device (activate, notify_queue, reset, config access); a device
// takes it in its own event-loop callbacks. Lock order: device mutex -> EventLoop's internal
// lock (add/modify/remove/post) -> nothing. Interrupt::trigger() is called with the device mutex
// held and must not take locks that are held while calling into a device.
//
// Guest errors: anything the guest controls that turns out invalid raises sm::GuestError inside
// the device. notify_queue() (and a device's own callbacks, via fail()) catch it, log it (rate
// limited: the first in full, the rest counted), set DEVICE_NEEDS_RESET and send a
// configuration-change interrupt (virtio 1.2 §2.1.2). The device then ignores its queues until
// the driver resets it. A hostile guest never crashes the VMM.
//
// Snapshots (virtio life cycle: new -> active -> [paused] -> saved; restored -> active): with
// every vCPU and the I/O thread paused, save_device_state() captures what the device holds while
// active (DeviceState); a fresh device of the same configuration is then brought back with
// restore(), which re-activates it without the driver's help. A device's own state beyond that
// (none for blk and rng; vsock drops its host connections by design) is the device's business.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "devices/virtio/queue.h"
#include "vmm/guest_memory.h"
#include "vmm/interrupt.h"

namespace sm::virtio {

// Device IDs (virtio 1.2 §5).
inline constexpr uint32_t kDeviceIdNet = 1;
inline constexpr uint32_t kDeviceIdBlock = 2;
inline constexpr uint32_t kDeviceIdEntropy = 4;
inline constexpr uint32_t kDeviceIdVsock = 19;

// Device status bits (virtio 1.2 §2.1).
inline constexpr uint32_t kStatusAcknowledge = 1;
inline constexpr uint32_t kStatusDriver = 2;
inline constexpr uint32_t kStatusDriverOk = 4;
inline constexpr uint32_t kStatusFeaturesOk = 8;
inline constexpr uint32_t kStatusDeviceNeedsReset = 0x40;
inline constexpr uint32_t kStatusFailed = 0x80;

// Interrupt reasons, as in virtio-mmio's InterruptStatus (virtio 1.2 §4.2.2).
inline constexpr uint32_t kInterruptUsedBuffer = 1;
inline constexpr uint32_t kInterruptConfigChange = 2;

// The interrupt a transport hands to its device: a reason register the driver reads and acks
// (lock-free, so the transport reads it without the device mutex) plus the line itself.
class VirtioInterrupt {
 public:
  // status: the reason bits to start with (a restored transport's InterruptStatus); setting them
  // does not trigger the line.
  explicit VirtioInterrupt(std::shared_ptr<Interrupt> line, uint32_t status = 0)
      : line_(std::move(line)), status_(status) {}
  // Sets the reason bits and triggers the line.
  void signal(uint32_t reason);
  void signal_used() { signal(kInterruptUsedBuffer); }
  void signal_config_change() { signal(kInterruptConfigChange); }
  [[nodiscard]] uint32_t status() const { return status_.load(); }
  void ack(uint32_t bits) { status_.fetch_and(~bits); }
  void clear() { status_.store(0); }

 private:
  std::shared_ptr<Interrupt> line_;
  std::atomic<uint32_t> status_{0};
};

// What VirtioDevice itself holds while active, for snapshots. Inactive: features 0, no queues.
struct DeviceState {
  bool active = false;
  bool needs_reset = false;  // broken by a guest error; stays broken after restore
  uint64_t features = 0;     // negotiated
  std::vector<QueueState> queues;  // one per queue_max_sizes() entry while active

  bool operator==(const DeviceState&) const = default;
};

// Snapshot encoding; load_device_state caps the queue count at kMaxSnapshotQueues and throws
// snapshot::SnapshotError for a truncated or invalid state. Neither calls Decoder::finish().
inline constexpr size_t kMaxSnapshotQueues = 64;
void save(snapshot::Encoder& e, const DeviceState& s);
[[nodiscard]] DeviceState load_device_state(snapshot::Decoder& d);

class VirtioDevice {
 public:
  VirtioDevice() = default;
  VirtioDevice(const VirtioDevice&) = delete;
  VirtioDevice& operator=(const VirtioDevice&) = delete;
  virtual ~VirtioDevice() = default;

  // --- what the device offers; constant for the device's life ---
  [[nodiscard]] virtual uint32_t device_id() const = 0;
  // Feature bits offered; always includes kFeatureVersion1 (no legacy interface).
  [[nodiscard]] virtual uint64_t device_features() const = 0;
  // One entry per queue: its maximum size (a power of two).
  [[nodiscard]] virtual std::vector<uint16_t> queue_max_sizes() const = 0;

  // Device-specific configuration space (virtio 1.2 §4.2.2 offset 0x100+). Reads past the end
  // yield zeros; writes to read-only fields are ignored. Called with mutex() held.
  virtual void read_config(uint64_t offset, std::span<std::byte> data);
  virtual void write_config(uint64_t offset, std::span<const std::byte> data);
  // Bumped whenever the device changes its configuration space (ConfigGeneration).
  [[nodiscard]] virtual uint32_t config_generation() const { return 0; }

  // --- called by the transport, with mutex() held ---
  // The driver set DRIVER_OK. queues has one entry per queue_max_sizes() entry, configured and
  // with the negotiated features applied; queues the driver left not ready have ready()==false.
  // The transport has validated the ready ones. The memory outlives the activation.
  void activate(GuestMemory& mem, uint64_t features, std::vector<Queue> queues,
                std::shared_ptr<VirtioInterrupt> interrupt);
  // The driver notified queue q (MMIO write or ioeventfd). Ignored unless active and healthy.
  void notify_queue(uint16_t q);
  // The driver wrote 0 to Status: stop all work, drop the queues, back to pre-activation.
  void reset();
  // Snapshot restore, in place of activate() on a fresh device (never activated, same
  // configuration as the saved one): takes the saved features and queues as they were and,
  // when s.active, re-activates through on_restore() without the driver. A device saved with
  // needs_reset comes back broken and on_restore() is not called. Throws snapshot::SnapshotError
  // when the state does not fit this device (queue count or maximum sizes, features it does not
  // offer, a ready queue whose rings are not valid in mem); a device already active is an Error.
  void restore(GuestMemory& mem, const DeviceState& s, std::shared_ptr<VirtioInterrupt> interrupt);
  // For snapshots, with the device quiescent (vCPUs and the I/O thread paused).
  [[nodiscard]] DeviceState save_device_state() const;
  // Not by the transport, and it takes mutex() itself: the machine has stopped and its threads
  // are joined, so let go of what host processes may be waiting on (vsock's connections and
  // listening socket). Machine::wait() calls it once; a second call must be harmless.
  virtual void on_machine_stopped() {}

  [[nodiscard]] bool active() const { return active_; }
  [[nodiscard]] bool needs_reset() const { return needs_reset_; }
  [[nodiscard]] uint64_t acked_features() const { return features_; }
  // The device lock (see the file comment for the lock order).
  [[nodiscard]] std::mutex& mutex() const { return mu_; }

 protected:
  // Device-specific halves of activate/notify_queue/reset, called with mutex() held.
  virtual void on_activate() {}
  // The device-specific half of restore(): the queues are back as saved. Defaults to
  // on_activate(); may throw GuestError (the device then needs a reset).
  virtual void on_restore() { on_activate(); }
  // May throw GuestError; notify_queue() turns it into DEVICE_NEEDS_RESET.
  virtual void process_queue(uint16_t q) = 0;
  virtual void on_reset() {}
  // The configuration bytes read_config() serves by default.
  [[nodiscard]] virtual std::span<const std::byte> config_bytes() const { return {}; }

  // Marks the device broken (DEVICE_NEEDS_RESET + config interrupt) and logs, rate limited.
  // For a device's own callbacks; call with mutex() held.
  void fail(const GuestError& e);
  // Interrupts the driver if it wants to hear about the used buffers of queue q.
  void signal_used(uint16_t q);
  // A human-readable name for logs ("virtio-blk", ...).
  [[nodiscard]] virtual std::string name() const = 0;

  GuestMemory* mem_ = nullptr;  // set while active
  std::vector<Queue> queues_;    // set while active
  std::shared_ptr<VirtioInterrupt> interrupt_;

 private:
  mutable std::mutex mu_;
  bool active_ = false;
  bool needs_reset_ = false;
  uint64_t features_ = 0;
  uint64_t guest_errors_ = 0;  // for rate-limited logging
};

}  // namespace sm::virtio
