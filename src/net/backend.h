// The host side of a VM's network interface: what virtio-net (devices/virtio/net.h) hands
// Ethernet frames to and takes them from. A backend owns whatever talks to the outside (libslirp's
// user-mode NAT on a thread of its own, or a TAP device) and applies the VM's egress policy
// (policy.h) to every frame the guest sends, before the outside sees it.
//
// Frames are whole Ethernet frames (destination MAC first), without the virtio-net header and
// without the FCS. The device does the virtio side (headers, checksum completion, mergeable
// buffers); the backend never sees guest memory.
//
// Threads and locks: send(), peek/pop_rx() and the fds may be used from any one thread at a time
// (the device calls them with its mutex held, on the I/O thread or a vCPU thread). A backend
// guards its queues with its own mutex, which it never holds while calling into libslirp, the
// TAP fd or anything that may block; it never takes a device mutex. Lock order:
// device mutex -> backend queue mutex -> nothing. libslirp is called only on the backend's own
// thread (libslirp is not thread-safe).
//
// Snapshots: a backend has no snapshot state. A restored VM gets a fresh backend with the same
// guest addresses; connections open at capture are unknown to it, so the guest's next segment on
// one is answered with a TCP RST and the connection ends cleanly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "supermachine/network.h"

namespace sm::net {

// Largest frame either side handles: a 65520-byte MTU plus the Ethernet header (no VLAN tags).
inline constexpr size_t kMaxMtu = 65520;
inline constexpr size_t kEthHeaderLen = 14;
inline constexpr size_t kMaxFrameLen = kMaxMtu + kEthHeaderLen;
// Smallest frame accepted from the guest: an Ethernet header.
inline constexpr size_t kMinFrameLen = kEthHeaderLen;

// Per-VM counters and published ports: the public types (include/supermachine/network.h).
using NetStats = sm::NetStats;
using PortMapping = sm::PortMapping;

// A port that cannot be published (taken, not this host's address): the caller's configuration,
// not the VM or its snapshot, is at fault.
class PublishError : public Error {
 public:
  using Error::Error;
};

class Backend {
 public:
  Backend() = default;
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;
  virtual ~Backend() = default;

  // --- guest -> outside ---
  // Queues one frame from the guest (copied). Returns false, queuing nothing, when the backend's
  // transmit queue is full: the device stops taking frames from its TX ring until tx_ready_fd()
  // becomes readable. Never blocks. Frames outside [kMinFrameLen, kMaxFrameLen] are the
  // device's to refuse; a backend given one drops it and counts it as malformed.
  [[nodiscard]] virtual bool send(std::span<const std::byte> frame) = 0;
  // An eventfd that becomes readable when a send() that returned false may now succeed. The
  // device reads (drains) it and retries its TX ring.
  [[nodiscard]] virtual int tx_ready_fd() const = 0;

  // --- outside -> guest ---
  // An eventfd that becomes readable when frames for the guest are queued. The device drains it,
  // then takes frames with peek_rx()/pop_rx() while the guest has buffers.
  [[nodiscard]] virtual int rx_ready_fd() const = 0;
  // The oldest queued frame for the guest, or an empty span when none. Valid until pop_rx().
  [[nodiscard]] virtual std::span<const std::byte> peek_rx() = 0;
  // Drops the frame peek_rx() returned (delivered, or dropped by the device and counted).
  virtual void pop_rx() = 0;

  // --- ports (user-mode backend; TAP has none and throws sm::Error) ---
  // Publishes a port now. Throws PublishError when the host address:port cannot be bound (taken,
  // not an address of this host, no permission), naming it. Returns the mapping with its host
  // port filled in.
  virtual PortMapping publish(const PortMapping& m) = 0;
  // Removes a published port; false when it was not published.
  virtual bool unpublish(const PortMapping& m) = 0;
  // What is published now, with host ports filled in.
  [[nodiscard]] virtual std::vector<PortMapping> published() const = 0;

  // The MTU the guest's interface should use: the plan's in user mode, the interface's with TAP
  // (a bridge drops larger frames silently).
  [[nodiscard]] virtual unsigned mtu() const = 0;
  // True when frames for the guest have correct checksums (the backend built or checked them),
  // so the device may tell the guest it need not verify them (VIRTIO_NET_HDR_F_DATA_VALID).
  [[nodiscard]] virtual bool frames_checked() const = 0;
  // Stops moving frames and closes what the backend opened on the host (published ports, host
  // connections); publish() throws afterwards. Idempotent; called when the VM stops. Not from
  // the backend's own thread.
  virtual void shutdown() = 0;

  // The counters so far (the device's own counters are added by the device).
  [[nodiscard]] virtual NetStats stats() const = 0;
  // Called by the device when it drops a frame (malformed, rx too big): counted here so that one
  // place holds a VM's network counters.
  virtual void count_malformed_tx() = 0;
  virtual void count_tx_queue_full() = 0;
  virtual void count_rx_dropped() = 0;
  virtual void count_rx_delivered(size_t bytes) = 0;
};

}  // namespace sm::net
