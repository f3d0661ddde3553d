// virtio-net (virtio 1.2 §5.1): one receiveq (0) and one transmitq (1), no control queue, no
// multiqueue. Frames go to and come from a net::Backend (net/backend.h: libslirp or TAP), which
// also holds every counter.
//
// Offered: VERSION_1, MAC, MTU, STATUS (link always up), MRG_RXBUF, CSUM, GUEST_CSUM,
// INDIRECT_DESC, EVENT_IDX. No TSO/UFO/GSO, so every frame carries a header with gso_type NONE.
// The header is always struct virtio_net_hdr_v1 (12 bytes, num_buffers included: VERSION_1).
//   TX: a frame with VIRTIO_NET_HDR_F_NEEDS_CSUM gets its checksum completed here (libslirp
//       verifies checksums). A chain whose header is short, whose frame is shorter than
//       net::kMinFrameLen or longer than net::kMaxFrameLen, whose csum_start/csum_offset do not
//       fit the frame, or that asks for GSO, is returned to the guest and the frame dropped and
//       counted (count_malformed_tx). A malformed descriptor chain is a GuestError, as in every
//       device (DEVICE_NEEDS_RESET).
//   RX: frames carry VIRTIO_NET_HDR_F_DATA_VALID when GUEST_CSUM was negotiated and the backend
//       vouches for its frames' checksums (Backend::frames_checked: libslirp builds its own). With MRG_RXBUF a frame spans as many chains as it needs
//       (num_buffers); without it one chain must hold header + frame or the frame is dropped.
//       With no guest buffers, frames stay in the backend until the driver adds some.
//   Backpressure: when Backend::send() refuses a frame the chain goes back on the ring and TX
//   waits for the backend's tx_ready_fd.
//   Fairness: at most kFramesPerWakeup frames per direction per call; more work is posted to the
//   EventLoop as a continuation so one busy queue cannot starve other devices on the I/O thread.
//
// Threading: the backend's two eventfds are watched on the EventLoop while the device is active;
// those callbacks and the posted continuations take the device mutex (device.h) and call the
// backend with it held (lock order: device mutex -> backend queue mutex / EventLoop mutex).
// The EventLoop must outlive the device; the destructor and on_machine_stopped() remove the fds.
//
// Snapshots: the device's own state is its configuration (MAC, MTU, link status), all from
// NetOptions; VirtioDevice saves the queues. A restored device gets a fresh backend; on_restore()
// re-arms the fds and posts one pass over both queues to the loop (buffers the guest posted before
// the capture are in the rings).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "devices/virtio/device.h"
#include "net/backend.h"
#include "vmm/event_loop.h"

namespace sm::virtio {

// Feature bits (virtio 1.2 §5.1.3).
inline constexpr uint64_t kNetFCsum = 1ull << 0;        // VIRTIO_NET_F_CSUM
inline constexpr uint64_t kNetFGuestCsum = 1ull << 1;   // VIRTIO_NET_F_GUEST_CSUM
inline constexpr uint64_t kNetFMtu = 1ull << 3;         // VIRTIO_NET_F_MTU
inline constexpr uint64_t kNetFMac = 1ull << 5;         // VIRTIO_NET_F_MAC
inline constexpr uint64_t kNetFMrgRxbuf = 1ull << 15;   // VIRTIO_NET_F_MRG_RXBUF
inline constexpr uint64_t kNetFStatus = 1ull << 16;     // VIRTIO_NET_F_STATUS

// struct virtio_net_hdr_v1 (§5.1.6), little-endian, 12 bytes on the wire.
inline constexpr size_t kNetHdrSize = 12;
inline constexpr uint8_t kNetHdrFNeedsCsum = 1;  // VIRTIO_NET_HDR_F_NEEDS_CSUM
inline constexpr uint8_t kNetHdrFDataValid = 2;  // VIRTIO_NET_HDR_F_DATA_VALID
inline constexpr uint8_t kNetHdrGsoNone = 0;     // VIRTIO_NET_HDR_GSO_NONE
inline constexpr uint16_t kNetSLinkUp = 1;       // VIRTIO_NET_S_LINK_UP

// Config space layout (§5.1.4): mac[6], status le16, max_virtqueue_pairs le16, mtu le16.
inline constexpr size_t kNetConfigSize = 12;

struct NetHeader {
  uint8_t flags = 0;
  uint8_t gso_type = kNetHdrGsoNone;
  uint16_t hdr_len = 0;
  uint16_t gso_size = 0;
  uint16_t csum_start = 0;
  uint16_t csum_offset = 0;
  uint16_t num_buffers = 0;

  bool operator==(const NetHeader&) const = default;
};
[[nodiscard]] NetHeader decode_net_header(std::span<const std::byte, kNetHdrSize> in);
void encode_net_header(const NetHeader& h, std::span<std::byte, kNetHdrSize> out);

// Completes a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM): the ones' complement of the ones'
// complement sum of frame[csum_start..end) is stored big-endian at csum_start + csum_offset (the
// field holds the pseudo-header sum the driver put there). A result of 0 is stored as 0xffff
// (the same value in ones' complement; 0 would mean "no checksum" to UDP). Returns false, and
// changes nothing, when csum_start/csum_offset do not fit the frame.
[[nodiscard]] bool complete_checksum(std::span<std::byte> frame, uint16_t csum_start, uint16_t csum_offset);

struct NetOptions {
  std::array<uint8_t, 6> mac{0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
  unsigned mtu = 65520;      // 68 .. net::kMaxMtu
  uint16_t queue_size = 256;  // a power of two
};

class Net final : public VirtioDevice, public std::enable_shared_from_this<Net> {
 public:
  // Frames taken per direction per call before the rest is posted to the loop.
  static constexpr int kFramesPerWakeup = 256;

  // Throws sm::Error for invalid options (MTU out of range, queue size not a power of two).
  [[nodiscard]] static std::shared_ptr<Net> create(EventLoop& loop, std::shared_ptr<net::Backend> backend,
                                                   NetOptions o = {});
  ~Net() override;

  [[nodiscard]] uint32_t device_id() const override { return kDeviceIdNet; }
  [[nodiscard]] uint64_t device_features() const override;
  [[nodiscard]] std::vector<uint16_t> queue_max_sizes() const override {
    return {options_.queue_size, options_.queue_size};
  }
  [[nodiscard]] const NetOptions& options() const { return options_; }
  // The VM's network counters (the backend holds them all). Any thread.
  [[nodiscard]] net::NetStats stats() const { return backend_->stats(); }

  // Removes the backend's fds from the loop (the device does no more work) and shuts the backend
  // down (published ports close). Takes the mutex, then calls the backend without it.
  void on_machine_stopped() override;

 protected:
  void on_activate() override;
  void on_restore() override;
  void process_queue(uint16_t q) override;
  void on_reset() override;
  [[nodiscard]] std::span<const std::byte> config_bytes() const override { return config_; }
  [[nodiscard]] std::string name() const override { return "virtio-net"; }

 private:
  Net(EventLoop& loop, std::shared_ptr<net::Backend> backend, NetOptions o);

  // All with the device mutex held.
  void arm_fds();
  void disarm_fds();
  void set_tx_wait(bool wait);
  [[nodiscard]] bool usable(uint16_t q) const;
  void process_tx();
  void process_rx();
  // One frame into guest buffers. Returns false when the guest has too few buffers for now (the
  // chains popped are back on the ring).
  [[nodiscard]] bool deliver_rx(std::span<const std::byte> frame, bool& pushed);
  void post_continuation(bool tx);
  void on_rx_ready();
  void on_tx_ready();
  void guard(const char* what, void (Net::*fn)());

  EventLoop& loop_;
  std::shared_ptr<net::Backend> backend_;
  NetOptions options_;
  std::vector<std::byte> config_;

  // Guarded by mutex().
  std::vector<std::byte> tx_buf_;  // one frame, reused (net::kMaxFrameLen at most)
  bool armed_ = false;             // the backend's fds are in the loop
  bool tx_waiting_ = false;        // send() refused a frame: wait for tx_ready_fd
  bool tx_posted_ = false;         // a TX continuation is queued on the loop
  bool rx_posted_ = false;
  bool stopped_ = false;           // on_machine_stopped(): never arm again
};

}  // namespace sm::virtio
