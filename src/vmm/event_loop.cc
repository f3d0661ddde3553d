#include "vmm/event_loop.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <array>

#include "common/error.h"

namespace sm {

EventLoop::EventLoop()
    : epoll_(::epoll_create1(EPOLL_CLOEXEC)), wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (!epoll_) throw sys_error("epoll_create1");
  if (!wake_fd_) throw sys_error("eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = wake_fd_.get();
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_fd_.get(), &ev) != 0) throw sys_error("epoll_ctl");
}

void EventLoop::add(int fd, uint32_t events, Callback cb) {
  {
    std::lock_guard lock(mu_);
    callbacks_[fd] = std::make_shared<Callback>(std::move(cb));
  }
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    int err = errno;
    std::lock_guard lock(mu_);
    callbacks_.erase(fd);
    throw sys_error("epoll_ctl(ADD)", err);
  }
}

void EventLoop::modify(int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) throw sys_error("epoll_ctl(MOD)");
}

void EventLoop::remove(int fd) {
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  std::lock_guard lock(mu_);
  callbacks_.erase(fd);
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

bool EventLoop::run_once(int timeout_ms) {
  if (stopped_) return false;
  std::array<epoll_event, 32> evs;
  int n = ::epoll_wait(epoll_.get(), evs.data(), static_cast<int>(evs.size()), timeout_ms);
  if (n < 0) {
    if (errno == EINTR) return !stopped_;
    throw sys_error("epoll_wait");
  }
  for (int i = 0; i < n; ++i) {
    int fd = evs[i].data.fd;
    if (fd == wake_fd_.get()) {
      uint64_t v;
      [[maybe_unused]] auto r = ::read(wake_fd_.get(), &v, sizeof v);
      std::vector<std::function<void()>> work;
      {
        std::lock_guard lock(mu_);
        work.swap(posted_);
      }
      for (auto& fn : work) fn();
      continue;
    }
    std::shared_ptr<Callback> cb;
    {
      std::lock_guard lock(mu_);
      auto it = callbacks_.find(fd);
      if (it != callbacks_.end()) cb = it->second;  // kept alive even if removed meanwhile
    }
    if (cb) (*cb)(evs[i].events);
  }
  return !stopped_;
}

void EventLoop::run() {
  while (run_once(-1)) {
  }
}

}  // namespace sm
