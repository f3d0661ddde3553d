// Threads that never take the process's signals.
//
// A library thread that leaves process-directed signals (SIGINT, SIGTERM, SIGPIPE, ...)
// unblocked may be the one the kernel picks to deliver them to: the default action then kills
// the process without the orderly stop its own handler or signalfd would have made (the Machine
// blocks SIGINT/SIGTERM in the threads it starts and reads them from a signalfd). Helper threads
// (the network backends) therefore start with every signal blocked; the mask is set before the
// thread exists, so there is no window.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <thread>
#include <utility>

namespace sm {

template <typename F>
[[nodiscard]] std::thread start_thread_without_signals(F&& fn) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  struct Restore {
    sigset_t* old;
    ~Restore() { pthread_sigmask(SIG_SETMASK, old, nullptr); }
  } restore{&old};
  return std::thread(std::forward<F>(fn));  // inherits the all-blocked mask
}

}  // namespace sm
