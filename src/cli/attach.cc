#include "cli/attach.h"

#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>

namespace sm::cli {
namespace {

sigset_t forwarded_set() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH}) sigaddset(&set, s);
  return set;
}

}  // namespace

SignalForwarder::SignalForwarder() {
  sigset_t set = forwarded_set();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  thread_ = std::thread([this] { loop(); });
}

SignalForwarder::~SignalForwarder() {
  done_ = true;
  thread_.join();
  // The signals stay blocked: a pending one would otherwise kill the process on its way out.
}

void SignalForwarder::set_target(std::function<void(int)> target) {
  std::lock_guard lock(mu_);
  target_ = std::move(target);
}

void SignalForwarder::loop() {
  sigset_t set = forwarded_set();
  timespec tick{0, 100'000'000};
  while (!done_) {
    int sig = ::sigtimedwait(&set, nullptr, &tick);
    if (sig < 0) continue;
    if (sig != SIGWINCH) {
      int none = 0;
      first_signal_.compare_exchange_strong(none, sig);
      interrupted_ = true;
    }
    std::lock_guard lock(mu_);
    if (target_) target_(sig);
  }
}

RawTerminal::RawTerminal(int fd) : fd_(fd) {
  termios t{};
  if (!::isatty(fd) || ::tcgetattr(fd, &t) != 0) return;
  saved_ = t;
  ::cfmakeraw(&t);
  ::tcsetattr(fd, TCSANOW, &t);
}

RawTerminal::~RawTerminal() {
  if (saved_) ::tcsetattr(fd_, TCSANOW, &*saved_);
}

agent::TtySize terminal_size() {
  winsize ws{};
  for (int fd : {STDOUT_FILENO, STDIN_FILENO})
    if (::ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) return {ws.ws_row, ws.ws_col};
  return {};
}

bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

agent::ExitStatus attach(agent::ExecSession& session, SignalForwarder& signals, const AttachOptions& o) {
  const bool tty = o.tty;
  signals.set_target([&session, tty](int sig) {
    try {
      if (sig == SIGWINCH) {
        if (tty) session.resize(terminal_size());
      } else {
        session.signal(sig);
      }
    } catch (const std::exception&) {
      // The process may have just exited; wait() reports how it ended.
    }
  });
  agent::StreamIo io;
  if (o.interactive) io.stdin_fd = STDIN_FILENO;
  io.on_stdout = [&o](std::string_view d) {
    if (o.terminal_output) write_all(STDOUT_FILENO, d);
    if (o.log) o.log->append(runtime::Stream::kStdout, d);
  };
  io.on_stderr = [&o](std::string_view d) {
    if (o.terminal_output) write_all(STDERR_FILENO, d);
    if (o.log) o.log->append(runtime::Stream::kStderr, d);
  };
  std::optional<RawTerminal> raw;
  if (tty && o.interactive) raw.emplace(STDIN_FILENO);
  agent::ExitStatus st;
  try {
    st = session.wait(std::move(io));
  } catch (...) {
    signals.set_target({});
    throw;
  }
  signals.set_target({});
  return st;
}

}  // namespace sm::cli
