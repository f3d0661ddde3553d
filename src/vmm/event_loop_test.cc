#include "vmm/event_loop.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <chrono>
#include <future>
#include <string>
#include <thread>

#include "common/error.h"
#include "common/unique_fd.h"

namespace sm {
namespace {

// A connected AF_UNIX stream pair: [0] is watched by the loop, [1] is the peer the test drives.
struct SocketPair {
  UniqueFd watched;
  UniqueFd peer;
};

SocketPair make_pair() {
  std::array<int, 2> fds{};
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds.data()) != 0)
    throw sys_error("socketpair");
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

void write_byte(const UniqueFd& fd) {
  char c = 'x';
  ASSERT_EQ(::send(fd.get(), &c, 1, MSG_NOSIGNAL), 1) << "fd " << fd.get() << ": " << std::strerror(errno);
}

TEST(EventLoop, DispatchesReadyFdAndStopsAfterRemove) {
  EventLoop loop;
  auto p = make_pair();
  int calls = 0;
  loop.add(p.watched.get(), EPOLLIN, [&](uint32_t events) {
    EXPECT_TRUE(events & EPOLLIN);
    ++calls;
  });
  EXPECT_TRUE(loop.run_once(0));
  EXPECT_EQ(calls, 0);
  write_byte(p.peer);
  EXPECT_TRUE(loop.run_once(1000));
  EXPECT_EQ(calls, 1);
  loop.remove(p.watched.get());
  EXPECT_TRUE(loop.run_once(0));  // still readable, but no longer watched
  EXPECT_EQ(calls, 1);
  loop.remove(p.watched.get());  // removing an unregistered fd is a no-op
}

TEST(EventLoop, ModifyKeepsDeliveringToTheSameCallback) {
  EventLoop loop;
  auto p = make_pair();
  write_byte(p.peer);
  int calls = 0;
  loop.add(p.watched.get(), 0, [&](uint32_t) { ++calls; });
  EXPECT_TRUE(loop.run_once(0));
  EXPECT_EQ(calls, 0);
  loop.modify(p.watched.get(), EPOLLIN);
  EXPECT_TRUE(loop.run_once(1000));
  EXPECT_EQ(calls, 1);
  auto other = make_pair();
  EXPECT_THROW(loop.modify(other.watched.get(), EPOLLIN), Error);
}

// Bug 1: a callback closes a socket and a new one takes its number within one epoll_wait
// batch; the old socket's event still queued in that batch must not reach the new callback.
TEST(EventLoop, StaleEventForReusedFdNumberIsDropped) {
  EventLoop loop;
  auto a = make_pair();
  auto b = make_pair();
  // Both hung up (peer closed) and so both ready before the one round below.
  a.peer.reset();
  b.peer.reset();

  int old_calls = 0;
  int new_calls = 0;
  uint32_t new_events = 0;
  UniqueFd replacement_peer;
  // Whichever of the two runs first removes and closes the other, puts a fresh, idle socket
  // under the very same fd number and registers it: the other's event is then stale.
  auto take_over = [&](UniqueFd& victim) {
    ++old_calls;
    if (old_calls > 1) return;
    const int number = victim.get();
    loop.remove(number);
    auto fresh = make_pair();  // made while the victim is open, so it cannot take its number
    // Closes the victim's socket; its number (still owned by `victim`) now names the fresh one.
    ASSERT_EQ(::dup2(fresh.watched.get(), number), number);
    replacement_peer = std::move(fresh.peer);
    loop.add(number, EPOLLIN, [&](uint32_t events) {
      ++new_calls;
      new_events |= events;
    });
  };
  loop.add(a.watched.get(), EPOLLIN, [&](uint32_t) { take_over(b.watched); });
  loop.add(b.watched.get(), EPOLLIN, [&](uint32_t) { take_over(a.watched); });

  EXPECT_TRUE(loop.run_once(1000));
  EXPECT_EQ(old_calls, 1) << "the victim's callback must not run after its remove()";
  EXPECT_EQ(new_calls, 0) << "stale events 0x" << std::hex << new_events
                          << " were delivered to the fd that reused the number";

  // The new registration itself works.
  write_byte(replacement_peer);
  EXPECT_TRUE(loop.run_once(1000));
  EXPECT_EQ(new_calls, 1);
  EXPECT_TRUE(new_events & EPOLLIN);
  EXPECT_FALSE(new_events & EPOLLHUP);
}

TEST(EventLoop, RemoveThenAddSameFdGetsTheNewCallbackOnly) {
  EventLoop loop;
  auto p = make_pair();
  write_byte(p.peer);
  int first = 0;
  int second = 0;
  loop.add(p.watched.get(), EPOLLIN, [&](uint32_t) { ++first; });
  loop.remove(p.watched.get());
  loop.add(p.watched.get(), EPOLLIN, [&](uint32_t) { ++second; });
  EXPECT_TRUE(loop.run_once(1000));
  EXPECT_EQ(first, 0);
  EXPECT_EQ(second, 1);
}

// Bug 2: adding a registered fd again must fail and leave the first registration working
// (before, the callback was erased while the fd stayed in epoll, so a level-triggered event
// spun the loop with nobody to consume it).
TEST(EventLoop, AddingARegisteredFdThrowsAndKeepsTheRegistration) {
  EventLoop loop;
  auto p = make_pair();
  int first = 0;
  int second = 0;
  loop.add(p.watched.get(), EPOLLIN, [&](uint32_t) { ++first; });
  try {
    loop.add(p.watched.get(), EPOLLIN | EPOLLOUT, [&](uint32_t) { ++second; });
    ADD_FAILURE() << "add() of a registered fd did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "fd " + std::to_string(p.watched.get()) + " is already registered");
  }
  write_byte(p.peer);
  EXPECT_TRUE(loop.run_once(1000));
  EXPECT_EQ(first, 1);
  EXPECT_EQ(second, 0);
  // The interest set is still the first one's (EPOLLIN only: a writable socket stays quiet).
  char c;
  ASSERT_EQ(::read(p.watched.get(), &c, 1), 1);
  EXPECT_TRUE(loop.run_once(0));
  EXPECT_EQ(first, 1);
}

TEST(EventLoop, AddOfABadFdThrowsAndRegistersNothing) {
  EventLoop loop;
  auto p = make_pair();
  auto q = make_pair();
  const int number = p.watched.get();
  p.watched.reset();
  EXPECT_THROW(loop.add(number, EPOLLIN, [](uint32_t) {}), Error);
  loop.remove(number);  // nothing to remove
  // The number is free for a later add once a real fd has it.
  ASSERT_EQ(::dup2(q.watched.get(), number), number);
  UniqueFd reused(number);
  int calls = 0;
  loop.add(number, EPOLLIN, [&](uint32_t) { ++calls; });
  write_byte(q.peer);
  EXPECT_TRUE(loop.run_once(1000));
  EXPECT_EQ(calls, 1);
}

TEST(EventLoop, CallbackMayRemoveItself) {
  EventLoop loop;
  auto p = make_pair();
  write_byte(p.peer);
  int calls = 0;
  loop.add(p.watched.get(), EPOLLIN, [&](uint32_t) {
    ++calls;
    loop.remove(p.watched.get());  // destroys the registration while its callback runs
  });
  EXPECT_TRUE(loop.run_once(1000));
  EXPECT_TRUE(loop.run_once(0));
  EXPECT_EQ(calls, 1);
}

TEST(EventLoop, PostFromAnotherThreadRunsOnTheLoopThread) {
  EventLoop loop;
  std::promise<std::thread::id> loop_id;
  auto loop_id_f = loop_id.get_future();
  std::thread::id ran_on;
  std::thread io([&] {
    loop_id.set_value(std::this_thread::get_id());
    loop.run();
  });
  std::thread::id poster_id;
  std::thread poster([&] {
    poster_id = std::this_thread::get_id();
    loop.post([&] {
      ran_on = std::this_thread::get_id();
      loop.stop();
    });
  });
  poster.join();
  io.join();  // returns only once the posted function has run and stopped the loop
  EXPECT_EQ(ran_on, loop_id_f.get());
  EXPECT_NE(ran_on, poster_id);
  EXPECT_TRUE(loop.stopped());
  EXPECT_FALSE(loop.run_once(0));
}

TEST(EventLoop, StopFromAnotherThreadEndsRun) {
  EventLoop loop;
  std::promise<void> running;
  auto running_f = running.get_future();
  auto done = std::async(std::launch::async, [&] { loop.run(); });
  loop.post([&] { running.set_value(); });
  running_f.wait();  // run() is now looping (blocked in epoll_wait or about to be)
  EXPECT_FALSE(loop.stopped());
  std::thread stopper([&] { loop.stop(); });
  stopper.join();
  ASSERT_EQ(done.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  done.get();
  EXPECT_TRUE(loop.stopped());
}

TEST(EventLoop, CallbackExceptionPropagatesOutOfRun) {
  EventLoop loop;
  auto p = make_pair();
  write_byte(p.peer);
  loop.add(p.watched.get(), EPOLLIN, [](uint32_t) { throw Error("callback failed"); });
  try {
    loop.run();
    ADD_FAILURE() << "run() returned";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "callback failed");
  }
  EXPECT_FALSE(loop.stopped());
}

TEST(EventLoop, PostedWorkAfterAThrowingOneIsKept) {
  EventLoop loop;
  int ran = 0;
  loop.post([] { throw Error("posted failed"); });
  loop.post([&] { ++ran; });
  EXPECT_THROW(loop.run_once(1000), Error);
  EXPECT_EQ(ran, 0);
  EXPECT_TRUE(loop.run_once(1000));
  EXPECT_EQ(ran, 1);
}

}  // namespace
}  // namespace sm
