#include "net/slirp_backend.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <slirp/libslirp.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <future>

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/thread.h"
#include "common/unique_fd.h"
#include "net/filter.h"

namespace sm::net {

namespace {

// TX frames handed to libslirp per loop turn, so that a guest sending flat out cannot starve
// the sockets libslirp polls (the loop comes straight back when more are queued).
constexpr int kTxBudget = 256;
// A port picked for host_port 0 can be taken by someone else before libslirp binds it.
constexpr int kFreePortAttempts = 5;

in_addr parse_ipv4(const std::string& s, const char* what) {
  in_addr a{};
  if (::inet_pton(AF_INET, s.c_str(), &a) != 1) {
    throw Error(fmt::format("network: the {} '{}' is not an IPv4 address", what, s));
  }
  return a;
}

in6_addr parse_ipv6(const std::string& s, const char* what) {
  in6_addr a{};
  if (::inet_pton(AF_INET6, s.c_str(), &a) != 1) {
    throw Error(fmt::format("network: the {} '{}' is not an IPv6 address", what, s));
  }
  return a;
}

// A host address for a published port, as a socket address with port 0.
struct HostAddr {
  sockaddr_storage ss{};
  socklen_t len = 0;
  bool v6 = false;

  void set_port(uint16_t port) {
    if (v6) {
      reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port = htons(port);
    } else {
      reinterpret_cast<sockaddr_in*>(&ss)->sin_port = htons(port);
    }
  }
  [[nodiscard]] const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&ss); }
};

std::string host_ip_or_default(const std::string& ip) { return ip.empty() ? "0.0.0.0" : ip; }

HostAddr parse_host(const std::string& ip_in) {
  std::string ip = host_ip_or_default(ip_in);
  if (ip.size() > 2 && ip.front() == '[' && ip.back() == ']') ip = ip.substr(1, ip.size() - 2);
  HostAddr h;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&h.ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&h.ss);
  if (::inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    h.len = sizeof(sockaddr_in);
  } else if (::inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    h.len = sizeof(sockaddr_in6);
    h.v6 = true;
  } else {
    throw Error(fmt::format("cannot publish a port on '{}': not an IPv4 or IPv6 address", ip_in));
  }
  return h;
}

const char* proto_name(PortMapping::Protocol p) { return p == PortMapping::Protocol::udp ? "udp" : "tcp"; }

std::string describe(const std::string& ip_in, uint16_t port, PortMapping::Protocol p) {
  std::string ip = host_ip_or_default(ip_in);
  bool v6 = ip.find(':') != std::string::npos && ip.front() != '[';
  return v6 ? fmt::format("[{}]:{}/{}", ip, port, proto_name(p))
            : fmt::format("{}:{}/{}", ip, port, proto_name(p));
}

PublishError publish_error(const PortMapping& m, uint16_t port, int err) {
  return PublishError(fmt::format("cannot publish {}: the port is in use or cannot be bound ({})",
                           describe(m.host_ip, port, m.protocol),
                           err != 0 ? std::strerror(err) : "libslirp could not listen on it"));
}

// Asks the kernel for a free port on h: bind port 0, read it back, let it go. The caller binds
// it again through libslirp right away and retries if someone was quicker.
uint16_t pick_free_port(const HostAddr& h, const PortMapping& m) {
  int type = (m.protocol == PortMapping::Protocol::udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC;
  UniqueFd fd(::socket(h.ss.ss_family, type, 0));
  if (!fd) throw publish_error(m, 0, errno);
  if (h.v6) {
    int one = 1;
    (void)::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  }
  if (::bind(fd.get(), h.sa(), h.len) != 0) throw publish_error(m, 0, errno);
  sockaddr_storage got{};
  socklen_t len = sizeof got;
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&got), &len) != 0) {
    throw publish_error(m, 0, errno);
  }
  return h.v6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&got)->sin6_port)
              : ntohs(reinterpret_cast<sockaddr_in*>(&got)->sin_port);
}

bool same_port(const PortMapping& a, const PortMapping& b) {
  return a.protocol == b.protocol && host_ip_or_default(a.host_ip) == host_ip_or_default(b.host_ip) &&
         a.host_port == b.host_port;
}

int64_t monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace

// Everything libslirp's callbacks touch; backend thread only once the thread runs.
struct SlirpBackend::Loop {
  struct Timer {
    SlirpTimerCb cb = nullptr;
    void* cb_opaque = nullptr;
    int64_t expire_ms = -1;  // -1: not armed
  };

  SlirpBackend* self = nullptr;
  Slirp* slirp = nullptr;
  EgressFilter filter;
  std::vector<pollfd> pollfds;
  std::vector<std::unique_ptr<Timer>> timers;
  std::vector<std::byte> frame;  // reused TX buffer
  std::vector<std::byte> reply;  // the filter's answer to a refused frame
  uint64_t guest_errors = 0;
  std::string hostname = "supermachine";

  Loop(SlirpBackend* s, const NetworkConfig& cfg)
      : self(s), filter(cfg.policy, cfg.plan, filter_dns_servers(cfg)) {}

  static ssize_t send_packet(const void* buf, size_t len, void* opaque) {
    auto* l = static_cast<Loop*>(opaque);
    // A C callback: deliver_inbound lets nothing escape into libslirp.
    deliver_inbound(l->filter, l->self->q_, std::span(static_cast<const std::byte*>(buf), len));
    return static_cast<ssize_t>(len);
  }

  static void guest_error(const char* msg, void* opaque) {
    auto* l = static_cast<Loop*>(opaque);
    ++l->guest_errors;
    if (l->guest_errors <= 3 || l->guest_errors % 1000 == 0) {
      spdlog::warn("network: invalid packet from the guest: {} (error #{})", msg ? msg : "?",
                   l->guest_errors);
    }
  }

  static int64_t clock_get_ns(void*) { return monotonic_ns(); }

  static void* timer_new(SlirpTimerCb cb, void* cb_opaque, void* opaque) {
    auto* l = static_cast<Loop*>(opaque);
    try {
      auto t = std::make_unique<Timer>();
      t->cb = cb;
      t->cb_opaque = cb_opaque;
      l->timers.push_back(std::move(t));
      return l->timers.back().get();
    } catch (...) {
      return nullptr;
    }
  }

  static void timer_free(void* timer, void* opaque) {
    auto* l = static_cast<Loop*>(opaque);
    std::erase_if(l->timers, [timer](const auto& t) { return t.get() == timer; });
  }

  static void timer_mod(void* timer, int64_t expire_ms, void* opaque) {
    auto* l = static_cast<Loop*>(opaque);
    for (auto& t : l->timers) {
      if (t.get() == timer) t->expire_ms = std::max<int64_t>(expire_ms, 0);
    }
  }

  static void register_poll_fd(int, void*) {}    // the poll set is rebuilt every turn
  static void unregister_poll_fd(int, void*) {}
  static void notify(void*) {}                   // libslirp calls it on this thread

  static int add_poll(int fd, int events, void* opaque) {
    auto* l = static_cast<Loop*>(opaque);
    short ev = 0;
    if (events & SLIRP_POLL_IN) ev |= POLLIN;
    if (events & SLIRP_POLL_OUT) ev |= POLLOUT;
    if (events & SLIRP_POLL_PRI) ev |= POLLPRI;
    if (events & SLIRP_POLL_ERR) ev |= POLLERR;
    if (events & SLIRP_POLL_HUP) ev |= POLLHUP;
    l->pollfds.push_back(pollfd{fd, ev, 0});
    return static_cast<int>(l->pollfds.size() - 1);
  }

  static int get_revents(int idx, void* opaque) {
    auto* l = static_cast<Loop*>(opaque);
    if (idx < 0 || static_cast<size_t>(idx) >= l->pollfds.size()) return 0;
    short re = l->pollfds[static_cast<size_t>(idx)].revents;
    int out = 0;
    if (re & POLLIN) out |= SLIRP_POLL_IN;
    if (re & POLLOUT) out |= SLIRP_POLL_OUT;
    if (re & POLLPRI) out |= SLIRP_POLL_PRI;
    if (re & POLLERR) out |= SLIRP_POLL_ERR;
    if (re & POLLHUP) out |= SLIRP_POLL_HUP;
    return out;
  }

  // The poll timeout in ms (-1: none) given libslirp's wish and the armed timers.
  [[nodiscard]] int timeout_ms(uint32_t slirp_timeout) const {
    int64_t t = slirp_timeout == UINT32_MAX ? -1 : int64_t{slirp_timeout};
    int64_t now = monotonic_ns() / 1'000'000;
    for (const auto& tm : timers) {
      if (tm->expire_ms < 0) continue;
      int64_t d = std::max<int64_t>(tm->expire_ms - now, 0);
      t = t < 0 ? d : std::min(t, d);
    }
    return static_cast<int>(std::min<int64_t>(t, INT_MAX));
  }

  void run_due_timers() {
    int64_t now = monotonic_ns() / 1'000'000;
    std::vector<Timer*> due;
    for (auto& t : timers) {
      if (t->expire_ms >= 0 && t->expire_ms <= now) due.push_back(t.get());
    }
    for (Timer* t : due) {
      // An earlier callback may have freed this one.
      bool alive = std::any_of(timers.begin(), timers.end(), [t](const auto& p) { return p.get() == t; });
      if (!alive || t->expire_ms < 0 || t->expire_ms > now) continue;
      t->expire_ms = -1;
      t->cb(t->cb_opaque);
    }
  }

  // Hands up to kTxBudget queued guest frames through the filter to libslirp.
  void process_tx() {
    for (int i = 0; i < kTxBudget && self->q_.pop_tx(frame); ++i) {
      if (filter_outbound(filter, self->q_, frame, reply)) {
        slirp_input(slirp, reinterpret_cast<const uint8_t*>(frame.data()), static_cast<int>(frame.size()));
      }
    }
  }
};

namespace {

const SlirpCb kCallbacks = {
    .send_packet = &SlirpBackend::Loop::send_packet,
    .guest_error = &SlirpBackend::Loop::guest_error,
    .clock_get_ns = &SlirpBackend::Loop::clock_get_ns,
    .timer_new = &SlirpBackend::Loop::timer_new,
    .timer_free = &SlirpBackend::Loop::timer_free,
    .timer_mod = &SlirpBackend::Loop::timer_mod,
    .register_poll_fd = &SlirpBackend::Loop::register_poll_fd,
    .unregister_poll_fd = &SlirpBackend::Loop::unregister_poll_fd,
    .notify = &SlirpBackend::Loop::notify,
    .init_completed = nullptr,
    .timer_new_opaque = nullptr,  // so libslirp uses timer_new's callbacks
};

}  // namespace

std::unique_ptr<SlirpBackend> SlirpBackend::create(const NetworkConfig& cfg, QueueLimits limits) {
  std::unique_ptr<SlirpBackend> b(new SlirpBackend(cfg, limits));
  for (const PortMapping& m : cfg.publish) (void)b->publish(m);
  return b;
}

SlirpBackend::SlirpBackend(const NetworkConfig& cfg, QueueLimits limits)
    : cfg_(cfg), q_(limits), loop_(std::make_unique<Loop>(this, cfg)) {
  const AddressPlan& p = cfg.plan;
  if (p.ipv4_prefix < 1 || p.ipv4_prefix > 30) {
    throw Error(fmt::format("network: IPv4 prefix /{} is not in 1..30", p.ipv4_prefix));
  }
  if (p.ipv6_prefix < 1 || p.ipv6_prefix > 126) {
    throw Error(fmt::format("network: IPv6 prefix /{} is not in 1..126", p.ipv6_prefix));
  }
  if (p.mtu < 68 || p.mtu > kMaxMtu) {
    throw Error(fmt::format("network: MTU {} is not in 68..{}", p.mtu, kMaxMtu));
  }
  in_addr guest4 = parse_ipv4(p.guest_ipv4, "guest address");
  uint32_t mask = p.ipv4_prefix == 0 ? 0 : ~uint32_t{0} << (32 - p.ipv4_prefix);
  in6_addr guest6 = parse_ipv6(p.guest_ipv6, "guest IPv6 address");
  in6_addr prefix6 = guest6;
  for (unsigned bit = p.ipv6_prefix; bit < 128; ++bit) {
    prefix6.s6_addr[bit / 8] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
  }

  SlirpConfig sc{};
  sc.version = 4;
  sc.restricted = 0;
  sc.in_enabled = true;
  sc.vnetwork.s_addr = htonl(ntohl(guest4.s_addr) & mask);
  sc.vnetmask.s_addr = htonl(mask);
  sc.vhost = parse_ipv4(p.gateway_ipv4, "gateway address");
  sc.in6_enabled = true;
  sc.vprefix_addr6 = prefix6;
  sc.vprefix_len = static_cast<uint8_t>(p.ipv6_prefix);
  sc.vhost6 = parse_ipv6(p.gateway_ipv6, "IPv6 gateway address");
  sc.vhostname = loop_->hostname.c_str();
  // libslirp hands out DHCP leases from vdhcp_start up, so the guest's first lease is its plan address.
  sc.vdhcp_start = guest4;
  sc.vnameserver = parse_ipv4(p.dns_ipv4, "DNS address");
  sc.vnameserver6 = parse_ipv6(p.dns_ipv6, "IPv6 DNS address");
  sc.if_mtu = p.mtu;
  sc.if_mru = p.mtu;
  // The host's loopback is guarded by the EgressFilter, which sees every guest frame first and
  // refuses what the guest starts towards the gateway unless allow_host_loopback. libslirp's own
  // switch cannot stay on: it also drops the guest's answers through a published UDP port to a
  // client on the host's loopback (those go back to the gateway address, 10.0.2.2).
  sc.disable_host_loopback = false;
  sc.enable_emu = false;

  loop_->slirp = slirp_new(&sc, &kCallbacks, loop_.get());
  if (loop_->slirp == nullptr) throw Error("network: libslirp could not start (slirp_new failed)");
  try {
    thread_ = start_thread_without_signals([this] { thread_main(); });
  } catch (...) {
    slirp_cleanup(loop_->slirp);
    throw;
  }
}

SlirpBackend::~SlirpBackend() { shutdown(); }

void SlirpBackend::shutdown() {
  std::lock_guard lock(publish_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  stop_.store(true);
  q_.wake();
  if (thread_.joinable()) thread_.join();
  // The thread is gone: libslirp is ours now. Its cleanup closes every socket it had and frees
  // its timers through loop_.
  slirp_cleanup(loop_->slirp);
  loop_->slirp = nullptr;
  std::lock_guard plock(published_mu_);
  published_.clear();
}

void SlirpBackend::thread_main() {
  pthread_setname_np(pthread_self(), "sm-slirp");
  Loop& l = *loop_;
  try {
    while (!stop_.load(std::memory_order_relaxed)) {
      l.pollfds.clear();
      l.pollfds.push_back(pollfd{q_.wake_fd(), POLLIN, 0});
      uint32_t slirp_timeout = UINT32_MAX;
      slirp_pollfds_fill(l.slirp, &slirp_timeout, &Loop::add_poll, &l);
      int timeout = q_.tx_empty() ? l.timeout_ms(slirp_timeout) : 0;
      int n = ::poll(l.pollfds.data(), l.pollfds.size(), timeout);
      if (n < 0 && errno != EINTR) throw sys_error("network: poll");
      slirp_pollfds_poll(l.slirp, n < 0 ? 1 : 0, &Loop::get_revents, &l);
      l.run_due_timers();
      if (l.pollfds[0].revents & POLLIN) q_.drain_wake();

      std::vector<std::function<void(Slirp*)>> reqs;
      {
        std::lock_guard lock(req_mu_);
        reqs.swap(requests_);
      }
      for (auto& r : reqs) r(l.slirp);

      l.process_tx();
      q_.signal_rx();
    }
  } catch (const std::exception& e) {
    spdlog::error("network: the user-mode network stopped: {}", e.what());
  }
  std::vector<std::function<void(Slirp*)>> reqs;
  {
    std::lock_guard lock(req_mu_);
    thread_done_ = true;
    reqs.swap(requests_);
  }
  for (auto& r : reqs) r(nullptr);
}

void SlirpBackend::run_on_thread(std::function<void(Slirp*)> fn) {
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> result = done->get_future();
  {
    std::lock_guard lock(req_mu_);
    if (thread_done_) throw Error("network: the user-mode network has stopped");
    requests_.push_back([fn = std::move(fn), done](Slirp* s) {
      try {
        if (s == nullptr) throw Error("network: the user-mode network has stopped");
        fn(s);
        done->set_value();
      } catch (...) {
        done->set_exception(std::current_exception());
      }
    });
  }
  q_.wake();
  result.get();
}

PortMapping SlirpBackend::publish(const PortMapping& m_in) {
  std::lock_guard lock(publish_mu_);
  PortMapping m = m_in;
  m.host_ip = host_ip_or_default(m.host_ip);
  if (m.guest_port == 0) {
    throw Error(fmt::format("cannot publish {}: the guest port is 0",
                            describe(m.host_ip, m.host_port, m.protocol)));
  }
  HostAddr host = parse_host(m.host_ip);
  sockaddr_in guest{};
  guest.sin_family = AF_INET;
  guest.sin_addr = parse_ipv4(cfg_.plan.guest_ipv4, "guest address");
  guest.sin_port = htons(m.guest_port);
  int flags = (m.protocol == PortMapping::Protocol::udp ? SLIRP_HOSTFWD_UDP : 0) |
              (host.v6 ? SLIRP_HOSTFWD_V6ONLY : 0);

  run_on_thread([&](Slirp* s) {
    int attempts = m.host_port == 0 ? kFreePortAttempts : 1;
    int err = 0;
    for (int i = 0; i < attempts; ++i) {
      uint16_t port = m_in.host_port != 0 ? m_in.host_port : pick_free_port(host, m);
      host.set_port(port);
      errno = 0;
      if (slirp_add_hostxfwd(s, host.sa(), host.len, reinterpret_cast<const sockaddr*>(&guest),
                             sizeof guest, flags) == 0) {
        m.host_port = port;
        return;
      }
      err = errno;
      m.host_port = port;
    }
    throw publish_error(m, m.host_port, err);
  });
  std::lock_guard plock(published_mu_);
  published_.push_back(m);
  return m;
}

bool SlirpBackend::unpublish(const PortMapping& m) {
  std::lock_guard lock(publish_mu_);
  PortMapping found;
  {
    std::lock_guard lock(published_mu_);
    auto it = std::find_if(published_.begin(), published_.end(), [&](const PortMapping& p) {
      return m.host_port != 0 ? same_port(p, m)
                              : p.protocol == m.protocol && p.guest_port == m.guest_port &&
                                    p.host_ip == host_ip_or_default(m.host_ip);
    });
    if (it == published_.end()) return false;
    found = *it;
  }
  HostAddr host = parse_host(found.host_ip);
  host.set_port(found.host_port);
  int flags = (found.protocol == PortMapping::Protocol::udp ? SLIRP_HOSTFWD_UDP : 0) |
              (host.v6 ? SLIRP_HOSTFWD_V6ONLY : 0);
  int rc = -1;
  run_on_thread([&](Slirp* s) { rc = slirp_remove_hostxfwd(s, host.sa(), host.len, flags); });
  std::lock_guard plock(published_mu_);
  std::erase_if(published_, [&](const PortMapping& p) { return same_port(p, found); });
  return rc == 0;
}

std::vector<PortMapping> SlirpBackend::published() const {
  std::lock_guard lock(published_mu_);
  return published_;
}

NetStats SlirpBackend::stats() const { return q_.stats(); }

}  // namespace sm::net
