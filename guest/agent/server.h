// The agent's protocol server: one single-threaded epoll loop over the listening socket, every
// host connection, every exec'd process's stdio, and a signalfd for SIGCHLD (reaping all
// children, orphans included, which is PID 1's duty) and forwarded signals. Single-threaded so
// that reaping, fork and session state never race. Each connection carries one request at a time
// (docs/agent-protocol.md); concurrency comes from several connections. A second, optional
// listener takes TCP forwarding connections, each served by a forked child (tcp_forward.h).
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

#include "common/unique_fd.h"

namespace sm::agent {

struct ServerOptions {
  bool init = false;                   // PID 1 in a VM (reported in HELLO; signals forwarded)
  std::string hostname;                // reported in HELLO, default HOSTNAME for processes
  std::filesystem::path users_root = "/";  // where etc/passwd and etc/group are read from
  int console_fd = 1;                  // where a detached or disconnected main process writes
  // After the main process's EXIT is sent, how long to wait for the host to close before the
  // VM powers off (the EXIT frame must reach the host first).
  std::chrono::milliseconds main_exit_grace{2000};
};

class Server {
 public:
  // `listener`: a listening stream socket (AF_VSOCK or AF_UNIX), non-blocking or not.
  // `tcp_listener`, when valid: the TCP forwarder's (vsock port kTcpForwardPort in a VM).
  Server(UniqueFd listener, ServerOptions options, UniqueFd tcp_listener = {});
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Serves until the main process has ended, a POWER_OFF request arrived, or (without init)
  // SIGTERM/SIGINT. Returns the status to power off (or exit) with. On return every process
  // the agent started has been sent SIGKILL.
  [[nodiscard]] int run();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sm::agent
