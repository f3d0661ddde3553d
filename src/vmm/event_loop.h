// The VMM's single I/O thread: an epoll loop that calls back device handlers for ready file
// descriptors (ioeventfds for queue notifications, host sockets for vsock, signalfd, ...).
//
// Threads: add/modify/remove/post/stop may be called from any thread, including from inside a
// callback. run()/run_once() are called from one thread at a time (the loop thread); callbacks
// and posted functions run there only, never with the loop's internal mutex held, so they may
// take a device mutex and call back into the loop (lock order: device mutex -> EventLoop mutex,
// see devices/virtio/device.h). Callbacks are destroyed outside that mutex too.
//
// Registrations are keyed by a token, not by the fd number: each add() gets a fresh token (the
// fd in the low 32 bits, a generation counter in the high 32), which epoll carries in
// epoll_event.data.u64. An event whose token is no longer registered is dropped. So within one
// epoll_wait batch, a callback that removes and closes fd X, then adds a new fd that reuses the
// number X, does not hand X's stale events (EPOLLHUP, say) to the new registration; and a
// callback removed by an earlier callback in the batch is not called either. A callback that is
// running when it is removed finishes normally (it is kept alive until it returns).
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

  // Watches fd for events (EPOLLIN / EPOLLOUT / ..., level-triggered unless EPOLLET is given)
  // and calls cb with the ready events. The loop does not own fd; remove it before closing it.
  // An fd that is already registered is refused: throws sm::Error "fd N is already registered"
  // and leaves the existing registration (callback and events) untouched; to change the events
  // use modify(), to change the callback remove() then add(). Throws sm::Error if epoll refuses
  // the fd (then nothing is registered).
  void add(int fd, uint32_t events, Callback cb);
  // Changes the events watched for a registered fd (same callback, same token). Throws sm::Error
  // if fd is not registered or epoll refuses the change.
  void modify(int fd, uint32_t events);
  // Stops watching fd; no-op if it is not registered. Events for it already fetched in the
  // current batch are dropped, even if fd is added again (level-triggered events are then
  // reported to the new registration by the next epoll_wait); a call of its callback that is
  // running now finishes.
  void remove(int fd);
  // Runs fn on the loop thread as soon as possible, in the order posted.
  void post(std::function<void()> fn);

  // Dispatches events until stop() is called. Exceptions from callbacks and posted functions
  // propagate out of run() / run_once(); the loop stays usable: posted functions not yet run
  // stay queued, and events not yet dispatched in that batch are lost (level-triggered ones are
  // reported again by the next epoll_wait, EPOLLET ones are not).
  void run();
  // Runs at most one round of ready callbacks, waiting up to timeout_ms. Returns false once stopped.
  bool run_once(int timeout_ms);
  // Makes run() return (after the callback running now, if any) and run_once() return false;
  // final: a stopped loop does not dispatch again.
  void stop();
  [[nodiscard]] bool stopped() const { return stopped_.load(); }

 private:
  struct Registration {
    uint64_t token;
    std::shared_ptr<Callback> cb;  // shared so that a running callback survives its remove()
  };
  // Never a registration's token: the generation counter skips 0.
  static constexpr uint64_t kWakeToken = 0;

  void wake();
  void run_posted();

  UniqueFd epoll_;
  UniqueFd wake_fd_;
  // Guards registrations_, generation_, posted_, and keeps each registration and its epoll
  // interest entry changing together (epoll_ctl is called with it held).
  std::mutex mu_;
  std::unordered_map<int, Registration> registrations_;  // by fd
  uint32_t generation_ = 0;
  std::vector<std::function<void()>> posted_;
  std::atomic<bool> stopped_{false};
};

}  // namespace sm
