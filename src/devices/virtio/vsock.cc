#include "devices/virtio/vsock.h"

#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>

#include <spdlog/spdlog.h>

namespace sm::virtio {

namespace {

// How long a host connection may wait for its CONNECT line and then for the guest's answer.
constexpr int kConnectTimeoutSec = 2;
constexpr size_t kMaxConnectLine = 32;  // "CONNECT 4294967295\r\n" is 20 bytes
constexpr size_t kMaxConnections = 1024;
constexpr size_t kMaxControlPackets = 4096;  // RSTs waiting for rx buffers; more are dropped
// Send the guest a credit update once this much of its data went out since the last one.
constexpr uint32_t kCreditUpdateThreshold = kConnBufAlloc / 4;

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

sockaddr_un unix_addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path)
    throw Error(fmt::format("vsock: Unix socket path '{}' is longer than {} bytes", path, sizeof a.sun_path - 1));
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

}  // namespace

// ---------------------------------------------------------------- header

VsockHeader decode_vsock_header(std::span<const std::byte> b) {
  if (b.size() != kVsockHeaderSize)
    throw GuestError(fmt::format("vsock header is {} bytes, not {}", b.size(), kVsockHeaderSize));
  VsockHeader h;
  h.src_cid = get_le<uint64_t>(b, 0);
  h.dst_cid = get_le<uint64_t>(b, 8);
  h.src_port = get_le<uint32_t>(b, 16);
  h.dst_port = get_le<uint32_t>(b, 20);
  h.len = get_le<uint32_t>(b, 24);
  h.type = get_le<uint16_t>(b, 28);
  h.op = get_le<uint16_t>(b, 30);
  h.flags = get_le<uint32_t>(b, 32);
  h.buf_alloc = get_le<uint32_t>(b, 36);
  h.fwd_cnt = get_le<uint32_t>(b, 40);
  return h;
}

void encode_vsock_header(const VsockHeader& h, std::span<std::byte, kVsockHeaderSize> out) {
  put_le(out, 0, h.src_cid);
  put_le(out, 8, h.dst_cid);
  put_le(out, 16, h.src_port);
  put_le(out, 20, h.dst_port);
  put_le(out, 24, h.len);
  put_le(out, 28, h.type);
  put_le(out, 30, h.op);
  put_le(out, 32, h.flags);
  put_le(out, 36, h.buf_alloc);
  put_le(out, 40, h.fwd_cnt);
}

std::optional<std::string> check_vsock_header(const VsockHeader& h, uint64_t guest_cid,
                                              uint64_t payload_available) {
  if (h.src_cid != guest_cid) return fmt::format("source CID {} is not the guest's ({})", h.src_cid, guest_cid);
  if (h.dst_cid != kVsockHostCid) return fmt::format("destination CID {} is not the host (2)", h.dst_cid);
  if (h.type != kVsockTypeStream) return fmt::format("socket type {} is not STREAM", h.type);
  if (h.op < kVsockOpRequest || h.op > kVsockOpCreditRequest) return fmt::format("unknown op {}", h.op);
  if (h.op != kVsockOpRw && h.len != 0) return fmt::format("op {} carries a {}-byte payload", h.op, h.len);
  if (h.len > kMaxPacketPayload)
    return fmt::format("payload of {} bytes exceeds the {}-byte maximum", h.len, kMaxPacketPayload);
  if (h.len > payload_available)
    return fmt::format("payload length {} exceeds the {} bytes in the buffer", h.len, payload_available);
  return std::nullopt;
}

// ---------------------------------------------------------------- connection

struct Vsock::Conn {
  enum class State {
    kAwaitConnect,  // host socket accepted, waiting for "CONNECT <port>\n"
    kLocalInit,     // REQUEST sent (or queued) to the guest, waiting for RESPONSE
    kEstablished,
  };
  uint64_t id = 0;
  Key key{0, 0};
  bool keyed = false;  // present in by_key_
  State state = State::kAwaitConnect;
  UniqueFd fd;
  bool registered = false;  // fd in the event loop
  uint32_t interest = 0;
  UniqueFd timer;

  // host socket -> guest
  uint32_t rx_cnt = 0;  // payload bytes sent to the guest
  uint32_t peer_buf_alloc = 0;
  uint32_t peer_fwd_cnt = 0;
  bool host_readable = false;  // the socket may have data we have not read yet
  bool host_eof = false;       // read() returned 0
  bool host_hup = false;       // the host closed its socket entirely (fd left the loop)

  // guest -> host socket
  std::vector<std::byte> to_host;
  size_t to_host_off = 0;
  size_t ok_line_bytes = 0;  // leading bytes of to_host that are our "OK" line, not guest data
  uint32_t fwd_cnt = 0;      // guest payload bytes written to the host socket
  uint32_t last_fwd_cnt_sent = 0;
  bool peer_shut_rcv = false;   // the guest will receive no more
  bool peer_shut_send = false;  // the guest will send no more
  bool host_write_shut = false;

  // packets owed to the guest, sent in this order
  bool need_request = false;
  bool need_response = false;
  bool need_credit_update = false;
  uint32_t need_shutdown = 0;  // flags of a SHUTDOWN to send, 0 for none
  bool shutdown_sent = false;
  bool need_rst = false;       // graceful end: RST after everything else, then forget the connection

  bool in_pending = false;
  std::string line;  // the CONNECT line read so far

  [[nodiscard]] size_t buffered() const { return to_host.size() - to_host_off; }
  [[nodiscard]] uint32_t peer_credit() const {
    uint32_t in_flight = rx_cnt - peer_fwd_cnt;
    return in_flight >= peer_buf_alloc ? 0 : peer_buf_alloc - in_flight;
  }
  [[nodiscard]] bool can_send_data() const {
    return state == State::kEstablished && host_readable && !host_eof && !peer_shut_rcv && !need_rst &&
           peer_credit() > 0;
  }
  [[nodiscard]] bool has_rx() const {
    return need_request || need_response || need_credit_update || (need_shutdown && !shutdown_sent) ||
           need_rst || can_send_data() || (host_readable && !host_eof && state == State::kEstablished &&
                                           peer_shut_rcv);
  }
};

// ---------------------------------------------------------------- life cycle

std::shared_ptr<Vsock> Vsock::create(EventLoop& loop, uint64_t guest_cid, std::string uds_path,
                                     uint16_t queue_size) {
  std::shared_ptr<Vsock> v(new Vsock(loop, guest_cid, std::move(uds_path), queue_size));
  std::weak_ptr<Vsock> weak = v;
  loop.add(v->listener_.get(), EPOLLIN, [weak](uint32_t) {
    if (auto self = weak.lock()) {
      std::lock_guard lock(self->mutex());
      self->guard("accepting a host connection", [&] { self->on_listener_ready(); });
    }
  });
  return v;
}

Vsock::Vsock(EventLoop& loop, uint64_t guest_cid, std::string uds_path, uint16_t queue_size)
    : loop_(loop), guest_cid_(guest_cid), uds_path_(std::move(uds_path)), queue_size_(queue_size) {
  // CIDs 0-2 are reserved and ~0 is VMADDR_CID_ANY (virtio 1.2 §5.10.4: guest_cid is 32 bits used).
  if (guest_cid_ < 3 || guest_cid_ >= 0xffffffffull)
    throw Error(fmt::format("vsock: guest CID {} is reserved; use 3 or more", guest_cid_));
  auto addr = unix_addr(uds_path_);
  struct stat st {};
  if (::lstat(uds_path_.c_str(), &st) == 0)
    throw Error(fmt::format("vsock: {} already exists; remove it (a stale socket from an earlier run?) "
                            "or choose another path",
                            uds_path_));
  listener_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!listener_) throw sys_error("vsock: socket");
  if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    throw sys_error(fmt::format("vsock: binding {}", uds_path_));
  if (::listen(listener_.get(), 128) != 0) {
    int err = errno;
    ::unlink(uds_path_.c_str());
    throw sys_error(fmt::format("vsock: listening on {}", uds_path_), err);
  }
  config_.assign(8, std::byte{0});  // struct virtio_vsock_config { le64 guest_cid; }
  put_le<uint64_t>(config_, 0, guest_cid_);
}

Vsock::~Vsock() { on_machine_stopped(); }

void Vsock::on_machine_stopped() {
  std::lock_guard lock(mutex());
  close_all();
  if (!listener_) return;
  loop_.remove(listener_.get());
  listener_.reset();
  ::unlink(uds_path_.c_str());
}

uint64_t Vsock::device_features() const {
  // Only VERSION_1: with no feature bits the device is STREAM only (virtio 1.2 §5.10.3).
  return kFeatureVersion1 | kFeatureIndirectDesc | kFeatureEventIdx;
}

std::span<const std::byte> Vsock::config_bytes() const { return config_; }

size_t Vsock::connection_count() const {
  std::lock_guard lock(mutex());
  return conns_.size();
}

void Vsock::guard(const char* what, const std::function<void()>& fn) {
  try {
    fn();
  } catch (const GuestError& e) {
    fail(e);
  } catch (const std::exception& e) {
    spdlog::error("virtio-vsock: {}: {}", what, e.what());
  }
}

void Vsock::on_activate() { process_rx(); }

void Vsock::on_reset() {
  // The driver forgot every connection; the host sides get EOF.
  close_all();
  control_rx_.clear();
  pending_rx_.clear();
  reset_event_pending_ = false;
}

void Vsock::close_all() {
  while (!conns_.empty()) close_conn(*conns_.begin()->second, false);
}

void Vsock::close_conn(Conn& c, bool send_rst) {
  if (send_rst && c.keyed) {
    VsockHeader h = reply_header(c, kVsockOpRst);
    queue_control(h);
  }
  if (c.registered) loop_.remove(c.fd.get());
  if (c.timer) loop_.remove(c.timer.get());
  if (c.keyed) by_key_.erase(c.key);
  conns_.erase(c.id);  // destroys c: closes the host socket
}

void Vsock::send_transport_reset() {
  std::lock_guard lock(mutex());
  close_all();
  control_rx_.clear();
  pending_rx_.clear();
  // An inactive device has no driver that could hold connections; the next one starts clean.
  reset_event_pending_ = active();
  if (active() && !needs_reset()) guard("transport reset", [&] { process_queue(2); });
}

// ---------------------------------------------------------------- queues

void Vsock::process_queue(uint16_t q) {
  switch (q) {
    case 0:  // rx: the driver added buffers
      process_rx();
      break;
    case 1:  // tx
      process_tx();
      break;
    case 2: {  // event: only VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (§5.10.6.6)
      if (!reset_event_pending_ || !queues_[2].ready()) return;
      auto chain = queues_[2].pop(*mem_);
      if (!chain) return;
      uint32_t id = kVsockEventTransportReset;
      size_t n = chain->write(std::as_bytes(std::span(&id, 1)));
      queues_[2].push_used(*mem_, chain->head(), static_cast<uint32_t>(n));
      reset_event_pending_ = false;
      signal_used(2);
      break;
    }
    default:
      break;
  }
}

VsockHeader Vsock::reply_header(const Conn& c, uint16_t op) const {
  VsockHeader h;
  h.src_cid = kVsockHostCid;
  h.dst_cid = guest_cid_;
  h.src_port = c.key.first;
  h.dst_port = c.key.second;
  h.type = kVsockTypeStream;
  h.op = op;
  h.buf_alloc = kConnBufAlloc;
  h.fwd_cnt = c.fwd_cnt;
  return h;
}

void Vsock::queue_control(const VsockHeader& h) {
  if (control_rx_.size() >= kMaxControlPackets) {
    spdlog::debug("virtio-vsock: dropping a control packet, {} already wait for rx buffers", control_rx_.size());
    return;
  }
  control_rx_.push_back(h);
}

void Vsock::mark_pending(Conn& c) {
  if (c.in_pending) return;
  c.in_pending = true;
  pending_rx_.push_back(c.id);
}

void Vsock::process_tx() {
  if (queues_.size() < 2 || !queues_[1].ready()) return;
  Queue& txq = queues_[1];
  bool pushed = false;
  while (auto chain = txq.pop(*mem_)) {
    std::array<std::byte, kVsockHeaderSize> raw{};
    if (chain->read(raw) == raw.size()) {
      handle_tx_packet(decode_vsock_header(raw), *chain);
    } else {
      spdlog::debug("virtio-vsock: tx buffer shorter than a packet header; dropped");
    }
    txq.push_used(*mem_, chain->head(), 0);
    pushed = true;
  }
  if (pushed) signal_used(1);
  process_rx();
}

void Vsock::handle_tx_packet(const VsockHeader& h, DescriptorChain& chain) {
  Key key{h.dst_port, h.src_port};
  auto it = by_key_.find(key);
  Conn* c = it == by_key_.end() ? nullptr : conns_.at(it->second).get();
  auto reset_reply = [&] {
    if (h.op == kVsockOpRst) return;  // never answer a RST with a RST
    VsockHeader r;
    r.src_cid = kVsockHostCid;
    r.dst_cid = guest_cid_;
    r.src_port = h.dst_port;
    r.dst_port = h.src_port;
    r.type = kVsockTypeStream;
    r.op = kVsockOpRst;
    queue_control(r);
  };

  if (auto err = check_vsock_header(h, guest_cid_, chain.readable_remaining())) {
    spdlog::debug("virtio-vsock: invalid packet from the guest ({}); resetting the connection", *err);
    if (c) close_conn(*c, false);
    reset_reply();
    return;
  }

  if (!c) {
    if (h.op != kVsockOpRequest) {
      reset_reply();
      return;
    }
    // Guest to host: connect to PATH_<port> (docs/vsock.md).
    if (conns_.size() >= kMaxConnections) {
      spdlog::warn("virtio-vsock: {} connections open; refusing another", conns_.size());
      reset_reply();
      return;
    }
    std::string path = fmt::format("{}_{}", uds_path_, h.dst_port);
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) throw sys_error("vsock: socket");
    sockaddr_un addr{};
    try {
      addr = unix_addr(path);
    } catch (const Error& e) {
      spdlog::debug("virtio-vsock: {}", e.what());
      reset_reply();
      return;
    }
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      spdlog::debug("virtio-vsock: guest connection to host port {}: {}: {}", h.dst_port, path,
                    std::strerror(errno));
      reset_reply();
      return;
    }
    auto conn = std::make_unique<Conn>();
    Conn& n = *conn;
    n.id = next_id_++;
    n.key = key;
    n.keyed = true;
    n.state = Conn::State::kEstablished;
    n.fd = std::move(fd);
    n.peer_buf_alloc = h.buf_alloc;
    n.peer_fwd_cnt = h.fwd_cnt;
    n.need_response = true;
    conns_.emplace(n.id, std::move(conn));
    by_key_.emplace(key, n.id);
    std::weak_ptr<Vsock> weak = weak_from_this();
    uint64_t id = n.id;
    loop_.add(n.fd.get(), 0, [weak, id](uint32_t events) {
      if (auto self = weak.lock()) {
        std::lock_guard lock(self->mutex());
        self->guard("host connection", [&] { self->on_conn_event(id, events); });
      }
    });
    n.registered = true;
    update_interest(n);
    mark_pending(n);
    return;
  }

  const uint64_t id = c->id;  // c may be closed (destroyed) by what follows
  // Every packet carries the guest's current buffer space (§5.10.6.3).
  c->peer_buf_alloc = h.buf_alloc;
  c->peer_fwd_cnt = h.fwd_cnt;

  switch (h.op) {
    case kVsockOpRequest:  // for a connection that exists
      close_conn(*c, true);
      return;
    case kVsockOpResponse:
      if (c->state != Conn::State::kLocalInit || c->need_request) {
        close_conn(*c, true);
        return;
      }
      c->state = Conn::State::kEstablished;
      if (c->timer) {
        loop_.remove(c->timer.get());
        c->timer.reset();
      }
      {
        std::string ok = fmt::format("OK {}\n", c->key.first);
        auto b = std::as_bytes(std::span(ok));
        c->to_host.insert(c->to_host.end(), b.begin(), b.end());
        c->ok_line_bytes += ok.size();
      }
      flush_to_host(*c);
      break;
    case kVsockOpRst:
      close_conn(*c, false);
      return;
    case kVsockOpShutdown:
      if (h.flags & kVsockShutdownRcv) c->peer_shut_rcv = true;
      if (h.flags & kVsockShutdownSend) c->peer_shut_send = true;
      flush_to_host(*c);  // finishes the connection when nothing is left to move
      break;
    case kVsockOpRw: {
      if (c->state != Conn::State::kEstablished || c->peer_shut_send) {
        close_conn(*c, true);
        return;
      }
      if (c->host_hup) {  // nobody on the host side reads any more
        close_conn(*c, true);
        return;
      }
      // The guest may not send more than we advertised (buf_alloc minus what is unforwarded).
      if (c->buffered() - c->ok_line_bytes + h.len > kConnBufAlloc) {
        spdlog::debug("virtio-vsock: guest exceeded its credit on port {}; resetting", c->key.first);
        close_conn(*c, true);
        return;
      }
      uint64_t left = h.len;
      if (c->buffered() == 0) {
        // Straight from guest memory to the socket when nothing is queued ahead.
        std::vector<iovec> iov;
        for (auto s : chain.readable_rest()) {
          if (left == 0) break;
          size_t take = std::min<uint64_t>(s.size(), left);
          iov.push_back({const_cast<std::byte*>(s.data()), take});
          left -= take;
        }
        left = h.len;
        msghdr msg{};
        msg.msg_iov = iov.data();
        msg.msg_iovlen = iov.size();
        ssize_t n = iov.empty() ? 0 : ::sendmsg(c->fd.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          spdlog::debug("virtio-vsock: host port {}: {}", c->key.first, std::strerror(errno));
          close_conn(*c, true);
          return;
        }
        if (n > 0) {
          chain.skip_readable(static_cast<uint64_t>(n));
          c->fwd_cnt += static_cast<uint32_t>(n);
          left -= static_cast<uint64_t>(n);
        }
      }
      if (left > 0) {
        size_t at = c->to_host.size();
        c->to_host.resize(at + left);
        (void)chain.read(std::span(c->to_host).subspan(at, left));
      }
      flush_to_host(*c);
      break;
    }
    case kVsockOpCreditUpdate:
      break;  // the credit fields above were the point
    case kVsockOpCreditRequest:
      c->need_credit_update = true;
      break;
  }
  if (conns_.count(id) == 0) return;
  update_interest(*c);
  if (c->has_rx()) mark_pending(*c);
}

void Vsock::flush_to_host(Conn& c) {
  while (c.buffered() > 0 && !c.host_hup) {
    ssize_t n = ::send(c.fd.get(), c.to_host.data() + c.to_host_off, c.buffered(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      spdlog::debug("virtio-vsock: host port {}: {}", c.key.first, std::strerror(errno));
      close_conn(c, true);
      return;
    }
    size_t sent = static_cast<size_t>(n);
    size_t ok = std::min(sent, c.ok_line_bytes);
    c.ok_line_bytes -= ok;
    c.fwd_cnt += static_cast<uint32_t>(sent - ok);
    c.to_host_off += sent;
  }
  if (c.to_host_off == c.to_host.size()) {
    c.to_host.clear();
    c.to_host_off = 0;
  } else if (c.to_host_off > c.to_host.size() / 2) {
    c.to_host.erase(c.to_host.begin(), c.to_host.begin() + static_cast<ptrdiff_t>(c.to_host_off));
    c.to_host_off = 0;
  }
  if (c.fwd_cnt - c.last_fwd_cnt_sent >= kCreditUpdateThreshold) c.need_credit_update = true;

  if (c.buffered() > 0 && !c.host_hup) return;
  // Everything the guest sent is out: pass its half-close on, and end the connection once
  // neither side will send again (§5.10.6.5).
  if (c.peer_shut_send && !c.host_write_shut && !c.host_hup) {
    ::shutdown(c.fd.get(), SHUT_WR);
    c.host_write_shut = true;
  }
  bool guest_done = c.peer_shut_send && c.peer_shut_rcv;
  bool both_done = c.peer_shut_send && c.host_eof;
  if ((guest_done || both_done) && !c.need_rst) {
    c.need_rst = true;
    c.need_credit_update = false;
  }
}

void Vsock::update_interest(Conn& c) {
  if (!c.registered) return;
  uint32_t ev = 0;
  switch (c.state) {
    case Conn::State::kAwaitConnect: ev = EPOLLIN; break;
    case Conn::State::kLocalInit: ev = 0; break;
    case Conn::State::kEstablished:
      // Read the host only while the guest can take it: back-pressure instead of buffering.
      if (!c.host_readable && !c.host_eof && !c.peer_shut_rcv && c.peer_credit() > 0) ev |= EPOLLIN;
      if (c.buffered() > 0) ev |= EPOLLOUT;
      break;
  }
  if (ev != c.interest) {
    loop_.modify(c.fd.get(), ev);
    c.interest = ev;
  }
}

// ---------------------------------------------------------------- host side events

void Vsock::on_listener_ready() {
  for (;;) {
    UniqueFd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) spdlog::warn("virtio-vsock: accept: {}", std::strerror(errno));
      return;
    }
    if (conns_.size() >= kMaxConnections) {
      spdlog::warn("virtio-vsock: {} connections open; refusing a host connection", conns_.size());
      continue;
    }
    auto conn = std::make_unique<Conn>();
    Conn& c = *conn;
    c.id = next_id_++;
    c.state = Conn::State::kAwaitConnect;
    c.fd = std::move(fd);
    c.timer.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!c.timer) throw sys_error("vsock: timerfd_create");
    itimerspec its{};
    its.it_value.tv_sec = kConnectTimeoutSec;
    if (::timerfd_settime(c.timer.get(), 0, &its, nullptr) != 0) throw sys_error("vsock: timerfd_settime");
    conns_.emplace(c.id, std::move(conn));
    std::weak_ptr<Vsock> weak = weak_from_this();
    uint64_t id = c.id;
    loop_.add(c.fd.get(), EPOLLIN, [weak, id](uint32_t events) {
      if (auto self = weak.lock()) {
        std::lock_guard lock(self->mutex());
        self->guard("host connection", [&] { self->on_conn_event(id, events); });
      }
    });
    c.registered = true;
    c.interest = EPOLLIN;
    loop_.add(c.timer.get(), EPOLLIN, [weak, id](uint32_t) {
      if (auto self = weak.lock()) {
        std::lock_guard lock(self->mutex());
        self->guard("host connection timeout", [&] { self->on_conn_timeout(id); });
      }
    });
  }
}

void Vsock::on_conn_timeout(uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  if (c.state == Conn::State::kEstablished) return;
  spdlog::debug("virtio-vsock: host connection timed out {}",
                c.state == Conn::State::kAwaitConnect ? "before its CONNECT line" : "waiting for the guest");
  bool told_guest = c.state == Conn::State::kLocalInit && !c.need_request;
  close_conn(c, told_guest);
  process_rx();
}

void Vsock::handle_connect_line(Conn& c) {
  // One byte at a time: never consume past the newline (what follows is for the guest), and a
  // partial line is taken out of the socket so level-triggered epoll does not spin on it.
  for (;;) {
    char ch;
    ssize_t n = ::recv(c.fd.get(), &ch, 1, MSG_DONTWAIT);
    if (n == 1) {
      if (ch == '\n') break;
      c.line.push_back(ch);
      if (c.line.size() > kMaxConnectLine) {
        spdlog::debug("virtio-vsock: host connection sent an over-long CONNECT line");
        close_conn(c, false);
        return;
      }
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n < 0 && errno == EINTR) continue;
    spdlog::debug("virtio-vsock: host connection closed before its CONNECT line");
    close_conn(c, false);
    return;
  }
  std::string_view l(c.line);
  if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
  constexpr std::string_view kVerb = "CONNECT ";
  uint32_t port = 0;
  bool ok = l.substr(0, kVerb.size()) == kVerb;
  if (ok) {
    auto digits = l.substr(kVerb.size());
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    ok = ec == std::errc() && end == digits.data() + digits.size() && !digits.empty();
  }
  if (!ok) {
    spdlog::debug("virtio-vsock: bad line from a host connection: '{}'", l);
    close_conn(c, false);
    return;
  }
  c.key = Key{alloc_host_port(), port};
  c.keyed = true;
  by_key_.emplace(c.key, c.id);
  c.state = Conn::State::kLocalInit;
  c.need_request = true;
  // Restart the clock: the guest has kConnectTimeoutSec to answer.
  itimerspec its{};
  its.it_value.tv_sec = kConnectTimeoutSec;
  ::timerfd_settime(c.timer.get(), 0, &its, nullptr);
  update_interest(c);
  mark_pending(c);
}

void Vsock::on_restore() {
  uint32_t r = 0;
  if (::getrandom(&r, sizeof r, 0) != sizeof r) r = static_cast<uint32_t>(next_id_ * 2654435761u);
  // The original allocated upward from 1 << 30; clones draw from [1.5 << 30, 2 << 30).
  next_host_port_ = (3u << 29) + (r % (1u << 29));
}

uint32_t Vsock::alloc_host_port() {
  for (;;) {
    uint32_t p = next_host_port_++;
    if (next_host_port_ == 0) next_host_port_ = 1u << 30;
    auto it = by_key_.lower_bound(Key{p, 0});
    if (it == by_key_.end() || it->first.first != p) return p;
  }
}

void Vsock::on_conn_event(uint64_t id, uint32_t events) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;  // a late event for a closed connection
  Conn& c = *it->second;
  if (c.state == Conn::State::kAwaitConnect) {
    handle_connect_line(c);
    process_rx();
    return;
  }
  if (c.state == Conn::State::kLocalInit) {
    if (events & (EPOLLHUP | EPOLLERR)) {  // the host gave up before the guest answered
      close_conn(c, !c.need_request);
      process_rx();
    }
    return;
  }
  if (events & EPOLLOUT) {
    flush_to_host(c);
    if (!conns_.count(id)) {
      process_rx();
      return;
    }
  }
  if (events & EPOLLIN) c.host_readable = true;
  if (events & (EPOLLHUP | EPOLLERR)) {
    // Level-triggered HUP cannot be masked: leave the loop and drain what is left from rx
    // processing (reads no longer block: data or EOF).
    c.host_hup = true;
    c.host_readable = true;
    loop_.remove(c.fd.get());
    c.registered = false;
    c.to_host.clear();
    c.to_host_off = 0;
    c.ok_line_bytes = 0;
    flush_to_host(c);
  }
  update_interest(c);
  if (c.has_rx()) mark_pending(c);
  process_rx();
}

// ---------------------------------------------------------------- rx

void Vsock::process_rx() {
  if (!active() || needs_reset() || queues_.empty() || !queues_[0].ready()) return;
  Queue& rxq = queues_[0];
  bool pushed = false;
  for (;;) {
    if (!control_rx_.empty()) {
      auto chain = rxq.pop(*mem_);
      if (!chain) break;
      if (chain->writable_len() < kVsockHeaderSize) {
        rxq.push_used(*mem_, chain->head(), 0);  // useless buffer; the driver drops it
        pushed = true;
        continue;
      }
      std::array<std::byte, kVsockHeaderSize> raw{};
      encode_vsock_header(control_rx_.front(), raw);
      (void)chain->write(raw);
      rxq.push_used(*mem_, chain->head(), kVsockHeaderSize);
      control_rx_.pop_front();
      pushed = true;
      continue;
    }
    if (pending_rx_.empty()) break;
    uint64_t id = pending_rx_.front();
    pending_rx_.pop_front();
    auto it = conns_.find(id);
    if (it == conns_.end()) continue;
    Conn& c = *it->second;
    c.in_pending = false;
    if (!c.has_rx()) {
      update_interest(c);
      continue;
    }
    auto chain = rxq.pop(*mem_);
    if (!chain) {  // no buffers: wait for the driver to add some (it notifies the rx queue)
      pending_rx_.push_front(id);
      c.in_pending = true;
      break;
    }
    if (chain->writable_len() < kVsockHeaderSize) {
      rxq.push_used(*mem_, chain->head(), 0);
      pushed = true;
      mark_pending(c);
      continue;
    }
    if (fill_rx(c, *chain)) {
      rxq.push_used(*mem_, chain->head(), static_cast<uint32_t>(chain->bytes_written()));
      pushed = true;
    } else {
      rxq.undo_pop();
    }
    auto again = conns_.find(id);
    if (again == conns_.end()) continue;
    update_interest(c);
    if (c.has_rx()) mark_pending(c);  // round robin: to the back of the line
  }
  if (pushed) signal_used(0);
}

bool Vsock::fill_rx(Conn& c, DescriptorChain& chain) {
  std::array<std::byte, kVsockHeaderSize> raw{};
  auto send_op = [&](uint16_t op, uint32_t flags = 0) {
    VsockHeader h = reply_header(c, op);
    h.flags = flags;
    encode_vsock_header(h, raw);
    (void)chain.write(raw);
    c.last_fwd_cnt_sent = c.fwd_cnt;
    c.need_credit_update = false;
  };
  if (c.need_request) {
    c.need_request = false;
    send_op(kVsockOpRequest);
    return true;
  }
  if (c.need_response) {
    c.need_response = false;
    send_op(kVsockOpResponse);
    return true;
  }
  if (c.host_readable && !c.host_eof && c.state == Conn::State::kEstablished && !c.need_rst) {
    if (c.peer_shut_rcv) {
      // The guest will not read: drain and drop what the host sends so it does not block.
      std::array<std::byte, 4096> sink;
      ssize_t n = ::recv(c.fd.get(), sink.data(), sink.size(), MSG_DONTWAIT);
      if (n > 0) return false;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        c.host_readable = false;
        return false;
      }
      c.host_eof = true;
      c.host_readable = false;
    } else if (c.peer_credit() > 0) {
      // Read the host socket straight into the guest's buffer, after room for the header.
      uint64_t max = std::min<uint64_t>({c.peer_credit(), chain.writable_len() - kVsockHeaderSize,
                                         kMaxPacketPayload});
      std::vector<iovec> iov;
      uint64_t skip = kVsockHeaderSize;
      for (auto s : chain.writable_rest(kVsockHeaderSize + max)) {
        if (skip >= s.size()) {
          skip -= s.size();
          continue;
        }
        iov.push_back({s.data() + skip, s.size() - skip});
        skip = 0;
      }
      ssize_t n = iov.empty() ? 0 : ::readv(c.fd.get(), iov.data(), static_cast<int>(iov.size()));
      if (n > 0) {
        VsockHeader h = reply_header(c, kVsockOpRw);
        h.len = static_cast<uint32_t>(n);
        encode_vsock_header(h, raw);
        (void)chain.write(raw);
        chain.skip_writable(static_cast<uint64_t>(n));
        c.rx_cnt += static_cast<uint32_t>(n);
        c.last_fwd_cnt_sent = c.fwd_cnt;
        c.need_credit_update = false;
        return true;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        c.host_readable = false;
        return false;
      }
      if (n < 0) {
        spdlog::debug("virtio-vsock: host port {}: {}", c.key.first, std::strerror(errno));
        close_conn(c, true);
        return false;
      }
      // EOF: the host will send no more (and receives no more if it closed entirely).
      c.host_eof = true;
      c.host_readable = false;
    }
    if (c.host_eof) {
      c.need_shutdown = kVsockShutdownSend | (c.host_hup ? kVsockShutdownRcv : 0);
      const uint64_t id = c.id;
      flush_to_host(c);  // may end the connection (and destroy c)
      if (!conns_.count(id)) return false;
    }
  }
  if (c.need_credit_update) {
    send_op(kVsockOpCreditUpdate);
    return true;
  }
  if (c.need_shutdown && !c.shutdown_sent) {
    c.shutdown_sent = true;
    send_op(kVsockOpShutdown, c.need_shutdown);
    return true;
  }
  if (c.need_rst) {
    send_op(kVsockOpRst);
    close_conn(c, false);
    return true;
  }
  return false;
}

}  // namespace sm::virtio
