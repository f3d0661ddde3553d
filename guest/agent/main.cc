// sm-agent: supermachine's guest agent.
//
// As PID 1 in a microVM (the /init of its initramfs) it builds the container's root filesystem
// from the boot configuration on the kernel command line, serves the control protocol on vsock,
// and powers the VM off with the main process's status when that ends (docs/agent-protocol.md).
//
// As an ordinary process (--no-init) it serves the same protocol on a Unix socket without
// mounting or powering anything off, so the protocol and exec machinery are tested on the host:
//   sm-agent --no-init --listen unix:PATH [--notify unix:PATH] [--tcp-listen unix:PATH]
//            [--hostname H] [--debug]
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "agent/protocol.h"
#include "boot_config.h"
#include "init.h"
#include "log.h"
#include "server.h"

#ifndef SM_AGENT_VERSION
#define SM_AGENT_VERSION "0"
#endif

namespace sm::agent {
namespace {

struct Args {
  bool no_init = false;
  std::string listen;   // unix:PATH | vsock:PORT
  std::string notify;   // unix:PATH | vsock:CID:PORT
  std::string tcp_listen;  // unix:PATH | vsock:PORT: the TCP forwarder (tcp_forward.h)
  std::string hostname;
  std::string users_root = "/";
  bool debug = false;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "sm-agent: %s\n"
               "usage: sm-agent                      (as PID 1 in a supermachine VM)\n"
               "       sm-agent --no-init --listen unix:PATH|vsock:PORT [--notify unix:PATH|vsock:CID:PORT]\n"
               "                [--tcp-listen unix:PATH|vsock:PORT] [--hostname NAME] [--users-root DIR] [--debug]\n",
               why);
  std::exit(2);
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + arg).c_str());
      return argv[++i];
    };
    if (arg == "--no-init") a.no_init = true;
    else if (arg == "--listen") a.listen = value();
    else if (arg == "--notify") a.notify = value();
    else if (arg == "--tcp-listen") a.tcp_listen = value();
    else if (arg == "--hostname") a.hostname = value();
    else if (arg == "--users-root") a.users_root = value();
    else if (arg == "--debug") a.debug = true;
    else if (arg == "--version") {
      std::printf("sm-agent %s (protocol %u)\n", SM_AGENT_VERSION, kProtocolVersion);
      std::exit(0);
    } else usage(("unknown argument " + arg).c_str());
  }
  return a;
}

uint32_t parse_u32(const std::string& s, const char* what) {
  char* end = nullptr;
  errno = 0;
  unsigned long v = std::strtoul(s.c_str(), &end, 10);
  if (s.empty() || *end || errno || v > 0xffffffffUL) throw Error(std::string("bad ") + what + " \"" + s + "\"");
  return static_cast<uint32_t>(v);
}

sockaddr_un unix_addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) throw Error("socket path too long: " + path);
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

UniqueFd listen_on(const std::string& spec) {
  if (spec.rfind("unix:", 0) == 0) {
    std::string path = spec.substr(5);
    UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s) throw errno_error("socket(AF_UNIX)");
    ::unlink(path.c_str());
    sockaddr_un a = unix_addr(path);
    if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw errno_error("bind " + path);
    if (::listen(s.get(), 64) != 0) throw errno_error("listen " + path);
    return s;
  }
  if (spec.rfind("vsock:", 0) == 0) {
    uint32_t port = parse_u32(spec.substr(6), "vsock port");
    UniqueFd s(::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s) throw errno_error("socket(AF_VSOCK)");
    sockaddr_vm a{};
    a.svm_family = AF_VSOCK;
    a.svm_cid = VMADDR_CID_ANY;
    a.svm_port = port;
    if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw errno_error("bind vsock port " + std::to_string(port));
    if (::listen(s.get(), 64) != 0) throw errno_error("listen on vsock");
    return s;
  }
  throw Error("--listen must be unix:PATH or vsock:PORT, not \"" + spec + "\"");
}

// Tells the host the agent is ready without the host having to poll: connect, send the HELLO
// reply it would get on a connection of its own, close.
void notify_ready(const std::string& spec, const HelloReply& hello) {
  UniqueFd s;
  if (spec.rfind("unix:", 0) == 0) {
    s = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a = unix_addr(spec.substr(5));
    if (!s || ::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw errno_error("connect " + spec);
  } else if (spec.rfind("vsock:", 0) == 0) {
    std::string rest = spec.substr(6);
    auto colon = rest.find(':');
    if (colon == std::string::npos) throw Error("--notify vsock needs CID:PORT");
    sockaddr_vm a{};
    a.svm_family = AF_VSOCK;
    a.svm_cid = parse_u32(rest.substr(0, colon), "vsock CID");
    a.svm_port = parse_u32(rest.substr(colon + 1), "vsock port");
    s = UniqueFd(::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s || ::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw errno_error("connect " + spec);
  } else {
    throw Error("--notify must be unix:PATH or vsock:CID:PORT");
  }
  std::string frame = encode_frame(FrameType::kHello, encode(hello));
  const char* p = frame.data();
  size_t n = frame.size();
  while (n > 0) {
    ssize_t w = ::send(s.get(), p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw errno_error("send readiness to " + spec);
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// The kernel gives init /dev/console as fds 0-2 when the initramfs has it; make sure 0-2 are
// open either way, so no pipe or socket ever lands on a stdio number.
void ensure_stdio() {
  for (int fd = 0; fd < 3; ++fd) {
    if (::fcntl(fd, F_GETFD) >= 0) continue;
    int n = ::open("/dev/console", O_RDWR | O_NOCTTY);
    if (n < 0) n = ::open("/dev/null", O_RDWR);
    if (n >= 0 && n != fd) {
      ::dup2(n, fd);
      ::close(n);
    }
  }
}

HelloReply hello_for(bool init, const std::string& hostname) {
  HelloReply h;
  h.agent = std::string("sm-agent ") + SM_AGENT_VERSION;
  h.init = init;
  h.hostname = hostname;
  return h;
}

[[noreturn]] void run_init() {
  int status = 125;  // the runtime's own failure, Docker's convention
  try {
    ::umask(022);
    mount_early();
    std::string cmdline;
    {
      std::ifstream f("/proc/cmdline");
      std::getline(f, cmdline);
    }
    std::string warnings;
    BootConfig cfg = parse_boot_config(cmdline, &warnings);
    if (cfg.debug) set_log_level(LogLevel::kDebug);
    if (!warnings.empty()) SM_LOG_ERROR("kernel command line: %s", warnings.c_str());
    setup_root(cfg);
    UniqueFd listener = listen_on("vsock:" + std::to_string(cfg.port));
    // TCP forwarding is an extra: without it the agent still serves its protocol.
    UniqueFd tcp_listener;
    try {
      tcp_listener = listen_on("vsock:" + std::to_string(kTcpForwardPort));
    } catch (const std::exception& e) {
      SM_LOG_ERROR("TCP forwarding is off: %s", e.what());
    }
    if (cfg.notify_port != 0) {
      try {
        notify_ready("vsock:2:" + std::to_string(cfg.notify_port), hello_for(true, cfg.hostname));
      } catch (const std::exception& e) {
        SM_LOG_ERROR("readiness notification: %s", e.what());
      }
    }
    SM_LOG_DEBUG("ready on vsock port %u", cfg.port);
    ServerOptions opts;
    opts.init = true;
    opts.hostname = cfg.hostname;
    opts.console_fd = STDOUT_FILENO;
    Server server(std::move(listener), opts, std::move(tcp_listener));
    status = server.run();
  } catch (const std::exception& e) {
    SM_LOG_ERROR("%s", e.what());
  }
  power_off(status);
}

int run_no_init(const Args& a) {
  if (a.listen.empty()) usage("--no-init needs --listen");
  // Orphaned grandchildren come back to the agent, as they would to PID 1.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  std::string hostname = a.hostname;
  if (hostname.empty()) {
    char h[256] = {};
    ::gethostname(h, sizeof h - 1);
    hostname = h;
  }
  UniqueFd listener = listen_on(a.listen);
  UniqueFd tcp_listener;
  if (!a.tcp_listen.empty()) tcp_listener = listen_on(a.tcp_listen);
  if (!a.notify.empty()) notify_ready(a.notify, hello_for(false, hostname));
  ServerOptions opts;
  opts.init = false;
  opts.hostname = hostname;
  opts.users_root = a.users_root;
  Server server(std::move(listener), opts, std::move(tcp_listener));
  int status = server.run();
  if (a.listen.rfind("unix:", 0) == 0) ::unlink(a.listen.substr(5).c_str());
  if (a.tcp_listen.rfind("unix:", 0) == 0) ::unlink(a.tcp_listen.substr(5).c_str());
  return status;
}

}  // namespace
}  // namespace sm::agent

int main(int argc, char** argv) {
  using namespace sm::agent;
  ensure_stdio();
  // As PID 1 the kernel passes unrecognised command-line words as arguments; never refuse
  // them (init exiting is a kernel panic). The boot configuration is read from /proc/cmdline.
  bool no_init = false;
  for (int i = 1; i < argc; ++i) no_init |= std::strcmp(argv[i], "--no-init") == 0;
  if (::getpid() == 1 && !no_init) run_init();
  Args args = parse_args(argc, argv);
  if (args.debug) set_log_level(LogLevel::kDebug);
  if (!args.no_init) usage("not PID 1: use --no-init to serve on a host");
  try {
    return run_no_init(args);
  } catch (const std::exception& e) {
    SM_LOG_ERROR("%s", e.what());
    return 125;
  }
}
