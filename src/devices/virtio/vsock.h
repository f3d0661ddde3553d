// virtio-vsock (virtio 1.2 §5.10) in userspace, with the host side on Unix sockets in
// Firecracker's model (the protocol is documented in docs/vsock.md):
//   * host to guest: a host program connects to the Unix socket PATH, writes "CONNECT <port>\n",
//     and once the guest accepts gets "OK <host_port>\n" followed by the byte stream to the
//     guest's listener on <port>. If the guest refuses (or does not answer in 2 s) the socket is
//     closed without "OK".
//   * guest to host: when the guest connects to CID 2 port P, the VMM connects to the Unix
//     socket "PATH_P" and bridges the two.
//
// Queues: 0 rx (device -> driver), 1 tx (driver -> device), 2 event. Only SOCK_STREAM.
// Flow control (§5.10.6.3): each connection advertises kConnBufAlloc bytes of buffer to the
// guest and keeps data the host socket did not take yet; host data is read only while the guest
// has credit and rx buffers, so a slow side back-pressures the other instead of growing memory.
// Malformed packets from the guest (bad type or op, len larger than the buffer or than
// kMaxPacketPayload, credit violations) are answered with RST for that connection; a malformed
// descriptor chain is a GuestError (DEVICE_NEEDS_RESET).
//
// Threading: host sockets are non-blocking and driven by the EventLoop; those callbacks and
// the transport's calls all hold the device mutex (device.h). The EventLoop must outlive the
// device; create() registers the listener with it, the destructor removes everything.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/unique_fd.h"
#include "devices/virtio/device.h"
#include "vmm/event_loop.h"

namespace sm::virtio {

inline constexpr uint64_t kVsockHostCid = 2;  // VMADDR_CID_HOST
inline constexpr uint64_t kVsockDefaultGuestCid = 3;

// struct virtio_vsock_hdr (virtio 1.2 §5.10.6), little-endian, packed: 44 bytes on the wire.
struct VsockHeader {
  uint64_t src_cid = 0;
  uint64_t dst_cid = 0;
  uint32_t src_port = 0;
  uint32_t dst_port = 0;
  uint32_t len = 0;
  uint16_t type = 0;
  uint16_t op = 0;
  uint32_t flags = 0;
  uint32_t buf_alloc = 0;
  uint32_t fwd_cnt = 0;
};
inline constexpr size_t kVsockHeaderSize = 44;

inline constexpr uint16_t kVsockTypeStream = 1;
inline constexpr uint16_t kVsockOpRequest = 1;
inline constexpr uint16_t kVsockOpResponse = 2;
inline constexpr uint16_t kVsockOpRst = 3;
inline constexpr uint16_t kVsockOpShutdown = 4;
inline constexpr uint16_t kVsockOpRw = 5;
inline constexpr uint16_t kVsockOpCreditUpdate = 6;
inline constexpr uint16_t kVsockOpCreditRequest = 7;
inline constexpr uint32_t kVsockShutdownRcv = 1;
inline constexpr uint32_t kVsockShutdownSend = 2;
inline constexpr uint32_t kVsockEventTransportReset = 0;

// Largest payload the device accepts in one packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
inline constexpr uint32_t kMaxPacketPayload = 64 * 1024;
// Per-connection buffer advertised to the guest (buf_alloc).
inline constexpr uint32_t kConnBufAlloc = 256 * 1024;

// Wire encoding. decode() needs exactly kVsockHeaderSize bytes (throws GuestError otherwise).
[[nodiscard]] VsockHeader decode_vsock_header(std::span<const std::byte> bytes);
void encode_vsock_header(const VsockHeader& h, std::span<std::byte, kVsockHeaderSize> out);

// Why a header from the guest is unacceptable, or nullopt when it is fine as far as the header
// alone can tell (type STREAM, a known op, len == 0 unless op is RW, len <= kMaxPacketPayload,
// len <= payload_available). guest_cid is the device's configured CID.
[[nodiscard]] std::optional<std::string> check_vsock_header(const VsockHeader& h, uint64_t guest_cid,
                                                            uint64_t payload_available);

class Vsock final : public VirtioDevice, public std::enable_shared_from_this<Vsock> {
 public:
  // Listens on uds_path (which must not exist; the destructor removes it). Throws sm::Error.
  [[nodiscard]] static std::shared_ptr<Vsock> create(EventLoop& loop, uint64_t guest_cid,
                                                     std::string uds_path, uint16_t queue_size = 256);
  ~Vsock() override;

  [[nodiscard]] uint32_t device_id() const override { return kDeviceIdVsock; }
  [[nodiscard]] uint64_t device_features() const override;
  [[nodiscard]] std::vector<uint16_t> queue_max_sizes() const override {
    return {queue_size_, queue_size_, queue_size_};
  }
  [[nodiscard]] uint64_t guest_cid() const { return guest_cid_; }
  [[nodiscard]] const std::string& uds_path() const { return uds_path_; }
  // Open connections, for tests and diagnostics (takes the device mutex).
  [[nodiscard]] size_t connection_count() const;

  // Tells the guest all connections are gone (after a snapshot restore): closes every host
  // connection and, when the device is active, sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the
  // event queue at once if the driver left a buffer there, else as soon as it adds one (and
  // interrupts it). A driver reset drops a pending event: the driver forgot its connections
  // itself. Takes the device mutex.
  //
  // Snapshots: a vsock device has no state beyond its configuration and DeviceState (queues via
  // the transport). Host connections do not survive a restore by design; the machine calls this
  // right after restoring, before any vCPU runs. The guest CID comes from the machine's
  // configuration (guest_cid(), config space), never from the snapshot.
  void send_transport_reset();
  // Closes every connection (the host sides get EOF) and the listening socket.
  void on_machine_stopped() override;

 protected:
  void on_activate() override;
  // Nothing to resume: no connection survives a snapshot (see send_transport_reset).
  // A clone of a snapshot: no connection survives, and the guest may still hold sockets of the
  // original's connections until it has processed the transport reset. New host ports start
  // elsewhere, so a fresh REQUEST never lands on one of those stale 4-tuples.
  void on_restore() override;
  void process_queue(uint16_t q) override;
  void on_reset() override;
  [[nodiscard]] std::span<const std::byte> config_bytes() const override;
  [[nodiscard]] std::string name() const override { return "virtio-vsock"; }

 private:
  struct Conn;
  using Key = std::pair<uint32_t, uint32_t>;  // (host-side port, guest-side port)

  Vsock(EventLoop& loop, uint64_t guest_cid, std::string uds_path, uint16_t queue_size);

  // All of these run with the device mutex held.
  void on_listener_ready();
  void on_conn_event(uint64_t id, uint32_t events);
  void on_conn_timeout(uint64_t id);
  void process_tx();
  void process_rx();
  void handle_tx_packet(const VsockHeader& h, DescriptorChain& chain);
  void handle_connect_line(Conn& c);
  bool fill_rx(Conn& c, DescriptorChain& chain);
  void flush_to_host(Conn& c);
  void update_interest(Conn& c);
  void queue_control(const VsockHeader& h);
  void mark_pending(Conn& c);
  void close_conn(Conn& c, bool send_rst);
  void close_all();
  [[nodiscard]] uint32_t alloc_host_port();
  [[nodiscard]] VsockHeader reply_header(const Conn& c, uint16_t op) const;
  void guard(const char* what, const std::function<void()>& fn);

  EventLoop& loop_;
  uint64_t guest_cid_;
  std::string uds_path_;
  uint16_t queue_size_;
  UniqueFd listener_;
  std::vector<std::byte> config_;

  // Guarded by mutex().
  // Connections by a never-reused id (event-loop callbacks capture the id, not a pointer, so a
  // late event for a closed connection finds nothing) and by their address pair.
  std::map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::map<Key, uint64_t> by_key_;
  uint64_t next_id_ = 1;
  std::deque<uint64_t> pending_rx_;       // connections with something for the guest
  std::deque<VsockHeader> control_rx_;    // replies not tied to a live connection (RST)
  uint32_t next_host_port_ = 1u << 30;
  bool reset_event_pending_ = false;
};

}  // namespace sm::virtio
