// Connecting this process's terminal to a process in a VM, as `docker run`/`docker exec` do:
// stdin streamed in with -i, stdout/stderr written out (and to the VM's output log), Ctrl-C and
// other signals forwarded to the process, a raw terminal and window-size changes with -t.
#pragma once

#include <termios.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "agent/client.h"
#include "runtime/output_log.h"

namespace sm::cli {

// Blocks the forwarded signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH)
// in the calling thread, so construct it before any other thread starts; a thread of its own
// then receives them and hands each to the current target. Until a target is set, a terminating
// signal just marks interrupted() (a boot in progress gives up).
class SignalForwarder {
 public:
  SignalForwarder();
  ~SignalForwarder();
  SignalForwarder(const SignalForwarder&) = delete;
  SignalForwarder& operator=(const SignalForwarder&) = delete;

  void set_target(std::function<void(int)> target);
  [[nodiscard]] bool interrupted() const { return interrupted_.load(); }
  // The first terminating signal received, 0 when none.
  [[nodiscard]] int first_signal() const { return first_signal_.load(); }

 private:
  void loop();
  std::mutex mu_;
  std::function<void(int)> target_;
  std::atomic<bool> done_{false};
  std::atomic<bool> interrupted_{false};
  std::atomic<int> first_signal_{0};
  std::thread thread_;
};

// Raw mode on a terminal for the life of the object (nothing when fd is not a terminal).
class RawTerminal {
 public:
  explicit RawTerminal(int fd);
  ~RawTerminal();
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;

 private:
  int fd_;
  std::optional<termios> saved_;
};

// The window size of the terminal on stdout (or stdin), 24x80 when neither is one.
[[nodiscard]] agent::TtySize terminal_size();

struct AttachOptions {
  bool interactive = false;      // stream this process's stdin
  bool tty = false;              // the process runs on a pseudo-terminal
  bool terminal_output = true;   // write output to this process's stdout/stderr
  runtime::OutputLogWriter* log = nullptr;  // also append output here
};

// Streams `session` until its process exits. Signals go to the process; with a TTY, SIGWINCH
// resizes it.
agent::ExitStatus attach(agent::ExecSession& session, SignalForwarder& signals, const AttachOptions& options);

// Writes all of `data` to fd (retrying short writes); false when the reader went away.
bool write_all(int fd, std::string_view data);

}  // namespace sm::cli
