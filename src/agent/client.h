// The host side of the guest-agent protocol (docs/agent-protocol.md).
//
// A Client names where the agent listens: the VMM's vsock Unix socket (Firecracker's model: the
// client writes "CONNECT <port>\n" and reads "OK <n>\n" before the byte stream starts) or,
// in tests, the agent's own Unix socket (sm-agent --no-init). Every request opens its own
// connection, so requests from several threads run concurrently and independently.
//
// Nothing the agent sends is trusted: frames and JSON are capped and validated by the decoder,
// collected output is capped, and anything malformed ends that request with an sm::Error
// (agent::ProtocolError, a GuestError) without affecting the VM or other requests.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "agent/protocol.h"
#include "common/unique_fd.h"

namespace sm::agent {

struct Endpoint {
  std::filesystem::path socket;         // a Unix socket path
  std::optional<uint32_t> vsock_port;   // set: `socket` is the VMM's vsock socket; ask for this port

  [[nodiscard]] static Endpoint unix_socket(std::filesystem::path path) { return {std::move(path), std::nullopt}; }
  [[nodiscard]] static Endpoint vsock(std::filesystem::path vmm_socket, uint32_t port = kDefaultPort) {
    return {std::move(vmm_socket), port};
  }
};

struct ClientOptions {
  // Longest silence tolerated while connecting, in the handshake and in file transfers. Exec
  // sessions have no such limit (a process may be silent for hours); use ExecRequest::timeout.
  std::chrono::milliseconds io_timeout{30000};
  // Client::exec() fails when stdout + stderr exceed this (the process is then killed).
  size_t max_output = 256u << 20;
  // wait_ready() retries with a pause that starts at 1 ms and doubles up to this. 50 ms suits a
  // booting VM; a VM restored from a snapshot answers within milliseconds, so poll it with 2-5.
  std::chrono::milliseconds ready_poll_max{50};
};

// The agent refused or could not start a request. For exec, exit_code() is what a Docker-like
// CLI exits with: 127 command not found, 126 not executable or set-up failure, 125 otherwise.
class ExecError : public Error {
 public:
  explicit ExecError(ErrorInfo info);
  [[nodiscard]] ErrorCode code() const { return info_.code; }
  [[nodiscard]] const std::string& agent_message() const { return info_.message; }
  [[nodiscard]] int exit_code() const { return exit_code_for(info_.code); }

 private:
  ErrorInfo info_;
};

struct ExecResult {
  std::string out;  // stdout (with a TTY: the terminal's output, stderr included)
  std::string err;  // stderr
  ExitStatus status;
  std::chrono::nanoseconds duration{0};  // from connecting to the EXIT frame
  [[nodiscard]] int exit_code() const { return status.code; }
};

// Where a streaming exec's stdio comes from and goes to. Callbacks run on the thread that
// called ExecSession::wait().
struct StreamIo {
  int stdin_fd = -1;  // read until EOF and sent as stdin (not closed by the session)
  // Alternative to stdin_fd: returns the next chunk of stdin, or an empty string at EOF. It may
  // block; output is not read while it does.
  std::function<std::string()> stdin_source;
  std::function<void(std::string_view)> on_stdout;
  std::function<void(std::string_view)> on_stderr;
};

// A started process. Destroying it closes the connection, which kills a process that has not
// exited (except the main process, whose output then goes to the VM console).
class ExecSession {
 public:
  ExecSession(ExecSession&&) noexcept;
  ExecSession& operator=(ExecSession&&) noexcept;
  ~ExecSession();

  [[nodiscard]] int64_t pid() const;
  // Thread-safe, also while wait() runs on another thread (e.g. to forward Ctrl-C).
  void signal(int signo);
  void resize(TtySize size);
  // Streams stdio until the process exits; returns how it ended. Call once.
  ExitStatus wait(StreamIo io = {});

 private:
  friend class Client;
  struct State;
  explicit ExecSession(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

class Client {
 public:
  explicit Client(Endpoint endpoint, ClientOptions options = {});

  [[nodiscard]] const Endpoint& endpoint() const { return endpoint_; }

  // Connects and exchanges HELLO, retrying until the agent answers or `deadline` passes (then
  // throws sm::Error with the last failure). Use while the VM boots, and after a snapshot
  // restore (connections open at capture time do not survive it; the agent's listener does).
  // Retries pause 1 ms, doubling up to ClientOptions::ready_poll_max.
  HelloReply wait_ready(std::chrono::steady_clock::time_point deadline);
  // One attempt; throws if the agent cannot be reached or does not speak the protocol.
  HelloReply hello();

  // Runs a process to completion, collecting its output. `stdin_data`, when not empty, is
  // streamed as its stdin (and implies request.attach_stdin). Throws ExecError when it cannot start.
  [[nodiscard]] ExecResult exec(ExecRequest request, std::string_view stdin_data = {});
  // Starts a process and returns once it runs; stream its stdio with ExecSession::wait().
  [[nodiscard]] ExecSession start(const ExecRequest& request);
  // Starts the container's main process detached (its output goes to the VM console, its end
  // powers the VM off). Returns its pid.
  int64_t start_detached_main(ExecRequest request);

  // Writes `data` to an absolute path in the guest, atomically (temporary file + rename).
  void write_file(const std::string& path, std::string_view data, uint32_t mode = 0644,
                  bool make_parents = false);
  // Reads a regular file; fails if it is larger than `max_size`.
  [[nodiscard]] std::string read_file(const std::string& path, uint64_t max_size = 64u << 20);

  // Sends `signo` to the main process.
  void signal_main(int signo);
  // Asks the agent to stop everything and power the VM off with `status`.
  void power_off(int status);

  // Right after a snapshot restore: sets the clone's wall clock, entropy (the CRNG reseeds at
  // once) and hostname (protocol v2). Returns what the agent applied (all true as PID 1 in a
  // VM). Throws sm::Error before connecting for a request the agent would refuse (entropy size,
  // hostname), ExecError code kRestoreFailed when a step failed in the guest (the message names
  // the step and errno), and ExecError code kUnsupportedVersion for an agent that speaks only v1.
  RestoreReply restore(const RestoreRequest& request);

  // Configures the guest's network (protocol v3): lo up, the interface with request.interface->mac
  // (MTU, up, addresses, default routes), /etc/resolv.conf and /etc/hosts. Idempotent: send it
  // again after a snapshot restore. Throws sm::Error before connecting for a request the agent
  // would refuse (network_problem()), ExecError code kNetworkFailed when a step failed in the
  // guest (the message names the step and errno), kUnsupportedVersion for an agent before v3.
  void configure_network(const NetworkRequest& request);

 private:
  Endpoint endpoint_;
  ClientOptions options_;
};

// Opens a TCP connection to 127.0.0.1:`guest_port` (else [::1]) inside the VM, through the agent's
// forwarder on vsock port kTcpForwardPort: connects to the VMM's vsock Unix socket `vsock_uds`,
// does the "CONNECT 1026" handshake, sends "TCP <port>\n" and reads the agent's "OK\n". Returns
// the socket, blocking (O_NONBLOCK cleared) and close-on-exec, carrying the raw byte stream;
// shutdown(SHUT_WR) on it half-closes the guest side too. `timeout` bounds everything up to
// the OK. Throws sm::Error "cannot connect to port 8080 in the VM: connection refused" (the
// agent's reason, or the transport's), ProtocolError for a malformed reply.
[[nodiscard]] UniqueFd connect_tcp(const std::filesystem::path& vsock_uds, uint16_t guest_port,
                                   std::chrono::milliseconds timeout);

// Receives the agent's readiness notification: the agent connects to the host once it is
// listening and sends a HELLO (boot option sm.notify=PORT; the VMM forwards that guest-to-host
// vsock connection to the Unix socket "<vsock socket>_<PORT>"; sm-agent --notify unix:PATH in
// tests). Listening before the VM starts avoids polling wait_ready() while it boots.
class ReadyListener {
 public:
  explicit ReadyListener(std::filesystem::path socket_path);
  ~ReadyListener();
  ReadyListener(const ReadyListener&) = delete;
  ReadyListener& operator=(const ReadyListener&) = delete;

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  // Waits for the agent's HELLO; throws sm::Error when `deadline` passes first, or when
  // `give_up` (polled every 50 ms, e.g. "has the VM ended?") returns true.
  HelloReply wait(std::chrono::steady_clock::time_point deadline, const std::function<bool()>& give_up = {});

 private:
  std::filesystem::path path_;
  UniqueFd listener_;
};

}  // namespace sm::agent
