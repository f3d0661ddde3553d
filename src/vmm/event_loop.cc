#include "vmm/event_loop.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <array>
#include <iterator>

#include <fmt/format.h>

#include "common/error.h"

namespace sm {
namespace {

constexpr int token_fd(uint64_t token) { return static_cast<int>(static_cast<uint32_t>(token)); }

}  // namespace

EventLoop::EventLoop()
    : epoll_(::epoll_create1(EPOLL_CLOEXEC)), wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (!epoll_) throw sys_error("epoll_create1");
  if (!wake_fd_) throw sys_error("eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeToken;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_fd_.get(), &ev) != 0) throw sys_error("epoll_ctl");
}

void EventLoop::add(int fd, uint32_t events, Callback cb) {
  if (fd < 0) throw Error(fmt::format("cannot watch fd {}", fd));
  auto shared = std::make_shared<Callback>(std::move(cb));
  std::lock_guard lock(mu_);
  if (registrations_.contains(fd)) throw Error(fmt::format("fd {} is already registered", fd));
  // A fresh generation for every add: a token stays unique to its registration until the
  // 32-bit counter wraps, long after any batch that could still hold the old one.
  if (++generation_ == 0) ++generation_;
  const uint64_t token = (uint64_t{generation_} << 32) | static_cast<uint32_t>(fd);
  auto it = registrations_.emplace(fd, Registration{token, std::move(shared)}).first;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = token;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    const int err = errno;
    shared = std::move(it->second.cb);  // the callback is destroyed after the lock is released
    registrations_.erase(it);
    throw sys_error(fmt::format("epoll_ctl(ADD, fd {})", fd), err);
  }
}

void EventLoop::modify(int fd, uint32_t events) {
  std::lock_guard lock(mu_);
  auto it = registrations_.find(fd);
  if (it == registrations_.end()) throw Error(fmt::format("fd {} is not registered", fd));
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = it->second.token;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0)
    throw sys_error(fmt::format("epoll_ctl(MOD, fd {})", fd));
}

void EventLoop::remove(int fd) {
  std::shared_ptr<Callback> cb;  // destroyed after the lock is released
  {
    std::lock_guard lock(mu_);
    auto it = registrations_.find(fd);
    if (it == registrations_.end()) return;
    // Fails only if the fd was closed before remove() (epoll already dropped it): nothing to do.
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
    cb = std::move(it->second.cb);
    registrations_.erase(it);
  }
}

void EventLoop::post(std::function<void()> fn) {
  {
    std::lock_guard lock(mu_);
    posted_.push_back(std::move(fn));
  }
  wake();
}

void EventLoop::wake() {
  uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_.get(), &one, sizeof one);
}

void EventLoop::stop() {
  stopped_ = true;
  wake();
}

void EventLoop::run_posted() {
  uint64_t v;
  [[maybe_unused]] auto r = ::read(wake_fd_.get(), &v, sizeof v);
  std::vector<std::function<void()>> work;
  {
    std::lock_guard lock(mu_);
    work.swap(posted_);
  }
  for (auto it = work.begin(); it != work.end(); ++it) {
    try {
      (*it)();
    } catch (...) {
      // Keep what has not run yet, ahead of anything posted meanwhile, for the next round.
      {
        std::lock_guard lock(mu_);
        posted_.insert(posted_.begin(), std::make_move_iterator(std::next(it)),
                       std::make_move_iterator(work.end()));
      }
      wake();
      throw;
    }
  }
}

bool EventLoop::run_once(int timeout_ms) {
  if (stopped_) return false;
  std::array<epoll_event, 32> evs;
  int n = ::epoll_wait(epoll_.get(), evs.data(), static_cast<int>(evs.size()), timeout_ms);
  if (n < 0) {
    if (errno == EINTR) return !stopped_;
    throw sys_error("epoll_wait");
  }
  for (int i = 0; i < n; ++i) {
    const uint64_t token = evs[i].data.u64;
    if (token == kWakeToken) {
      run_posted();
      continue;
    }
    std::shared_ptr<Callback> cb;
    {
      std::lock_guard lock(mu_);
      auto it = registrations_.find(token_fd(token));
      // A different token: removed by an earlier callback in this batch, perhaps with the
      // number now reused by a new registration. The event belongs to the old one: drop it.
      if (it != registrations_.end() && it->second.token == token) cb = it->second.cb;
    }
    if (cb) (*cb)(evs[i].events);  // cb keeps the callback alive even if removed meanwhile
  }
  return !stopped_;
}

void EventLoop::run() {
  while (run_once(-1)) {
  }
}

}  // namespace sm
