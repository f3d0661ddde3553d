#include "server.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "agent/protocol.h"
#include "log.h"
#include "launch.h"
#include "network.h"
#include "restore.h"
#include "tcp_forward.h"
#include "users.h"

#ifndef SM_AGENT_VERSION
#define SM_AGENT_VERSION "0"
#endif

namespace sm::agent {

namespace {

using Clock = std::chrono::steady_clock;

// Above this much unsent output on a connection the agent stops reading the process's pipes
// (and file data), so a slow host slows the workload down instead of growing agent memory.
constexpr size_t kOutHighWater = 512 << 10;
// Above this much stdin not yet taken by the process, the agent stops decoding the connection.
constexpr size_t kStdinHighWater = 4 << 20;
constexpr size_t kMaxConnections = 256;
// TCP forwarding children alive at once; a connection beyond is closed at once.
constexpr size_t kMaxTcpForwards = 1024;

void set_nonblock(int fd) {
  int fl = ::fcntl(fd, F_GETFL);
  if (fl >= 0) ::fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

int exit_code_of(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return 255;
}

// Level-triggered epoll with one handler per fd. Handlers are held by shared_ptr so one may
// remove itself (or others) while running.
class Poller {
 public:
  using Handler = std::function<void(uint32_t)>;

  Poller() : ep_(::epoll_create1(EPOLL_CLOEXEC)) {
    if (!ep_) throw errno_error("epoll_create1");
  }
  void add(int fd, uint32_t events, Handler h) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) throw errno_error("epoll_ctl(ADD)");
    entries_[fd] = Entry{events, std::make_shared<Handler>(std::move(h))};
  }
  void set(int fd, uint32_t events) {
    auto it = entries_.find(fd);
    if (it == entries_.end() || it->second.events == events) return;
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (::epoll_ctl(ep_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) throw errno_error("epoll_ctl(MOD)");
    it->second.events = events;
  }
  void remove(int fd) {
    if (entries_.erase(fd)) ::epoll_ctl(ep_.get(), EPOLL_CTL_DEL, fd, nullptr);
  }
  void dispatch(int timeout_ms) {
    epoll_event evs[64];
    int n = ::epoll_wait(ep_.get(), evs, 64, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) return;
      throw errno_error("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      auto it = entries_.find(evs[i].data.fd);
      if (it == entries_.end()) continue;  // removed by an earlier handler in this batch
      auto h = it->second.handler;
      (*h)(evs[i].events);
    }
  }

 private:
  struct Entry {
    uint32_t events;
    std::shared_ptr<Handler> handler;
  };
  UniqueFd ep_;
  std::unordered_map<int, Entry> entries_;
};

struct Conn;

// One exec'd process and the agent's ends of its stdio.
struct Session {
  pid_t pid = -1;
  Conn* conn = nullptr;  // null when detached or the host went away
  bool main = false;
  bool tty = false;
  bool has_stdin = false;  // the host may send STDIN (attached stdin or a tty)
  UniqueFd in;           // stdin pipe write end, or a dup of the pty master
  UniqueFd out, err;     // stdout/stderr pipe read ends; with a tty, `out` is the pty master
  std::string stdin_buf;
  bool stdin_eof = false;     // STDIN_EOF received: close `in` once stdin_buf is written
  bool stdin_closed = false;  // the process closed its stdin (EPIPE) or we did
  std::optional<Clock::time_point> deadline;
  bool timed_out = false;
  bool done = false;
};

struct Conn {
  enum class State { kHello, kIdle, kExec, kWriteFile, kReadFile, kMainExited, kClosing };
  uint64_t id = 0;
  UniqueFd fd;
  FrameDecoder dec;
  std::string out;
  size_t out_off = 0;
  State state = State::kHello;
  uint32_t version = 0;  // negotiated in HELLO
  Session* session = nullptr;
  bool eof = false;
  bool dead = false;
  // WRITE_FILE in progress
  UniqueFd file;
  std::string tmp_path, final_path;
  uint64_t remaining = 0, written = 0;
  std::optional<ErrorInfo> file_error;
  // READ_FILE in progress
  uint64_t read_left = 0, read_sent = 0;
  // After the main process's EXIT: power off when the host closes or at this deadline.
  std::optional<Clock::time_point> grace_deadline;
  int main_status = 0;

  [[nodiscard]] size_t pending() const { return out.size() - out_off; }
};

}  // namespace

struct Server::Impl {
  ServerOptions opts;
  Poller poller;
  UniqueFd listener;
  UniqueFd sigfd;
  uint64_t next_conn_id = 1;
  std::map<uint64_t, std::unique_ptr<Conn>> conns;
  std::unordered_map<pid_t, std::unique_ptr<Session>> sessions;
  std::vector<pid_t> started_groups;  // every process group we created, killed on the way out
  Session* main_session = nullptr;
  bool main_started = false;
  std::optional<int> stop_status;
  UniqueFd tcp_listener;
  // Forked TCP forwarders (tcp_forward.h): reaped like any child, but they are no session and
  // their exit reports nothing.
  std::unordered_set<pid_t> tcp_forwards;

  Impl(UniqueFd l, ServerOptions o, UniqueFd t) : opts(std::move(o)), listener(std::move(l)), tcp_listener(std::move(t)) {}

  // ---- set-up ----------------------------------------------------------------------------

  void start() {
    set_nonblock(listener.get());
    poller.add(listener.get(), EPOLLIN, [this](uint32_t) { on_accept(); });
    if (tcp_listener) {
      set_nonblock(tcp_listener.get());
      poller.add(tcp_listener.get(), EPOLLIN, [this](uint32_t) { on_tcp_accept(); });
    }

    sigset_t set;
    sigemptyset(&set);
    for (int s : {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2}) sigaddset(&set, s);
    if (::sigprocmask(SIG_BLOCK, &set, nullptr) != 0) throw errno_error("sigprocmask");
    sigfd = UniqueFd(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!sigfd) throw errno_error("signalfd");
    poller.add(sigfd.get(), EPOLLIN, [this](uint32_t) { on_signal(); });
    ::signal(SIGPIPE, SIG_IGN);
  }

  int run() {
    start();
    while (!stop_status) {
      poller.dispatch(next_timeout_ms());
      check_deadlines();
      collect_garbage();
    }
    // Last chance for replies (the OK to POWER_OFF) to leave; best effort, never blocks.
    for (auto& [id, c] : conns) flush(*c);
    for (pid_t pg : started_groups) ::kill(-pg, SIGKILL);
    for (pid_t pid : tcp_forwards) ::kill(pid, SIGKILL);
    return *stop_status;
  }

  // A TCP forwarding connection: a child of its own serves it (fork_tcp_forward), so the relay
  // never blocks this loop. SIGCHLD is read on this same loop, so the pid is recorded before
  // the reaper can see the child exit.
  void on_tcp_accept() {
    for (;;) {
      int fd = ::accept4(tcp_listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) SM_LOG_ERROR("accept (tcp forward): %s", std::strerror(errno));
        return;
      }
      if (tcp_forwards.size() >= kMaxTcpForwards) {
        SM_LOG_ERROR("refusing a TCP forward: %zu already open", tcp_forwards.size());
        ::close(fd);
        continue;
      }
      pid_t pid = fork_tcp_forward(UniqueFd(fd));
      if (pid < 0) SM_LOG_ERROR("fork (tcp forward): %s", std::strerror(errno));
      else tcp_forwards.insert(pid);
    }
  }

  // ---- connections -----------------------------------------------------------------------

  void on_accept() {
    for (;;) {
      int fd = ::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) SM_LOG_ERROR("accept: %s", std::strerror(errno));
        return;
      }
      if (conns.size() >= kMaxConnections) {
        SM_LOG_ERROR("refusing a connection: %zu already open", conns.size());
        ::close(fd);
        continue;
      }
      auto c = std::make_unique<Conn>();
      c->id = next_conn_id++;
      c->fd = UniqueFd(fd);
      uint64_t id = c->id;
      poller.add(fd, EPOLLIN, [this, id](uint32_t ev) { on_conn_event(id, ev); });
      SM_LOG_DEBUG("connection %llu accepted", static_cast<unsigned long long>(id));
      conns.emplace(id, std::move(c));
    }
  }

  Conn* find_conn(uint64_t id) {
    auto it = conns.find(id);
    return it == conns.end() || it->second->dead ? nullptr : it->second.get();
  }

  void on_conn_event(uint64_t id, uint32_t ev) {
    Conn* c = find_conn(id);
    if (!c) return;
    if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && wants_input(*c)) {
      read_input(*c);
    } else if (ev & (EPOLLHUP | EPOLLERR)) {
      // Input is paused (stdin backlog, file being read) but the host is gone altogether.
      peer_gone(*c);
      return;
    }
    if (!c->dead && (ev & EPOLLOUT)) flush(*c);
    service(*c);
  }

  [[nodiscard]] bool can_process(const Conn& c) const {
    switch (c.state) {
      case Conn::State::kReadFile:
      case Conn::State::kClosing:
        return false;
      case Conn::State::kExec:
        return !c.session || c.session->stdin_buf.size() < kStdinHighWater;
      default:
        return true;
    }
  }
  [[nodiscard]] bool wants_input(const Conn& c) const { return !c.eof && can_process(c); }

  void read_input(Conn& c) {
    char buf[64 << 10];
    for (int i = 0; i < 4; ++i) {  // bounded, so one busy peer cannot starve the others
      ssize_t n = ::read(c.fd.get(), buf, sizeof buf);
      if (n > 0) {
        c.dec.feed(std::string_view(buf, static_cast<size_t>(n)));
        if (static_cast<size_t>(n) < sizeof buf) return;
        continue;
      }
      if (n == 0) {
        c.eof = true;
        return;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) c.eof = true;  // ECONNRESET and friends
      return;
    }
  }

  // Brings one connection up to date: decodes frames it can take, produces file data, sends,
  // and recomputes what it waits for. Every event that touches a connection ends here.
  void service(Conn& c) {
    for (int round = 0; round < 64 && !c.dead; ++round) {
      bool progress = false;
      if (can_process(c) && c.dec.buffered() > 0) progress |= process_frames(c);
      if (c.dead) return;
      if (c.state == Conn::State::kReadFile && c.pending() < kOutHighWater) progress |= pump_read_file(c);
      flush(c);
      if (!progress) break;
    }
    if (c.dead) return;
    if (c.state == Conn::State::kClosing && c.pending() == 0) {
      close_conn(c);
      return;
    }
    if (c.eof && can_process(c)) {
      // Every complete frame has been handled; the peer is gone.
      if (c.dec.buffered() > 0) SM_LOG_DEBUG("connection closed with a partial frame pending");
      peer_gone(c);
      return;
    }
    update_interest(c);
  }

  void update_interest(Conn& c) {
    if (c.dead) return;
    uint32_t ev = 0;
    if (wants_input(c)) ev |= EPOLLIN;
    if (c.pending() > 0) ev |= EPOLLOUT;
    poller.set(c.fd.get(), ev);
    if (c.session) update_session_interest(*c.session);
  }

  void send(Conn& c, FrameType type, std::string_view payload) {
    if (c.dead) return;
    encode_frame(c.out, type, payload);
  }

  void flush(Conn& c) {
    while (!c.dead && c.pending() > 0) {
      ssize_t n = ::send(c.fd.get(), c.out.data() + c.out_off, c.pending(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        c.out_off += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      peer_gone(c);  // EPIPE, ECONNRESET: the host is gone
      return;
    }
    if (c.out_off == c.out.size()) {
      c.out.clear();
      c.out_off = 0;
    } else if (c.out_off > (1u << 20)) {
      c.out.erase(0, c.out_off);
      c.out_off = 0;
    }
  }

  void send_error(Conn& c, ErrorCode code, const std::string& message) {
    SM_LOG_DEBUG("connection %llu: error %s: %s", static_cast<unsigned long long>(c.id),
                 std::string(error_code_name(code)).c_str(), message.c_str());
    send(c, FrameType::kError, encode(ErrorInfo{code, message}));
  }

  // A malformed or unexpected frame: say why, then close once the reply is out. The process of
  // a non-main session dies with its connection.
  void protocol_error(Conn& c, const std::string& why) {
    SM_LOG_ERROR("connection %llu: protocol error: %s", static_cast<unsigned long long>(c.id), why.c_str());
    send_error(c, ErrorCode::kProtocol, why);
    detach_session(c);
    abort_file_ops(c);
    c.state = Conn::State::kClosing;
    ::shutdown(c.fd.get(), SHUT_RD);
  }

  void detach_session(Conn& c) {
    if (!c.session) return;
    Session& s = *c.session;
    s.conn = nullptr;
    c.session = nullptr;
    if (!s.main) kill_session(s);
    else update_session_interest(s);
  }

  void abort_file_ops(Conn& c) {
    if (c.state == Conn::State::kWriteFile && !c.tmp_path.empty()) ::unlink(c.tmp_path.c_str());
    c.file.reset();
    c.tmp_path.clear();
  }

  void peer_gone(Conn& c) {
    if (c.dead) return;
    SM_LOG_DEBUG("connection %llu closed by the host", static_cast<unsigned long long>(c.id));
    detach_session(c);
    abort_file_ops(c);
    if (c.state == Conn::State::kMainExited) stop_status = c.main_status;
    close_conn(c);
  }

  void close_conn(Conn& c) {
    if (c.dead) return;
    if (c.state == Conn::State::kMainExited) stop_status = c.main_status;
    detach_session(c);
    poller.remove(c.fd.get());
    c.fd.reset();
    c.dead = true;
  }

  // ---- frames ----------------------------------------------------------------------------

  bool process_frames(Conn& c) {
    bool any = false;
    try {
      while (!c.dead && can_process(c)) {
        auto f = c.dec.next();
        if (!f) break;
        any = true;
        handle_frame(c, *f);
      }
    } catch (const ProtocolError& e) {
      protocol_error(c, e.what());
      return true;
    } catch (const std::exception& e) {
      // Anything else is the agent's own failure on this request: report it, keep serving.
      SM_LOG_ERROR("connection %llu: %s", static_cast<unsigned long long>(c.id), e.what());
      send_error(c, ErrorCode::kInternal, e.what());
      c.state = Conn::State::kClosing;
      detach_session(c);
      abort_file_ops(c);
      return true;
    }
    return any;
  }

  [[noreturn]] static void unexpected(const Conn& c, const Frame& f) {
    static const char* const kStates[] = {"handshake", "idle", "exec", "write_file", "read_file",
                                          "main_exited", "closing"};
    throw ProtocolError("unexpected " + std::string(type_name(f.type)) + " frame in state " +
                        kStates[static_cast<int>(c.state)]);
  }

  void handle_frame(Conn& c, const Frame& f) {
    if (c.state != Conn::State::kHello) check_frame_version(f.type, c.version);
    switch (c.state) {
      case Conn::State::kHello:
        if (f.type != FrameType::kHello) throw ProtocolError("the first frame must be HELLO, got " + std::string(type_name(f.type)));
        on_hello(c, decode<HelloRequest>(f.payload));
        return;
      case Conn::State::kIdle:
        switch (f.type) {
          case FrameType::kExec:
            return on_exec(c, decode<ExecRequest>(f.payload));
          case FrameType::kWriteFile:
            return on_write_file(c, decode<WriteFileRequest>(f.payload));
          case FrameType::kReadFile:
            return on_read_file(c, decode<ReadFileRequest>(f.payload));
          case FrameType::kSignal: {
            auto m = decode<SignalRequest>(f.payload);
            // A signal for a session that already ended is a benign race; only "main" answers.
            if (m.main) signal_main(c, m.signal, /*reply=*/true);
            return;
          }
          case FrameType::kPowerOff: {
            auto m = decode<PowerOffRequest>(f.payload);
            SM_LOG_INFO("power off requested by the host (status %d)", m.status);
            send(c, FrameType::kOk, encode_ok());
            stop_status = m.status;
            return;
          }
          case FrameType::kRestore:
            return on_restore(c, decode<RestoreRequest>(f.payload));
          case FrameType::kNetwork:
            return on_network(c, decode<NetworkRequest>(f.payload));
          case FrameType::kStdin:
          case FrameType::kStdinEof:
          case FrameType::kResize:
            return;  // for a session that just ended: the host sent it before seeing EXIT
          default:
            unexpected(c, f);
        }
      case Conn::State::kExec:
        return on_exec_frame(c, f);
      case Conn::State::kWriteFile:
        if (f.type != FrameType::kFileData) unexpected(c, f);
        return on_file_data(c, f.payload);
      case Conn::State::kMainExited:
        return;  // waiting for the host to close
      default:
        unexpected(c, f);
    }
  }

  void on_hello(Conn& c, const HelloRequest& h) {
    auto version = negotiate_version(h);
    if (!version) {
      send_error(c, ErrorCode::kUnsupportedVersion,
                 "the agent speaks protocol versions " + std::to_string(kMinProtocolVersion) + ".." +
                     std::to_string(kProtocolVersion) + ", the host offered " + std::to_string(h.min_version) +
                     ".." + std::to_string(h.max_version));
      c.state = Conn::State::kClosing;
      return;
    }
    c.version = *version;
    HelloReply r;
    r.version = *version;
    r.agent = std::string("sm-agent ") + SM_AGENT_VERSION;
    r.init = opts.init;
    r.hostname = opts.hostname;
    send(c, FrameType::kHello, encode(r));
    c.state = Conn::State::kIdle;
  }

  // ---- restore ---------------------------------------------------------------------------

  // After a snapshot restore (restore.h). The hostname the agent reports in HELLO and gives new
  // processes as HOSTNAME follows the request once the kernel's is set (or, without init, at once).
  void on_restore(Conn& c, const RestoreRequest& req) {
    auto result = apply_restore(req, opts.init);
    if (auto* err = std::get_if<ErrorInfo>(&result)) {
      SM_LOG_ERROR("restore: %s", err->message.c_str());
      send(c, FrameType::kError, encode(*err));
      return;
    }
    opts.hostname = req.hostname;
    send(c, FrameType::kOk, encode(std::get<RestoreReply>(result)));
  }

  // ---- network ---------------------------------------------------------------------------

  // NETWORK (network.h). As PID 1 the files go to the container's root, "/"; without init only
  // into an explicit --users-root, never the host's own /etc.
  void on_network(Conn& c, const NetworkRequest& req) {
    NetworkOptions no;
    no.init = opts.init;
    if (opts.init) no.root = "/";
    else if (opts.users_root != "/") no.root = opts.users_root;
    if (auto err = apply_network(req, no)) {
      SM_LOG_ERROR("%s", err->message.c_str());
      send(c, FrameType::kError, encode(*err));
      return;
    }
    send(c, FrameType::kOk, encode_ok());
  }

  // ---- exec ------------------------------------------------------------------------------

  void on_exec(Conn& c, ExecRequest req) {
    SM_LOG_DEBUG("exec %s%s", req.argv[0].c_str(), req.main ? " (main)" : "");
    if (req.main && main_started) {
      send_error(c, ErrorCode::kBusy, "a main process was already started in this VM");
      return;
    }
    auto fail_start = [&](ErrorCode code, const std::string& msg) {
      send_error(c, code, msg);
      // A main process that cannot start ends the VM, with Docker's status for the reason.
      if (req.main) begin_main_exit(c, exit_code_for(code), /*exit_sent=*/true);
    };

    if (req.detach && req.tty) return fail_start(ErrorCode::kBadRequest, "a detached main process cannot have a TTY");

    SpawnSpec spec;
    spec.argv = req.argv;
    spec.cwd = req.cwd.empty() ? "/" : req.cwd;
    spec.create_cwd = req.create_cwd;

    Credentials creds;
    try {
      creds = resolve_user_in(req.user, opts.users_root);
    } catch (const Error& e) {
      return fail_start(ErrorCode::kExecFailed, e.what());
    }
    // As root (always, in a VM) every process gets exactly the requested identity. A non-root
    // agent (tests on a host) can only run processes as itself.
    if (::geteuid() == 0 || !req.user.empty()) spec.creds = creds;

    for (const auto& r : req.rlimits) {
      auto res = rlimit_resource(r.resource);
      if (!res) return fail_start(ErrorCode::kBadRequest, "unknown rlimit \"" + r.resource + "\"");
      struct rlimit lim;
      auto val = [](std::optional<uint64_t> v) { return v ? static_cast<rlim_t>(*v) : RLIM_INFINITY; };
      lim.rlim_cur = val(r.soft ? r.soft : r.hard);
      lim.rlim_max = val(r.hard ? r.hard : r.soft);
      if (lim.rlim_cur > lim.rlim_max) return fail_start(ErrorCode::kBadRequest, "rlimit \"" + r.resource + "\": soft limit above hard limit");
      spec.rlimits.emplace_back(*res, lim);
    }

    // Docker's defaults for variables the image and the request left unset.
    spec.env = req.env;
    if (!env_get(spec.env, "PATH")) spec.env.emplace_back("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    if (!env_get(spec.env, "HOSTNAME") && !opts.hostname.empty()) spec.env.push_back("HOSTNAME=" + opts.hostname);
    if (!env_get(spec.env, "HOME")) spec.env.push_back("HOME=" + creds.home);
    if (req.tty && !env_get(spec.env, "TERM")) spec.env.emplace_back("TERM=xterm");

    auto s = std::make_unique<Session>();
    s->main = req.main;
    s->tty = req.tty.has_value();
    s->has_stdin = req.attach_stdin || s->tty;
    UniqueFd child_in, child_out, child_err;
    try {
      if (req.tty) {
        UniqueFd master(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
        if (!master) throw errno_error("posix_openpt");
        if (::grantpt(master.get()) != 0 || ::unlockpt(master.get()) != 0) throw errno_error("unlockpt");
        char name[128];
        if (::ptsname_r(master.get(), name, sizeof name) != 0) throw errno_error("ptsname");
        struct winsize ws{};
        ws.ws_row = req.tty->rows;
        ws.ws_col = req.tty->cols;
        ::ioctl(master.get(), TIOCSWINSZ, &ws);
        spec.tty_slave = name;
        s->in = UniqueFd(::fcntl(master.get(), F_DUPFD_CLOEXEC, 3));
        if (!s->in) throw errno_error("dup");
        s->out = std::move(master);
      } else {
        int p[2];
        if (req.attach_stdin) {
          if (::pipe2(p, O_CLOEXEC) != 0) throw errno_error("pipe2");
          child_in = UniqueFd(p[0]);
          s->in = UniqueFd(p[1]);
        } else {
          child_in = UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
          if (!child_in) throw errno_error("open /dev/null");
        }
        if (req.detach) {
          // The console is the detached main process's stdout and stderr (the host's `logs`).
          child_out = UniqueFd(::fcntl(opts.console_fd, F_DUPFD_CLOEXEC, 3));
          child_err = UniqueFd(::fcntl(opts.console_fd, F_DUPFD_CLOEXEC, 3));
          if (!child_out || !child_err) throw errno_error("dup console");
        } else {
          if (::pipe2(p, O_CLOEXEC) != 0) throw errno_error("pipe2");
          s->out = UniqueFd(p[0]);
          child_out = UniqueFd(p[1]);
          if (::pipe2(p, O_CLOEXEC) != 0) throw errno_error("pipe2");
          s->err = UniqueFd(p[0]);
          child_err = UniqueFd(p[1]);
        }
        spec.stdin_fd = child_in.get();
        spec.stdout_fd = child_out.get();
        spec.stderr_fd = child_err.get();
      }
    } catch (const Error& e) {
      return fail_start(ErrorCode::kExecFailed, e.what());
    }

    auto result = spawn(spec);
    child_in.reset();
    child_out.reset();
    child_err.reset();
    if (auto* err = std::get_if<ErrorInfo>(&result)) return fail_start(err->code, err->message);

    Session* sp = s.get();
    sp->pid = std::get<pid_t>(result);
    started_groups.push_back(sp->pid);
    if (req.timeout.count() > 0) sp->deadline = Clock::now() + req.timeout;
    if (req.main) {
      main_started = true;
      main_session = sp;
    }
    send(c, FrameType::kStarted, encode(Started{sp->pid}));
    if (!req.detach) {
      sp->conn = &c;
      c.session = sp;
      c.state = Conn::State::kExec;
    }
    register_session_fds(*sp);
    sessions.emplace(sp->pid, std::move(s));
  }

  void register_session_fds(Session& s) {
    pid_t pid = s.pid;
    auto add = [&](UniqueFd& fd, uint32_t events, void (Impl::*fn)(Session&)) {
      if (!fd) return;
      set_nonblock(fd.get());
      poller.add(fd.get(), events, [this, pid, fn](uint32_t) {
        auto it = sessions.find(pid);
        if (it == sessions.end() || it->second->done) return;
        Session& s = *it->second;
        (this->*fn)(s);
        after_session_event(s);
      });
    };
    add(s.out, EPOLLIN, &Impl::on_stdout);
    add(s.err, EPOLLIN, &Impl::on_stderr);
    add(s.in, 0, &Impl::on_stdin_writable);
    update_session_interest(s);
  }

  void after_session_event(Session& s) {
    if (s.conn) service(*s.conn);
    else update_session_interest(s);
  }

  void update_session_interest(Session& s) {
    bool room = !s.conn || s.conn->pending() < kOutHighWater;
    const uint32_t out_ev = room ? uint32_t{EPOLLIN} : 0u;
    if (s.out) poller.set(s.out.get(), out_ev);
    if (s.err) poller.set(s.err.get(), out_ev);
    if (s.in) poller.set(s.in.get(), s.stdin_buf.empty() ? 0u : uint32_t{EPOLLOUT});
  }

  void on_stdout(Session& s) { read_output(s, s.out, FrameType::kStdout); }
  void on_stderr(Session& s) { read_output(s, s.err, FrameType::kStderr); }

  // Reads one chunk (or, when draining after exit, everything available). Returns false when
  // nothing more can come right now.
  bool read_output(Session& s, UniqueFd& fd, FrameType type) {
    if (!fd) return false;
    char buf[kDataChunk];
    ssize_t n;
    do {
      n = ::read(fd.get(), buf, sizeof buf);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
      emit(s, type, std::string_view(buf, static_cast<size_t>(n)));
      return true;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    // EOF, or EIO from a pty master whose slave side is all closed.
    poller.remove(fd.get());
    if (s.tty && &fd == &s.out) close_stdin(s);
    fd.reset();
    return false;
  }

  void emit(Session& s, FrameType type, std::string_view data) {
    if (s.conn) {
      send(*s.conn, type, data);
    } else if (s.main) {
      // Detached or the host went away: the console keeps the main process's output.
      while (!data.empty()) {
        ssize_t w = ::write(opts.console_fd, data.data(), data.size());
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        data.remove_prefix(static_cast<size_t>(w));
      }
    }
  }

  void on_stdin_writable(Session& s) {
    while (s.in && !s.stdin_buf.empty()) {
      ssize_t n = ::write(s.in.get(), s.stdin_buf.data(), s.stdin_buf.size());
      if (n > 0) {
        s.stdin_buf.erase(0, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      // EPIPE: the process closed its stdin; what it did not read is dropped, as with a pipe.
      s.stdin_buf.clear();
      if (!s.tty) close_stdin(s);
      s.stdin_closed = true;
      return;
    }
    if (s.stdin_buf.empty() && s.stdin_eof && !s.tty) close_stdin(s);
  }

  void close_stdin(Session& s) {
    if (!s.in) return;
    poller.remove(s.in.get());
    s.in.reset();
    s.stdin_closed = true;
  }

  void on_exec_frame(Conn& c, const Frame& f) {
    Session* s = c.session;
    if (!s) {
      // The session ended while this frame was in flight; only a new request is an error.
      if (f.type == FrameType::kStdin || f.type == FrameType::kStdinEof || f.type == FrameType::kSignal ||
          f.type == FrameType::kResize)
        return;
      unexpected(c, f);
    }
    switch (f.type) {
      case FrameType::kStdin:
        if (s->stdin_eof) throw ProtocolError("STDIN after STDIN_EOF");
        if (!s->has_stdin) throw ProtocolError("STDIN for a process started without stdin");
        if (s->stdin_closed) return;  // the process closed it; drop, as a pipe would
        s->stdin_buf += f.payload;
        on_stdin_writable(*s);
        return;
      case FrameType::kStdinEof:
        if (!f.payload.empty()) throw ProtocolError("STDIN_EOF must be empty");
        if (s->stdin_eof) return;
        s->stdin_eof = true;
        if (s->tty && s->in && !s->stdin_closed) {
          // A terminal has no end of file; send its EOF character, as typing ^D would.
          struct termios t{};
          char eof = ::tcgetattr(s->in.get(), &t) == 0 ? static_cast<char>(t.c_cc[VEOF]) : '\x04';
          s->stdin_buf.push_back(eof);
        }
        on_stdin_writable(*s);
        return;
      case FrameType::kSignal: {
        auto m = decode<SignalRequest>(f.payload);
        if (m.main) signal_main(c, m.signal, /*reply=*/false);
        else ::kill(s->pid, m.signal);
        return;
      }
      case FrameType::kResize: {
        auto sz = decode<TtySize>(f.payload);
        if (s->tty && s->out) {
          struct winsize ws{};
          ws.ws_row = sz.rows;
          ws.ws_col = sz.cols;
          ::ioctl(s->out.get(), TIOCSWINSZ, &ws);  // the kernel sends SIGWINCH to the foreground
        }
        return;
      }
      default:
        unexpected(c, f);
    }
  }

  void signal_main(Conn& c, int sig, bool reply) {
    if (!main_session) {
      if (reply) send_error(c, ErrorCode::kBusy, "no main process is running");
      return;
    }
    ::kill(main_session->pid, sig);
    if (reply) send(c, FrameType::kOk, encode_ok());
  }

  void kill_session(Session& s) {
    if (s.done) return;
    ::kill(-s.pid, SIGKILL);
    ::kill(s.pid, SIGKILL);  // in case it left its process group
  }

  // ---- process exit ----------------------------------------------------------------------

  void on_signal() {
    signalfd_siginfo si;
    while (::read(sigfd.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
      int sig = static_cast<int>(si.ssi_signo);
      if (sig == SIGCHLD) {
        reap();
      } else if (opts.init) {
        // PID 1 passes what the kernel or a console sends it on to the workload.
        if (main_session) ::kill(main_session->pid, sig);
      } else if (sig == SIGTERM || sig == SIGINT) {
        SM_LOG_DEBUG("signal %d: shutting down", sig);
        stop_status = 0;
      }
    }
  }

  void reap() {
    for (;;) {
      int st = 0;
      pid_t pid = ::waitpid(-1, &st, WNOHANG);
      if (pid <= 0) return;  // 0: none left exited; -1/ECHILD: no children at all
      if (tcp_forwards.erase(pid)) continue;  // a TCP forwarder: nothing to report
      auto it = sessions.find(pid);
      if (it == sessions.end() || it->second->done) continue;  // an orphan we adopted
      finish_session(*it->second, st);
    }
  }

  void finish_session(Session& s, int wait_status) {
    // What the process wrote before it exited is already in the pipe: drain it, without waiting
    // for EOF (a background child may hold the pipe open for ever).
    while (read_output(s, s.out, FrameType::kStdout)) {
    }
    while (read_output(s, s.err, FrameType::kStderr)) {
    }
    for (UniqueFd* fd : {&s.in, &s.out, &s.err})
      if (*fd) {
        poller.remove(fd->get());
        fd->reset();
      }
    // Forget the group once it is empty, so shutdown never signals a recycled id.
    if (::kill(-s.pid, 0) != 0) std::erase(started_groups, s.pid);
    ExitStatus st;
    st.code = exit_code_of(wait_status);
    st.signal = WIFSIGNALED(wait_status) ? WTERMSIG(wait_status) : 0;
    st.timed_out = s.timed_out;
    s.done = true;
    SM_LOG_DEBUG("pid %d exited: code %d signal %d%s", s.pid, st.code, st.signal, st.timed_out ? " (timed out)" : "");

    Conn* c = s.conn;
    if (c) {
      send(*c, FrameType::kExit, encode(st));
      c->session = nullptr;
      s.conn = nullptr;
      c->state = Conn::State::kIdle;
    }
    if (&s == main_session) {
      main_session = nullptr;
      if (c) begin_main_exit(*c, st.code, true);
      else stop_status = st.code;
    }
    if (c) service(*c);
  }

  // The main process is over (or never started): let the EXIT/ERROR reach the host, then stop.
  void begin_main_exit(Conn& c, int status, bool /*exit_sent*/) {
    c.state = Conn::State::kMainExited;
    c.main_status = status;
    c.grace_deadline = Clock::now() + opts.main_exit_grace;
    flush(c);
    if (!c.dead) ::shutdown(c.fd.get(), SHUT_WR);  // the host sees EOF after EXIT
  }

  // ---- files -----------------------------------------------------------------------------

  void on_write_file(Conn& c, const WriteFileRequest& req) {
    c.final_path = req.path;
    c.remaining = req.size;
    c.written = 0;
    c.file_error.reset();
    c.state = Conn::State::kWriteFile;
    auto fail = [&](const std::string& what) { c.file_error = ErrorInfo{ErrorCode::kFileError, what + ": " + std::strerror(errno)}; };
    std::string dir = req.path.substr(0, req.path.rfind('/'));
    if (dir.empty()) dir = "/";
    if (req.make_parents) {
      std::string p;
      size_t pos = 1;
      while (pos <= dir.size()) {
        size_t next = dir.find('/', pos);
        if (next == std::string::npos) next = dir.size();
        p = dir.substr(0, next);
        if (::mkdir(p.c_str(), 0755) != 0 && errno != EEXIST) {
          fail("mkdir " + p);
          break;
        }
        pos = next + 1;
      }
    }
    if (!c.file_error) {
      // Written beside the target and renamed into place, so a reader never sees half a file.
      std::string base = req.path.substr(req.path.rfind('/') + 1);
      c.tmp_path = (dir == "/" ? "" : dir) + "/." + base + ".sm-XXXXXX";
      int fd = ::mkostemp(c.tmp_path.data(), O_CLOEXEC);
      if (fd < 0) {
        fail("create " + req.path);
        c.tmp_path.clear();
      } else {
        c.file = UniqueFd(fd);
        if (::fchmod(fd, req.mode) != 0) fail("chmod " + req.path);
        else if ((req.uid || req.gid) && ::fchown(fd, req.uid ? *req.uid : static_cast<uid_t>(-1), req.gid ? *req.gid : static_cast<gid_t>(-1)) != 0)
          fail("chown " + req.path);
      }
    }
    if (c.remaining == 0) complete_write_file(c);
  }

  void on_file_data(Conn& c, std::string_view data) {
    if (data.size() > c.remaining) throw ProtocolError("FILE_DATA beyond the size announced in WRITE_FILE");
    c.remaining -= data.size();
    if (!c.file_error) {
      while (!data.empty()) {
        ssize_t n = ::write(c.file.get(), data.data(), data.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          c.file_error = ErrorInfo{ErrorCode::kFileError, "write " + c.final_path + ": " + std::strerror(errno)};
          break;
        }
        data.remove_prefix(static_cast<size_t>(n));
        c.written += static_cast<uint64_t>(n);
      }
    }
    if (c.remaining == 0) complete_write_file(c);
  }

  void complete_write_file(Conn& c) {
    if (!c.file_error && ::rename(c.tmp_path.c_str(), c.final_path.c_str()) != 0)
      c.file_error = ErrorInfo{ErrorCode::kFileError, "rename into " + c.final_path + ": " + std::strerror(errno)};
    if (c.file_error) {
      if (!c.tmp_path.empty()) ::unlink(c.tmp_path.c_str());
      send(c, FrameType::kError, encode(*c.file_error));
    } else {
      send(c, FrameType::kOk, ok_with_size(c.written));
    }
    c.file.reset();
    c.tmp_path.clear();
    c.state = Conn::State::kIdle;
  }

  static std::string ok_with_size(uint64_t n) { return "{\"size\":" + std::to_string(n) + "}"; }

  void on_read_file(Conn& c, const ReadFileRequest& req) {
    UniqueFd fd(::open(req.path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    struct stat st{};
    auto fail = [&](const std::string& what) {
      send_error(c, ErrorCode::kFileError, what + ": " + std::strerror(errno));
    };
    if (!fd) return fail("open " + req.path);
    if (::fstat(fd.get(), &st) != 0) return fail("stat " + req.path);
    if (!S_ISREG(st.st_mode)) {
      send_error(c, ErrorCode::kFileError, req.path + " is not a regular file");
      return;
    }
    if (static_cast<uint64_t>(st.st_size) > req.max_size) {
      send_error(c, ErrorCode::kFileError,
                 req.path + " is " + std::to_string(st.st_size) + " bytes, over the " +
                     std::to_string(req.max_size) + "-byte limit of the request");
      return;
    }
    int fl = ::fcntl(fd.get(), F_GETFL);
    ::fcntl(fd.get(), F_SETFL, fl & ~O_NONBLOCK);
    send(c, FrameType::kFileInfo, encode(FileInfo{static_cast<uint64_t>(st.st_size), static_cast<uint32_t>(st.st_mode & 07777)}));
    c.file = std::move(fd);
    c.read_left = req.max_size;
    c.read_sent = 0;
    c.state = Conn::State::kReadFile;
  }

  // Sends the next chunks of a file being read, up to the output high-water mark.
  bool pump_read_file(Conn& c) {
    bool progress = false;
    char buf[kDataChunk];
    while (c.state == Conn::State::kReadFile && c.pending() < kOutHighWater) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(sizeof buf, c.read_left));
      ssize_t n = want == 0 ? 0 : ::read(c.file.get(), buf, want);
      if (n < 0 && errno == EINTR) continue;
      progress = true;
      if (n < 0) {
        send_error(c, ErrorCode::kFileError, std::string("read: ") + std::strerror(errno));
        c.file.reset();
        c.state = Conn::State::kIdle;
        break;
      }
      if (n == 0) {
        send(c, FrameType::kOk, ok_with_size(c.read_sent));
        c.file.reset();
        c.state = Conn::State::kIdle;
        break;
      }
      send(c, FrameType::kFileData, std::string_view(buf, static_cast<size_t>(n)));
      c.read_sent += static_cast<uint64_t>(n);
      c.read_left -= static_cast<uint64_t>(n);
    }
    return progress;
  }

  // ---- time ------------------------------------------------------------------------------

  int next_timeout_ms() const {
    std::optional<Clock::time_point> next;
    auto consider = [&](const std::optional<Clock::time_point>& t) {
      if (t && (!next || *t < *next)) next = t;
    };
    for (const auto& [pid, s] : sessions)
      if (!s->done && !s->timed_out) consider(s->deadline);
    for (const auto& [id, c] : conns)
      if (!c->dead) consider(c->grace_deadline);
    if (!next) return -1;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(*next - Clock::now()).count() + 1;
    return static_cast<int>(std::clamp<int64_t>(ms, 0, INT_MAX));
  }

  void check_deadlines() {
    auto now = Clock::now();
    for (auto& [pid, s] : sessions)
      if (!s->done && !s->timed_out && s->deadline && *s->deadline <= now) {
        SM_LOG_DEBUG("pid %d: timeout, killing it", pid);
        s->timed_out = true;
        kill_session(*s);
      }
    for (auto& [id, c] : conns)
      if (!c->dead && c->grace_deadline && *c->grace_deadline <= now) {
        stop_status = c->main_status;
        close_conn(*c);
      }
  }

  void collect_garbage() {
    for (auto it = conns.begin(); it != conns.end();)
      it = it->second->dead ? conns.erase(it) : std::next(it);
    for (auto it = sessions.begin(); it != sessions.end();)
      it = it->second->done ? sessions.erase(it) : std::next(it);
  }
};

Server::Server(UniqueFd listener, ServerOptions options, UniqueFd tcp_listener)
    : impl_(std::make_unique<Impl>(std::move(listener), std::move(options), std::move(tcp_listener))) {}
Server::~Server() = default;
int Server::run() { return impl_->run(); }

}  // namespace sm::agent
