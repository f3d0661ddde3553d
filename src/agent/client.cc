#include "agent/client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

namespace sm::agent {

namespace {

using Clock = std::chrono::steady_clock;
constexpr Clock::time_point kNoDeadline = Clock::time_point::max();
// Stop reading stdin from its source while this much is waiting to be sent.
constexpr size_t kStdinBacklog = 256u << 10;

Clock::time_point deadline_after(std::chrono::milliseconds d) {
  return d.count() <= 0 ? kNoDeadline : Clock::now() + d;
}

int poll_timeout(Clock::time_point deadline) {
  if (deadline == kNoDeadline) return -1;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return ms <= 0 ? 0 : static_cast<int>(std::min<int64_t>(ms + 1, 1 << 30));
}

void set_nonblock(int fd) {
  int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) throw sys_error("fcntl(O_NONBLOCK)");
}

// Waits for `events` on fd; false when the deadline passed.
bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, poll_timeout(deadline));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) throw sys_error("poll");
  }
}

// Connects the non-blocking socket `fd` to `addr`, giving up at `deadline`. A blocking connect
// has no deadline: with the listener's backlog full (a burst of VMs starting, an agent that
// stopped accepting) it sleeps until someone accepts, for ever. A non-blocking AF_UNIX stream
// connect is never left in progress: with the backlog full it fails at once with EAGAIN and there
// is nothing to poll for, so it is retried after a short pause. EINPROGRESS (the way other
// families report a pending connect) is waited for with poll(), then read from SO_ERROR.
void connect_by(int fd, const sockaddr_un& addr, const std::string& path, Clock::time_point deadline) {
  const auto t0 = Clock::now();
  auto pause = std::chrono::milliseconds(1);
  auto timed_out = [&](const char* why) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
    return Error("timed out connecting to the agent at " + path + " after " + std::to_string(ms) + " ms (" +
                 why + ")");
  };
  for (;;) {
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) return;
    int err = errno;
    if (err == EINTR) continue;
    if (err == EINPROGRESS) {
      if (!wait_fd(fd, POLLOUT, deadline)) throw timed_out("the connection was not established");
      int so_error = 0;
      socklen_t len = sizeof so_error;
      if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len) != 0) throw sys_error("getsockopt(SO_ERROR)");
      if (so_error == 0) return;
      throw sys_error("connect to the agent at " + path, so_error);
    }
    if (err != EAGAIN) throw sys_error("connect to the agent at " + path, err);
    auto now = Clock::now();
    if (now >= deadline) throw timed_out("its listen backlog stayed full: the listener is not accepting");
    std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - now));
    pause = std::min(pause * 2, std::chrono::milliseconds(8));
  }
}

// One connection to the agent: the transport handshake plus framed, deadline-bounded I/O.
class Channel {
 public:
  Channel() = default;

  static Channel open(const Endpoint& ep, Clock::time_point deadline) {
    Channel ch;
    // Non-blocking from the start, so connecting is bounded by the deadline too; everything
    // after it (handshake, frames) is non-blocking I/O with poll().
    ch.fd_ = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!ch.fd_) throw sys_error("socket(AF_UNIX)");
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::string path = ep.socket.string();
    if (path.size() >= sizeof addr.sun_path) throw Error("agent socket path too long: " + path);
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    connect_by(ch.fd_.get(), addr, path, deadline);
    if (ep.vsock_port) ch.vsock_handshake(*ep.vsock_port, deadline);
    return ch;
  }

  [[nodiscard]] int fd() const { return fd_.get(); }
  FrameDecoder& decoder() { return dec_; }
  // The socket, for a caller that leaves the framed protocol (connect_tcp); nothing may have
  // been read into the decoder.
  UniqueFd release() && { return std::move(fd_); }

  void send_all(std::string_view bytes, Clock::time_point deadline) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n > 0) {
        bytes.remove_prefix(static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!wait_fd(fd_.get(), POLLOUT, deadline)) throw Error("timed out sending to the agent");
        continue;
      }
      throw sys_error("send to the agent");
    }
  }

  // Reads what is available into the decoder. False at end of stream.
  bool read_some() {
    char buf[64 << 10];
    for (;;) {
      ssize_t n = ::read(fd_.get(), buf, sizeof buf);
      if (n > 0) {
        dec_.feed(std::string_view(buf, static_cast<size_t>(n)));
        return true;
      }
      if (n == 0) return false;
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      if (errno == ECONNRESET) return false;
      throw sys_error("read from the agent");
    }
  }

  Frame recv(Clock::time_point deadline) {
    for (;;) {
      if (auto f = dec_.next()) return std::move(*f);
      if (!wait_fd(fd_.get(), POLLIN, deadline)) throw Error("timed out waiting for the agent");
      if (!read_some()) {
        dec_.finish();
        throw Error("the agent closed the connection");
      }
    }
  }

 private:
  // Firecracker's host-initiated vsock connection: "CONNECT <port>\n" -> "OK <host port>\n".
  // Read byte by byte so not one byte of the agent's stream is consumed here.
  void vsock_handshake(uint32_t port, Clock::time_point deadline) {
    send_all("CONNECT " + std::to_string(port) + "\n", deadline);
    std::string line;
    while (line.empty() || line.back() != '\n') {
      if (line.size() > 64) throw ProtocolError("the VMM's vsock handshake reply is too long");
      char c;
      ssize_t n = ::read(fd_.get(), &c, 1);
      if (n == 1) {
        line.push_back(c);
        continue;
      }
      if (n == 0 || (n < 0 && errno == ECONNRESET))
        throw Error("vsock port " + std::to_string(port) + " refused the connection (is the agent listening yet?)");
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) throw sys_error("read the vsock handshake");
      if (!wait_fd(fd_.get(), POLLIN, deadline)) throw Error("timed out in the vsock handshake");
    }
    if (line.rfind("OK ", 0) != 0) {
      line.pop_back();
      throw Error("the VMM refused vsock port " + std::to_string(port) + ": \"" + line + "\"");
    }
  }

  UniqueFd fd_;
  FrameDecoder dec_;
};

[[noreturn]] void throw_agent_error(const Frame& f) {
  throw ExecError(decode<ErrorInfo>(f.payload));
}

[[noreturn]] void throw_unexpected(const Frame& f, const char* wanted) {
  throw ProtocolError(std::string("agent sent ") + std::string(type_name(f.type)) + " where " + wanted + " was expected");
}

std::string hello_frames() { return encode_frame(FrameType::kHello, encode(HelloRequest{})); }

HelloReply expect_hello(Channel& ch, Clock::time_point deadline) {
  Frame f = ch.recv(deadline);
  if (f.type == FrameType::kError) throw_agent_error(f);
  if (f.type != FrameType::kHello) throw_unexpected(f, "HELLO");
  HelloReply r = decode<HelloReply>(f.payload);
  if (r.version < HelloRequest{}.min_version || r.version > HelloRequest{}.max_version)
    throw ProtocolError("the agent chose protocol version " + std::to_string(r.version) + ", not one offered");
  return r;
}

void expect_ok(Channel& ch, Clock::time_point deadline) {
  Frame f = ch.recv(deadline);
  if (f.type == FrameType::kError) throw_agent_error(f);
  if (f.type != FrameType::kOk) throw_unexpected(f, "OK");
  decode_ok(f.payload);
}

}  // namespace

ExecError::ExecError(ErrorInfo info)
    : Error("agent: " + std::string(error_code_name(info.code)) + ": " + info.message), info_(std::move(info)) {}

// ---- ExecSession -------------------------------------------------------------------------

struct ExecSession::State {
  Channel ch;
  int64_t pid = 0;
  bool attach_stdin = false;
  ClientOptions options;
  UniqueFd wake;          // eventfd: control frames queued from another thread
  std::mutex mu;          // guards `control` and `pumping`, and socket writes outside wait()
  std::string control;    // encoded SIGNAL / RESIZE frames waiting for the pump
  bool pumping = false;
  bool waited = false;

  void queue_control(std::string frame) {
    std::lock_guard lock(mu);
    if (!pumping) {
      // No pump running: send it now (small frames; bounded by the I/O timeout).
      ch.send_all(frame, deadline_after(options.io_timeout));
      return;
    }
    control += frame;
    uint64_t one = 1;
    ssize_t r = ::write(wake.get(), &one, sizeof one);
    (void)r;
  }
};

ExecSession::ExecSession(std::unique_ptr<State> state) : state_(std::move(state)) {}
ExecSession::ExecSession(ExecSession&&) noexcept = default;
ExecSession& ExecSession::operator=(ExecSession&&) noexcept = default;
ExecSession::~ExecSession() = default;

int64_t ExecSession::pid() const { return state_->pid; }

void ExecSession::signal(int signo) {
  state_->queue_control(encode_frame(FrameType::kSignal, encode(SignalRequest{signo, false})));
}

void ExecSession::resize(TtySize size) { state_->queue_control(encode_frame(FrameType::kResize, encode(size))); }

ExitStatus ExecSession::wait(StreamIo io) {
  State& st = *state_;
  if (st.waited) throw Error("ExecSession::wait() called twice");
  st.waited = true;
  {
    std::lock_guard lock(st.mu);
    st.pumping = true;
  }
  struct Unpump {
    State& st;
    ~Unpump() {
      std::lock_guard lock(st.mu);
      st.pumping = false;
    }
  } unpump{st};

  std::string out;  // frames waiting to be sent
  bool stdin_open = st.attach_stdin;
  bool can_write = true;
  if (stdin_open && io.stdin_fd < 0 && !io.stdin_source) {
    out += encode_frame(FrameType::kStdinEof, {});
    stdin_open = false;
  }
  auto add_stdin = [&](std::string_view data) {
    while (!data.empty()) {
      size_t n = std::min(data.size(), kDataChunk);
      encode_frame(out, FrameType::kStdin, data.substr(0, n));
      data.remove_prefix(n);
    }
  };
  auto end_stdin = [&] {
    out += encode_frame(FrameType::kStdinEof, {});
    stdin_open = false;
  };

  // Frames already decoded (start() may have read EXIT along with STARTED) come first.
  auto handle_frames = [&]() -> std::optional<ExitStatus> {
    while (auto f = st.ch.decoder().next()) {
      switch (f->type) {
        case FrameType::kStdout:
          if (io.on_stdout) io.on_stdout(f->payload);
          break;
        case FrameType::kStderr:
          if (io.on_stderr) io.on_stderr(f->payload);
          break;
        case FrameType::kExit:
          return decode<ExitStatus>(f->payload);
        case FrameType::kError:
          throw_agent_error(*f);
        default:
          throw_unexpected(*f, "STDOUT, STDERR or EXIT");
      }
    }
    return std::nullopt;
  };

  for (;;) {
    if (auto exit = handle_frames()) return *exit;
    {
      std::lock_guard lock(st.mu);
      out += st.control;
      st.control.clear();
    }
    if (stdin_open && io.stdin_source && can_write && out.size() < kStdinBacklog) {
      std::string chunk = io.stdin_source();
      if (chunk.empty()) end_stdin();
      else add_stdin(chunk);
    }

    pollfd fds[3];
    int nfds = 0;
    fds[nfds++] = {st.ch.fd(), static_cast<short>(POLLIN | (!out.empty() && can_write ? POLLOUT : 0)), 0};
    fds[nfds++] = {st.wake.get(), POLLIN, 0};
    int stdin_idx = -1;
    if (stdin_open && io.stdin_fd >= 0 && can_write && out.size() < kStdinBacklog) {
      stdin_idx = nfds;
      fds[nfds++] = {io.stdin_fd, POLLIN, 0};
    }
    // With a pull source that still has data, do not sleep: loop back to pull more.
    bool source_ready = stdin_open && io.stdin_source && can_write && out.size() < kStdinBacklog;
    int r = ::poll(fds, static_cast<nfds_t>(nfds), source_ready ? 0 : -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw sys_error("poll");
    }

    if (fds[1].revents & POLLIN) {
      uint64_t v;
      ssize_t n = ::read(st.wake.get(), &v, sizeof v);
      (void)n;
    }
    if (stdin_idx >= 0 && (fds[stdin_idx].revents & (POLLIN | POLLHUP | POLLERR))) {
      char buf[kDataChunk];
      ssize_t n = ::read(io.stdin_fd, buf, sizeof buf);
      if (n > 0) add_stdin(std::string_view(buf, static_cast<size_t>(n)));
      else if (n == 0 || (errno != EINTR && errno != EAGAIN)) end_stdin();
    }
    if ((fds[0].revents & POLLOUT) && !out.empty()) {
      ssize_t n = ::send(st.ch.fd(), out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) out.erase(0, static_cast<size_t>(n));
      else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        // The agent stopped reading (it is closing); what it says next explains why.
        can_write = false;
        out.clear();
        stdin_open = false;
      }
    }
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      bool open = st.ch.read_some();
      if (auto exit = handle_frames()) return *exit;
      if (!open) {
        st.ch.decoder().finish();
        throw Error("the agent closed the connection before the process exited (did the VM stop?)");
      }
    }
  }
}

// ---- Client ------------------------------------------------------------------------------

Client::Client(Endpoint endpoint, ClientOptions options) : endpoint_(std::move(endpoint)), options_(options) {}

HelloReply Client::hello() {
  auto deadline = deadline_after(options_.io_timeout);
  Channel ch = Channel::open(endpoint_, deadline);
  ch.send_all(hello_frames(), deadline);
  return expect_hello(ch, deadline);
}

HelloReply Client::wait_ready(Clock::time_point deadline) {
  const auto cap = std::max(options_.ready_poll_max, std::chrono::milliseconds(1));
  auto delay = std::chrono::milliseconds(1);
  std::string last;
  for (;;) {
    try {
      auto attempt = std::min(deadline, deadline_after(options_.io_timeout));
      Channel ch = Channel::open(endpoint_, attempt);
      ch.send_all(hello_frames(), attempt);
      return expect_hello(ch, attempt);
    } catch (const ProtocolError&) {
      throw;  // something answered, and it is not a well-behaved agent: retrying will not help
    } catch (const ExecError&) {
      throw;
    } catch (const Error& e) {
      last = e.what();
    }
    if (Clock::now() + delay >= deadline)
      throw Error("the guest agent did not become ready in time (last attempt: " + last + ")");
    std::this_thread::sleep_for(delay);
    delay = std::min(delay * 2, cap);
  }
}

ExecSession Client::start(const ExecRequest& request) {
  auto deadline = deadline_after(options_.io_timeout);
  auto st = std::make_unique<ExecSession::State>();
  st->options = options_;
  st->attach_stdin = request.attach_stdin;
  st->wake = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!st->wake) throw sys_error("eventfd");
  st->ch = Channel::open(endpoint_, deadline);
  // HELLO and the request in one write: one round trip per exec.
  std::string frames = hello_frames();
  encode_frame(frames, FrameType::kExec, encode(request));
  st->ch.send_all(frames, deadline);
  expect_hello(st->ch, deadline);
  Frame f = st->ch.recv(deadline);
  if (f.type == FrameType::kError) throw_agent_error(f);
  if (f.type != FrameType::kStarted) throw_unexpected(f, "STARTED");
  st->pid = decode<Started>(f.payload).pid;
  return ExecSession(std::move(st));
}

int64_t Client::start_detached_main(ExecRequest request) {
  request.main = true;
  request.detach = true;
  request.attach_stdin = false;
  request.tty.reset();
  return start(request).pid();
}

ExecResult Client::exec(ExecRequest request, std::string_view stdin_data) {
  auto t0 = Clock::now();
  if (!stdin_data.empty()) request.attach_stdin = true;
  ExecSession s = start(request);
  ExecResult r;
  StreamIo io;
  size_t total = 0;
  auto collect = [this, &total](std::string* into) {
    return [this, &total, into](std::string_view d) {
      total += d.size();
      if (total > options_.max_output)
        throw Error("the process wrote more than " + std::to_string(options_.max_output) +
                    " bytes of output; it was stopped (stream it with Client::start instead)");
      into->append(d);
    };
  };
  io.on_stdout = collect(&r.out);
  io.on_stderr = collect(&r.err);
  if (request.attach_stdin) {
    size_t off = 0;
    io.stdin_source = [stdin_data, off]() mutable {
      size_t n = std::min<size_t>(stdin_data.size() - off, 1u << 20);
      std::string chunk(stdin_data.substr(off, n));
      off += n;
      return chunk;
    };
  }
  r.status = s.wait(std::move(io));
  r.duration = Clock::now() - t0;
  return r;
}

void Client::write_file(const std::string& path, std::string_view data, uint32_t mode, bool make_parents) {
  auto deadline = [&] { return deadline_after(options_.io_timeout); };
  Channel ch = Channel::open(endpoint_, deadline());
  WriteFileRequest req;
  req.path = path;
  req.mode = mode;
  req.size = data.size();
  req.make_parents = make_parents;
  std::string frames = hello_frames();
  encode_frame(frames, FrameType::kWriteFile, encode(req));
  try {
    ch.send_all(frames, deadline());
    while (!data.empty()) {
      size_t n = std::min(data.size(), kDataChunk);
      ch.send_all(encode_frame(FrameType::kFileData, data.substr(0, n)), deadline());
      data.remove_prefix(n);
    }
  } catch (const ExecError&) {
    throw;
  } catch (const Error& e) {
    // The agent may have stopped reading because it refused the request; its reply says why.
    try {
      expect_hello(ch, deadline());
      expect_ok(ch, deadline());
    } catch (const ExecError&) {
      throw;
    } catch (const Error&) {
    }
    throw Error(std::string("write_file ") + path + ": " + e.what());
  }
  expect_hello(ch, deadline());
  expect_ok(ch, deadline());
}

std::string Client::read_file(const std::string& path, uint64_t max_size) {
  auto deadline = [&] { return deadline_after(options_.io_timeout); };
  Channel ch = Channel::open(endpoint_, deadline());
  std::string frames = hello_frames();
  encode_frame(frames, FrameType::kReadFile, encode(ReadFileRequest{path, max_size}));
  ch.send_all(frames, deadline());
  expect_hello(ch, deadline());
  Frame f = ch.recv(deadline());
  if (f.type == FrameType::kError) throw_agent_error(f);
  if (f.type != FrameType::kFileInfo) throw_unexpected(f, "FILE_INFO");
  FileInfo info = decode<FileInfo>(f.payload);
  if (info.size > max_size) throw ProtocolError("the agent announced a file larger than the limit asked for");
  std::string data;
  data.reserve(static_cast<size_t>(info.size));
  for (;;) {
    f = ch.recv(deadline());
    if (f.type == FrameType::kFileData) {
      if (data.size() + f.payload.size() > max_size) throw ProtocolError("the agent sent more file data than the limit");
      data += f.payload;
    } else if (f.type == FrameType::kOk) {
      decode_ok(f.payload);
      return data;
    } else if (f.type == FrameType::kError) {
      throw_agent_error(f);
    } else {
      throw_unexpected(f, "FILE_DATA or OK");
    }
  }
}

void Client::signal_main(int signo) {
  auto deadline = deadline_after(options_.io_timeout);
  Channel ch = Channel::open(endpoint_, deadline);
  std::string frames = hello_frames();
  encode_frame(frames, FrameType::kSignal, encode(SignalRequest{signo, true}));
  ch.send_all(frames, deadline);
  expect_hello(ch, deadline);
  expect_ok(ch, deadline);
}

void Client::power_off(int status) {
  auto deadline = deadline_after(options_.io_timeout);
  Channel ch = Channel::open(endpoint_, deadline);
  std::string frames = hello_frames();
  encode_frame(frames, FrameType::kPowerOff, encode(PowerOffRequest{status}));
  ch.send_all(frames, deadline);
  expect_hello(ch, deadline);
  try {
    expect_ok(ch, deadline);
  } catch (const ExecError&) {
    throw;
  } catch (const ProtocolError&) {
    throw;
  } catch (const Error&) {
    // The VM may be gone before the OK reaches us: that is what was asked for.
  }
}

RestoreReply Client::restore(const RestoreRequest& request) {
  std::string payload = encode(request);  // refuses what the agent would, before connecting
  auto deadline = deadline_after(options_.io_timeout);
  Channel ch = Channel::open(endpoint_, deadline);
  std::string frames = hello_frames();
  encode_frame(frames, FrameType::kRestore, payload);
  ch.send_all(frames, deadline);
  HelloReply h = expect_hello(ch, deadline);
  if (h.version < kRestoreVersion)
    throw ExecError(ErrorInfo{ErrorCode::kUnsupportedVersion,
                              h.agent + " speaks protocol version " + std::to_string(h.version) +
                                  ", which has no RESTORE (the snapshot's agent predates restore support)"});
  Frame f = ch.recv(deadline);
  if (f.type == FrameType::kError) throw_agent_error(f);
  if (f.type != FrameType::kOk) throw_unexpected(f, "OK");
  return decode<RestoreReply>(f.payload);
}

void Client::configure_network(const NetworkRequest& request) {
  std::string payload = encode(request);  // refuses what the agent would, before connecting
  auto deadline = deadline_after(options_.io_timeout);
  Channel ch = Channel::open(endpoint_, deadline);
  std::string frames = hello_frames();
  encode_frame(frames, FrameType::kNetwork, payload);
  ch.send_all(frames, deadline);
  HelloReply h = expect_hello(ch, deadline);
  if (h.version < kNetworkVersion)
    throw ExecError(ErrorInfo{ErrorCode::kUnsupportedVersion,
                              h.agent + " speaks protocol version " + std::to_string(h.version) +
                                  ", which has no NETWORK (the VM's agent predates networking)"});
  expect_ok(ch, deadline);
}

// ---- TCP forwarding ----------------------------------------------------------------------

UniqueFd connect_tcp(const std::filesystem::path& vsock_uds, uint16_t guest_port, std::chrono::milliseconds timeout) {
  const std::string what = "cannot connect to port " + std::to_string(guest_port) + " in the VM: ";
  if (guest_port == 0) throw Error(what + "port 0 is not a port");
  auto deadline = deadline_after(timeout);
  Channel ch;
  try {
    ch = Channel::open(Endpoint::vsock(vsock_uds, kTcpForwardPort), deadline);
    ch.send_all("TCP " + std::to_string(guest_port) + "\n", deadline);
  } catch (const ProtocolError&) {
    throw;
  } catch (const Error& e) {
    throw Error(what + e.what());
  }
  // The reply line, byte by byte: what follows it is the guest service's stream.
  constexpr size_t kMaxReply = 256;
  std::string line;
  while (line.empty() || line.back() != '\n') {
    if (line.size() >= kMaxReply) throw ProtocolError(what + "the agent's reply line is too long");
    char c;
    ssize_t n = ::read(ch.fd(), &c, 1);
    if (n == 1) {
      line.push_back(c);
      continue;
    }
    if (n == 0 || (n < 0 && errno == ECONNRESET))
      throw Error(what + "the agent closed the connection without an answer (does it predate TCP forwarding?)");
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) throw sys_error(what + "read the agent's reply");
    if (!wait_fd(ch.fd(), POLLIN, deadline)) throw Error(what + "timed out waiting for the agent's answer");
  }
  line.pop_back();
  if (line == "OK") {
    UniqueFd fd = std::move(ch).release();
    int fl = ::fcntl(fd.get(), F_GETFL);
    if (fl < 0 || ::fcntl(fd.get(), F_SETFL, fl & ~O_NONBLOCK) != 0) throw sys_error("fcntl(~O_NONBLOCK)");
    return fd;
  }
  if (line.rfind("ERR ", 0) == 0) {
    std::string msg = line.substr(4);
    // The guest's words reach a terminal: printable ASCII only.
    for (char& c : msg)
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
    throw Error(what + msg);
  }
  throw ProtocolError(what + "the agent's reply is neither OK nor ERR");
}

// ---- ReadyListener -----------------------------------------------------------------------

ReadyListener::ReadyListener(std::filesystem::path socket_path) : path_(std::move(socket_path)) {
  listener_ = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener_) throw sys_error("socket(AF_UNIX)");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string p = path_.string();
  if (p.size() >= sizeof addr.sun_path) throw Error("readiness socket path too long: " + p);
  std::memcpy(addr.sun_path, p.c_str(), p.size() + 1);
  ::unlink(p.c_str());
  if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) throw sys_error("bind " + p);
  if (::listen(listener_.get(), 4) != 0) throw sys_error("listen " + p);
  set_nonblock(listener_.get());
}

ReadyListener::~ReadyListener() {
  listener_.reset();
  ::unlink(path_.c_str());
}

HelloReply ReadyListener::wait(Clock::time_point deadline, const std::function<bool()>& give_up) {
  for (;;) {
    auto slice = give_up ? std::min(deadline, Clock::now() + std::chrono::milliseconds(50)) : deadline;
    if (!wait_fd(listener_.get(), POLLIN, slice)) {
      if (give_up && give_up()) throw Error("the VM ended before its guest agent reported ready");
      if (Clock::now() < deadline) continue;
      throw Error("the guest agent did not report ready in time (nothing connected to " + path_.string() + ")");
    }
    int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) continue;
      throw sys_error("accept on " + path_.string());
    }
    UniqueFd conn(fd);
    FrameDecoder dec;
    for (;;) {
      if (auto f = dec.next()) {
        if (f->type != FrameType::kHello) throw_unexpected(*f, "HELLO");
        return decode<HelloReply>(f->payload);
      }
      if (!wait_fd(conn.get(), POLLIN, deadline)) throw Error("timed out reading the agent's readiness HELLO");
      char buf[4096];
      ssize_t n = ::read(conn.get(), buf, sizeof buf);
      if (n > 0) dec.feed(std::string_view(buf, static_cast<size_t>(n)));
      else if (n == 0) {
        dec.finish();
        throw ProtocolError("the readiness connection closed before a HELLO");
      } else if (errno != EINTR && errno != EAGAIN) {
        throw sys_error("read the readiness HELLO");
      }
    }
  }
}

}  // namespace sm::agent
