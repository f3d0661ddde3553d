#include "devices/virtio/net.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

namespace sm::virtio {

namespace {

template <class T>
void put_le(std::span<std::byte> out, size_t off, T v) {
  std::memcpy(out.data() + off, &v, sizeof v);  // little-endian host (static_assert in queue.cc)
}
template <class T>
T get_le(std::span<const std::byte> in, size_t off) {
  T v;
  std::memcpy(&v, in.data() + off, sizeof v);
  return v;
}

// Reads an eventfd's counter so that level-triggered epoll stops reporting it. Only called
// after epoll said it is readable; EAGAIN (someone drained it first) is harmless.
void drain_eventfd(int fd) {
  uint64_t v = 0;
  ssize_t r = ::read(fd, &v, sizeof v);
  (void)r;
}

bool is_power_of_two(unsigned v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

// ---------------------------------------------------------------- header, checksum

NetHeader decode_net_header(std::span<const std::byte, kNetHdrSize> in) {
  NetHeader h;
  h.flags = get_le<uint8_t>(in, 0);
  h.gso_type = get_le<uint8_t>(in, 1);
  h.hdr_len = get_le<uint16_t>(in, 2);
  h.gso_size = get_le<uint16_t>(in, 4);
  h.csum_start = get_le<uint16_t>(in, 6);
  h.csum_offset = get_le<uint16_t>(in, 8);
  h.num_buffers = get_le<uint16_t>(in, 10);
  return h;
}

void encode_net_header(const NetHeader& h, std::span<std::byte, kNetHdrSize> out) {
  put_le(out, 0, h.flags);
  put_le(out, 1, h.gso_type);
  put_le(out, 2, h.hdr_len);
  put_le(out, 4, h.gso_size);
  put_le(out, 6, h.csum_start);
  put_le(out, 8, h.csum_offset);
  put_le(out, 10, h.num_buffers);
}

bool complete_checksum(std::span<std::byte> frame, uint16_t csum_start, uint16_t csum_offset) {
  // The 2-byte field must lie wholly inside the summed range (virtio 1.2 §5.1.6.2).
  if (csum_start >= frame.size()) return false;
  if (size_t{csum_start} + csum_offset + 2 > frame.size()) return false;
  // RFC 1071: sum of big-endian 16-bit words, an odd last byte padded with zero.
  uint64_t sum = 0;
  size_t i = csum_start;
  for (; i + 1 < frame.size(); i += 2)
    sum += (uint32_t{std::to_integer<uint8_t>(frame[i])} << 8) | std::to_integer<uint8_t>(frame[i + 1]);
  if (i < frame.size()) sum += uint32_t{std::to_integer<uint8_t>(frame[i])} << 8;
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  uint16_t csum = static_cast<uint16_t>(~sum & 0xffff);
  if (csum == 0) csum = 0xffff;  // as Linux's skb_checksum_help: UDP reads 0 as "no checksum"
  size_t at = size_t{csum_start} + csum_offset;
  frame[at] = std::byte(csum >> 8);
  frame[at + 1] = std::byte(csum & 0xff);
  return true;
}

// ---------------------------------------------------------------- life cycle

std::shared_ptr<Net> Net::create(EventLoop& loop, std::shared_ptr<net::Backend> backend, NetOptions o) {
  if (!backend) throw Error("virtio-net: no backend");
  if (o.mtu < 68 || o.mtu > net::kMaxMtu)
    throw Error(fmt::format("virtio-net: MTU {} is outside 68..{}", o.mtu, net::kMaxMtu));
  if (!is_power_of_two(o.queue_size) || o.queue_size > kMaxQueueSize)
    throw Error(fmt::format("virtio-net: queue size {} is not a power of two up to {}", o.queue_size,
                            kMaxQueueSize));
  return std::shared_ptr<Net>(new Net(loop, std::move(backend), o));
}

Net::Net(EventLoop& loop, std::shared_ptr<net::Backend> backend, NetOptions o)
    : loop_(loop), backend_(std::move(backend)), options_(o) {
  config_.assign(kNetConfigSize, std::byte{0});
  for (size_t i = 0; i < 6; ++i) config_[i] = std::byte(options_.mac[i]);
  put_le<uint16_t>(config_, 6, kNetSLinkUp);  // status: the link is always up
  put_le<uint16_t>(config_, 8, 1);            // max_virtqueue_pairs
  put_le<uint16_t>(config_, 10, static_cast<uint16_t>(options_.mtu));
  tx_buf_.resize(net::kMaxFrameLen);
}

Net::~Net() { on_machine_stopped(); }

void Net::on_machine_stopped() {
  {
    std::lock_guard lock(mutex());
    stopped_ = true;
    disarm_fds();
  }
  // Outside the device mutex (lock order: the backend may wait for its own thread): the NAT's
  // published ports close now, not when the Machine is destroyed, so clients of a stopped VM
  // are refused instead of hanging.
  backend_->shutdown();
}

uint64_t Net::device_features() const {
  return kFeatureVersion1 | kFeatureIndirectDesc | kFeatureEventIdx | kNetFCsum | kNetFGuestCsum | kNetFMtu |
         kNetFMac | kNetFMrgRxbuf | kNetFStatus;
}

void Net::on_activate() {
  try {
    arm_fds();
  } catch (const GuestError&) {
    throw;
  } catch (const std::exception& e) {
    // A host failure (epoll refused the fds): the device stays up but cannot move frames.
    spdlog::error("virtio-net: watching the backend: {}", e.what());
  }
}

void Net::on_restore() {
  on_activate();
  // The rings may hold buffers and frames the guest posted before the capture; serve them once
  // the I/O thread runs (not here: the machine is still being assembled).
  post_continuation(true);
  post_continuation(false);
}

void Net::on_reset() {
  disarm_fds();
  tx_waiting_ = false;
}

void Net::arm_fds() {
  if (armed_ || stopped_) return;
  std::weak_ptr<Net> weak = weak_from_this();
  const int rx_fd = backend_->rx_ready_fd();
  const int tx_fd = backend_->tx_ready_fd();
  loop_.add(rx_fd, EPOLLIN, [weak](uint32_t) {
    if (auto self = weak.lock()) {
      std::lock_guard lock(self->mutex());
      self->guard("receiving", &Net::on_rx_ready);
    }
  });
  try {
    // Watched for EPOLLIN only while TX waits for the backend (set_tx_wait).
    loop_.add(tx_fd, tx_waiting_ ? uint32_t{EPOLLIN} : 0u, [weak](uint32_t) {
      if (auto self = weak.lock()) {
        std::lock_guard lock(self->mutex());
        self->guard("transmitting", &Net::on_tx_ready);
      }
    });
  } catch (...) {
    loop_.remove(rx_fd);
    throw;
  }
  armed_ = true;
}

void Net::disarm_fds() {
  if (!armed_) return;
  loop_.remove(backend_->rx_ready_fd());
  loop_.remove(backend_->tx_ready_fd());
  armed_ = false;
}

void Net::set_tx_wait(bool wait) {
  if (wait == tx_waiting_) return;
  tx_waiting_ = wait;
  if (armed_) loop_.modify(backend_->tx_ready_fd(), wait ? uint32_t{EPOLLIN} : 0u);
}

void Net::guard(const char* what, void (Net::*fn)()) {
  try {
    (this->*fn)();
  } catch (const GuestError& e) {
    fail(e);
  } catch (const std::exception& e) {
    spdlog::error("virtio-net: {}: {}", what, e.what());
  }
}

void Net::post_continuation(bool tx) {
  bool& posted = tx ? tx_posted_ : rx_posted_;
  if (posted) return;
  posted = true;
  std::weak_ptr<Net> weak = weak_from_this();
  loop_.post([weak, tx] {
    if (auto self = weak.lock()) {
      std::lock_guard lock(self->mutex());
      (tx ? self->tx_posted_ : self->rx_posted_) = false;
      self->guard(tx ? "transmitting" : "receiving", tx ? &Net::process_tx : &Net::process_rx);
    }
  });
}

void Net::on_rx_ready() {
  drain_eventfd(backend_->rx_ready_fd());
  process_rx();
}

void Net::on_tx_ready() {
  drain_eventfd(backend_->tx_ready_fd());
  if (!tx_waiting_) return;
  set_tx_wait(false);
  process_tx();
}

bool Net::usable(uint16_t q) const {
  return active() && !needs_reset() && !stopped_ && q < queues_.size() && queues_[q].ready();
}

void Net::process_queue(uint16_t q) {
  if (q == 0) process_rx();
  if (q == 1) process_tx();
}

// ---------------------------------------------------------------- tx

void Net::process_tx() {
  // While the backend is full, a notification changes nothing: tx_ready_fd resumes us.
  if (!usable(1) || tx_waiting_) return;
  Queue& q = queues_[1];
  bool pushed = false;
  int n = 0;
  for (; n < kFramesPerWakeup; ++n) {
    auto chain = q.pop(*mem_);  // a malformed chain throws GuestError: DEVICE_NEEDS_RESET
    if (!chain) break;
    // Copy out first: the guest may rewrite its buffers while we look at them.
    std::span<std::byte> frame;
    bool ok = false;
    if (chain->readable_len() >= kNetHdrSize) {
      std::array<std::byte, kNetHdrSize> raw{};
      (void)chain->read(raw);
      const NetHeader h = decode_net_header(raw);
      const uint64_t len = chain->readable_remaining();
      // No GSO was offered, so anything but NONE is a driver that does not follow the spec.
      if (h.gso_type == kNetHdrGsoNone && len >= net::kMinFrameLen && len <= net::kMaxFrameLen) {
        frame = std::span(tx_buf_).first(static_cast<size_t>(len));
        (void)chain->read(frame);
        ok = !(h.flags & kNetHdrFNeedsCsum) || complete_checksum(frame, h.csum_start, h.csum_offset);
      }
    }
    if (!ok) {
      // The guest gets its buffer back either way; only the frame is lost.
      q.push_used(*mem_, chain->head(), 0);
      pushed = true;
      backend_->count_malformed_tx();
      continue;
    }
    if (!backend_->send(frame)) {
      q.undo_pop();  // taken again, whole, once the backend has room
      backend_->count_tx_queue_full();
      set_tx_wait(true);
      break;
    }
    q.push_used(*mem_, chain->head(), 0);  // the device writes nothing into a TX buffer
    pushed = true;
  }
  if (pushed) signal_used(1);
  if (n == kFramesPerWakeup && !tx_waiting_) post_continuation(true);
}

// ---------------------------------------------------------------- rx

void Net::process_rx() {
  if (!usable(0)) return;
  bool pushed = false;
  int n = 0;
  for (; n < kFramesPerWakeup; ++n) {
    auto frame = backend_->peek_rx();
    if (frame.empty()) break;
    if (frame.size() > net::kMaxFrameLen) {  // not the backend's contract; never into the guest
      backend_->pop_rx();
      backend_->count_rx_dropped();
      continue;
    }
    if (!deliver_rx(frame, pushed)) break;  // no buffers: the frame waits in the backend
  }
  if (pushed) signal_used(0);
  if (n == kFramesPerWakeup) post_continuation(false);
}

bool Net::deliver_rx(std::span<const std::byte> frame, bool& pushed) {
  Queue& q = queues_[0];
  const uint64_t need = kNetHdrSize + frame.size();
  NetHeader h;
  h.flags = (acked_features() & kNetFGuestCsum) && backend_->frames_checked() ? kNetHdrFDataValid : 0;
  h.gso_type = kNetHdrGsoNone;
  h.num_buffers = 1;
  std::array<std::byte, kNetHdrSize> raw{};

  if (!(acked_features() & kNetFMrgRxbuf)) {
    auto chain = q.pop(*mem_);
    if (!chain) return false;
    if (chain->writable_len() < need) {
      // Too small for this frame; the buffer stays on the ring for the next one.
      q.undo_pop();
      backend_->pop_rx();
      backend_->count_rx_dropped();
      return true;
    }
    encode_net_header(h, raw);
    (void)chain->write(raw);
    (void)chain->write(frame);
    q.push_used(*mem_, chain->head(), static_cast<uint32_t>(chain->bytes_written()));
    pushed = true;
    backend_->count_rx_delivered(frame.size());
    backend_->pop_rx();
    return true;
  }

  // Mergeable buffers (§5.1.6.3.2): as many chains as the frame needs, num_buffers in the first.
  std::vector<DescriptorChain> chains;
  uint64_t have = 0;
  size_t descriptors = 0;
  while (have < need) {
    auto chain = q.pop(*mem_);
    if (!chain) break;
    have += chain->writable_len();
    descriptors += chain->descriptor_count();
    chains.push_back(std::move(*chain));
  }
  if (have < need) {
    // Every buffer the ring can hold is too few: as many chains as it has slots, or chains that
    // use all its descriptors between them (a driver posting multi-descriptor buffers).
    const bool never_fits = chains.size() >= q.size() || descriptors >= q.size();
    for (size_t i = 0; i < chains.size(); ++i) q.undo_pop();
    if (!never_fits) return false;
    backend_->pop_rx();
    backend_->count_rx_dropped();
    return true;
  }
  h.num_buffers = static_cast<uint16_t>(chains.size());  // <= the queue size <= 32768
  encode_net_header(h, raw);
  size_t at = 0;
  for (std::span<const std::byte> piece : {std::span<const std::byte>(raw), frame}) {
    while (!piece.empty() && at < chains.size()) {  // have >= need: it all fits
      size_t n = chains[at].write(piece);
      piece = piece.subspan(n);
      if (!piece.empty()) ++at;  // this chain is full
    }
  }
  for (auto& c : chains) q.push_used(*mem_, c.head(), static_cast<uint32_t>(c.bytes_written()));
  pushed = true;
  backend_->count_rx_delivered(frame.size());
  backend_->pop_rx();
  return true;
}

}  // namespace sm::virtio
