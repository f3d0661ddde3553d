// The virtio-mmio transport, version 2 (virtio 1.2 §4.2): maps the register window onto a
// VirtioDevice. The VMM adds it to the MMIO bus at some base (kSize bytes) with one interrupt
// line and tells the guest kernel about it (virtio_mmio.device=4K@BASE:IRQ on the command line).
//
// Register layout (offsets in the window, 32-bit little-endian accesses; other widths are
// ignored and read as 0, except in the configuration space at 0x100 which takes any width):
//   0x000 MagicValue "virt"  0x004 Version 2  0x008 DeviceID  0x00c VendorID
//   0x010 DeviceFeatures  0x014 DeviceFeaturesSel  0x020 DriverFeatures  0x024 DriverFeaturesSel
//   0x030 QueueSel  0x034 QueueNumMax  0x038 QueueNum  0x044 QueueReady  0x050 QueueNotify
//   0x060 InterruptStatus  0x064 InterruptACK  0x070 Status
//   0x080/0x084 QueueDesc Low/High  0x090/0x094 QueueDriver Low/High (avail ring)
//   0x0a0/0x0a4 QueueDevice Low/High (used ring)  0x0ac SHMSel  0x0b0..0x0bc SHMLen/Base (none)
//   0x0fc ConfigGeneration  0x100+ device configuration space
//
// Status state machine (virtio 1.2 §3.1.1): writing 0 resets the device; otherwise each write
// may only add the next bit: ACKNOWLEDGE, DRIVER, FEATURES_OK (accepted only if the driver's
// features are a subset of the device's and include VERSION_1; otherwise the bit stays clear
// so the driver sees the refusal), DRIVER_OK (activates the device; if a ready queue is
// misconfigured the device reports DEVICE_NEEDS_RESET instead). FAILED may be set at any time.
// Out-of-order writes are ignored and logged. DriverFeatures are accepted only between DRIVER
// and FEATURES_OK, queue registers only between FEATURES_OK and DRIVER_OK.
//
// Threading: read/write are called from any vCPU thread and queue_notify from the event loop
// thread (ioeventfd). All of them take the device's mutex (device.h) and nothing else;
// InterruptStatus is read without it.
//
// Snapshots: save_state() captures the registers, the transport's copy of the driver's queue
// configuration and the device's DeviceState; the restoring constructor rebuilds all three on a
// fresh device of the same configuration, re-activating it when it was live, with no guest
// interaction and no interrupt (a pending one is the interrupt controller's state).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "devices/virtio/device.h"
#include "devices/virtio/queue.h"
#include "vmm/bus.h"
#include "vmm/guest_memory.h"
#include "vmm/interrupt.h"

namespace sm::virtio {

// Everything an MmioTransport holds, for snapshots.
struct MmioTransportState {
  uint32_t device_id = 0;  // checked against the device handed to the restoring constructor
  uint32_t status = 0;     // as the driver wrote it (DEVICE_NEEDS_RESET is derived, not stored)
  uint32_t device_features_sel = 0;
  uint32_t driver_features_sel = 0;
  uint64_t driver_features = 0;
  uint32_t queue_sel = 0;
  uint32_t shm_sel = 0;
  bool config_broken = false;
  uint32_t interrupt_status = 0;  // InterruptStatus: kInterruptUsedBuffer | kInterruptConfigChange
  std::vector<QueueState> queues;  // the transport's own copy of the driver's configuration
  DeviceState device;

  bool operator==(const MmioTransportState&) const = default;
};

// Snapshot encoding. load_mmio_transport_state caps queue counts at kMaxSnapshotQueues and
// refuses values the transport could never hold (status bits out of order or unknown, unknown
// interrupt bits, a device live without DRIVER_OK or the reverse), with snapshot::SnapshotError.
// It does not call Decoder::finish().
void save(snapshot::Encoder& e, const MmioTransportState& s);
[[nodiscard]] MmioTransportState load_mmio_transport_state(snapshot::Decoder& d);

class MmioTransport : public IoHandler {
 public:
  static constexpr uint64_t kSize = 0x1000;
  static constexpr uint64_t kQueueNotifyOffset = 0x50;
  static constexpr uint32_t kMagic = 0x74726976;  // "virt"
  static constexpr uint32_t kVersion = 2;
  static constexpr uint32_t kVendorId = 0x4d564d53;  // "SMVM"

  // mem must outlive the transport. irq is the device's interrupt line.
  MmioTransport(GuestMemory& mem, std::shared_ptr<VirtioDevice> device,
                std::shared_ptr<Interrupt> irq);
  // Restore: the transport as saved, over a fresh device of the same configuration (never
  // activated), which is re-activated from state.device when it was live (VirtioDevice::
  // restore). Throws snapshot::SnapshotError when the state does not fit the device: another
  // device id (the message names both), queue counts or maximum sizes, features not offered.
  MmioTransport(GuestMemory& mem, std::shared_ptr<VirtioDevice> device, std::shared_ptr<Interrupt> irq,
                const MmioTransportState& state);

  // For snapshots, with the vCPUs and the I/O thread paused. Takes the device mutex.
  [[nodiscard]] MmioTransportState save_state() const;

  void read(uint64_t offset, std::span<std::byte> data) override;
  void write(uint64_t offset, std::span<const std::byte> data) override;

  // The ioeventfd path: the guest wrote q to QueueNotify. Same effect as that MMIO write.
  void queue_notify(uint16_t q);

  [[nodiscard]] VirtioDevice& device() { return *device_; }
  [[nodiscard]] size_t num_queues() const { return queues_.size(); }
  // Current Status as the driver would read it (includes DEVICE_NEEDS_RESET).
  [[nodiscard]] uint32_t status() const;

 private:
  [[nodiscard]] uint32_t read_reg(uint64_t offset);
  void write_reg(uint64_t offset, uint32_t value);
  void write_status(uint32_t value);
  void reset_locked();
  [[nodiscard]] Queue* selected_queue_for_config();

  GuestMemory& mem_;
  std::shared_ptr<VirtioDevice> device_;
  std::shared_ptr<VirtioInterrupt> interrupt_;

  // Guarded by device_->mutex().
  uint32_t status_ = 0;
  uint32_t device_features_sel_ = 0;
  uint32_t driver_features_sel_ = 0;
  uint64_t driver_features_ = 0;
  uint32_t queue_sel_ = 0;
  std::vector<Queue> queues_;  // the driver's configuration, handed to the device on DRIVER_OK
  uint32_t shm_sel_ = 0;
  bool config_broken_ = false;  // DRIVER_OK refused (bad queue): report DEVICE_NEEDS_RESET
};

}  // namespace sm::virtio
