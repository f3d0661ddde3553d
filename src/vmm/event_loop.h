// The VMM's single I/O thread: an epoll loop that calls back device handlers for ready file
// descriptors (ioeventfds for queue notifications, host sockets for vsock, signalfd, ...).
// add/modify/remove/post/stop are thread-safe; callbacks run on the loop thread only.
#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "common/unique_fd.h"

namespace sm {

class EventLoop {
 public:
  using Callback = std::function<void(uint32_t events)>;

  EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // events: EPOLLIN / EPOLLOUT / ... The loop does not own fd; remove it before closing it.
  void add(int fd, uint32_t events, Callback cb);
  void modify(int fd, uint32_t events);
  void remove(int fd);
  // Runs fn on the loop thread as soon as possible.
  void post(std::function<void()> fn);

  // Dispatches events until stop() is called. Exceptions from callbacks propagate out of run().
  void run();
  // Runs at most one round of ready callbacks, waiting up to timeout_ms. Returns false once stopped.
  bool run_once(int timeout_ms);
  void stop();
  [[nodiscard]] bool stopped() const { return stopped_.load(); }

 private:
  void wake();

  UniqueFd epoll_;
  UniqueFd wake_fd_;
  std::mutex mu_;
  std::unordered_map<int, std::shared_ptr<Callback>> callbacks_;
  std::vector<std::function<void()>> posted_;
  std::atomic<bool> stopped_{false};
};

}  // namespace sm
