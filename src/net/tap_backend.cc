#include "net/tap_backend.h"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/thread.h"
#include "net/filter.h"

namespace sm::net {

namespace {

// Frames moved per direction per loop turn, so that neither direction starves the other.
constexpr int kBudget = 256;

Error tap_error(const std::string& name, const char* step, int err) {
  std::string hint;
  switch (err) {
    case ENOENT:
    case ENODEV:
      hint = "/dev/net/tun is missing: load the tun module (modprobe tun)";
      break;
    case EPERM:
    case EACCES:
      hint = fmt::format(
          "this needs CAP_NET_ADMIN, or create the interface for your user first: "
          "ip tuntap add dev {} mode tap user $USER",
          name);
      break;
    case EBUSY:
      hint = "another process has it open";
      break;
    case EINVAL:
      hint = "it exists and is not a TAP interface (IFF_TAP, no packet info)";
      break;
    default:
      hint = std::strerror(err);
  }
  return Error(fmt::format("cannot use tap interface {}: {} failed: {} ({})", name, step,
                           std::strerror(err), hint));
}

UniqueFd open_tap(const std::string& name) {
  if (name.empty()) throw Error("--network tap needs an interface name (--network tap:NAME)");
  if (name.size() >= IFNAMSIZ || name.find('/') != std::string::npos) {
    throw Error(fmt::format("cannot use tap interface {}: not a valid interface name (at most {} "
                            "characters, no '/')",
                            name, IFNAMSIZ - 1));
  }
  UniqueFd fd(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!fd) throw tap_error(name, "opening /dev/net/tun", errno);
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, name.data(), name.size());
  // No IFF_VNET_HDR: the device completes checksums and strips the virtio-net header itself.
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  if (::ioctl(fd.get(), TUNSETIFF, &ifr) != 0) throw tap_error(name, "TUNSETIFF", errno);
  return fd;
}

// The interface's MTU, which the guest must not exceed; 1500 when it cannot be read.
unsigned interface_mtu(const std::string& name) {
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, name.data(), std::min(name.size(), sizeof ifr.ifr_name - 1));
  if (!s || ::ioctl(s.get(), SIOCGIFMTU, &ifr) != 0 || ifr.ifr_mtu < 68) {
    spdlog::warn("network: tap {}: cannot read its MTU ({}); the guest uses 1500", name, std::strerror(errno));
    return 1500;
  }
  return std::min<unsigned>(static_cast<unsigned>(ifr.ifr_mtu), kMaxMtu);
}

}  // namespace

std::unique_ptr<TapBackend> TapBackend::create(const NetworkConfig& cfg, QueueLimits limits) {
  return std::unique_ptr<TapBackend>(new TapBackend(cfg, limits, open_tap(cfg.tap_name)));
}

TapBackend::TapBackend(const NetworkConfig& cfg, QueueLimits limits, UniqueFd tap)
    : name_(cfg.tap_name),
      mtu_(interface_mtu(cfg.tap_name)),
      q_(limits),
      tap_(std::move(tap)),
      filter_(std::make_unique<EgressFilter>(cfg.policy, cfg.plan, filter_dns_servers(cfg))),
      rx_buf_(kMaxFrameLen) {
  filter_->set_bridged(true);
  thread_ = start_thread_without_signals([this] { thread_main(); });
}

TapBackend::~TapBackend() { shutdown(); }

void TapBackend::shutdown() {
  std::lock_guard lock(shutdown_mu_);
  stop_.store(true);
  q_.wake();
  if (thread_.joinable()) thread_.join();
  tap_.reset();
}

PortMapping TapBackend::publish(const PortMapping&) {
  throw Error("ports cannot be published with --network tap: the VM is on your bridge; reach it at its address");
}

bool TapBackend::write_pending() {
  for (int i = 0; i < kBudget; ++i) {
    if (!tx_pending_) {
      if (!q_.pop_tx(tx_frame_)) return true;
      if (!filter_outbound(*filter_, q_, tx_frame_, reply_)) continue;
      tx_pending_ = true;
    }
    ssize_t n = ::write(tap_.get(), tx_frame_.data(), tx_frame_.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return true;  // keep it; poll for POLLOUT
    tx_pending_ = false;
    if (n < 0) {
      // EIO: the interface is down. The frame is lost, as on a cable nobody listens to.
      if (errno == EBADF) return false;
      spdlog::debug("network: tap {}: write: {}", name_, std::strerror(errno));
    }
  }
  return true;
}

bool TapBackend::read_available() {
  for (int i = 0; i < kBudget; ++i) {
    ssize_t n = ::read(tap_.get(), rx_buf_.data(), rx_buf_.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return true;
    if (n < 0) {
      if (errno == EBADF) return false;
      spdlog::debug("network: tap {}: read: {}", name_, std::strerror(errno));
      return true;
    }
    if (static_cast<size_t>(n) < kMinFrameLen) continue;  // not an Ethernet frame
    deliver_inbound(*filter_, q_, std::span(rx_buf_.data(), static_cast<size_t>(n)));
  }
  return true;
}

void TapBackend::thread_main() {
  pthread_setname_np(pthread_self(), "sm-tap");
  while (!stop_.load(std::memory_order_relaxed)) {
    pollfd fds[2] = {{q_.wake_fd(), POLLIN, 0},
                     {tap_.get(), static_cast<short>(POLLIN | (tx_pending_ ? POLLOUT : 0)), 0}};
    int timeout = !tx_pending_ && !q_.tx_empty() ? 0 : -1;
    int n = ::poll(fds, 2, timeout);
    if (n < 0 && errno != EINTR) {
      spdlog::error("network: tap {}: poll: {}", name_, std::strerror(errno));
      break;
    }
    if (n < 0) continue;
    if (fds[0].revents & POLLIN) q_.drain_wake();
    if (fds[1].revents & (POLLERR | POLLHUP | POLLNVAL)) {
      spdlog::error("network: tap {}: the interface went away", name_);
      break;
    }
    bool ok = read_available() && write_pending();
    q_.signal_rx();
    if (!ok) {
      spdlog::error("network: tap {}: the file descriptor failed", name_);
      break;
    }
  }
}

}  // namespace sm::net
