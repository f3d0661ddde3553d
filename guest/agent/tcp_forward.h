// The agent's TCP forwarder: what the host's connect_tcp() (src/agent/client.h) and the library's
// Vm::connect(guest_port) talk to. The agent listens on a second vsock port, kTcpForwardPort
// (1026). Each connection carries one line "TCP <port>\n" (at most kMaxTcpRequestLine bytes,
// within kTcpRequestDeadline), which the forwarder answers "OK\n" once it has connected to
// 127.0.0.1:<port> inside the guest (else [::1]), or "ERR <message>\n" before closing; then it
// relays bytes both ways until both directions are shut, passing each half-close on with
// shutdown(2).
//
// Threads and processes: the server accepts on its loop and forks one child per connection
// (fork_tcp_forward), so a slow peer never blocks the agent. The child keeps only the
// connection and stdio, unblocks signals and runs serve_tcp_forward() to the end, then _exits.
// The server remembers the child's pid so that its reaper knows it is not an exec'd process
// (it has no session and sends no EXIT), and kills the children when the agent stops.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>

#include "agent/protocol.h"
#include "common/unique_fd.h"

namespace sm::agent {

// The port in "TCP <port>" (without the '\n'; a trailing '\r' is accepted): decimal 1..65535,
// no sign, no leading zero. nullopt for anything else.
[[nodiscard]] std::optional<uint16_t> parse_tcp_request(std::string_view line);

// Serves one forwarded connection on `conn` (a connected stream socket) to the end: request
// line, connect, answer, relay. Never throws; returns when both directions are shut or either
// side failed. `request_deadline` bounds the wait for the request line (tests shorten it).
void serve_tcp_forward(int conn, std::chrono::milliseconds request_deadline = kTcpRequestDeadline);

// Copies bytes a -> b and b -> a until each direction has seen end of stream and passed it on
// (shutdown(SHUT_WR) on the other side), or a socket fails. Both fds are made non-blocking.
void relay_bidirectional(int a, int b);

// Forks a child that serves `conn` (see above) and exits with 0. Returns the child's pid, or -1
// with errno set. The parent's copy of `conn` is closed either way. Call from a single-threaded
// process (the agent): the child runs without exec.
[[nodiscard]] pid_t fork_tcp_forward(UniqueFd conn);

}  // namespace sm::agent
