// Host-side tests of the agent protocol end to end: the real sm-agent binary runs on the host in
// --no-init mode on a Unix socket, and the real Client talks to it. Fake peers on either side
// check that hostile frames end a session cleanly (an error, never a crash or a hang).
#include "agent/client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <sstream>
#include <thread>

#ifndef SM_AGENT_BINARY
#error "SM_AGENT_BINARY must name the sm-agent binary (set by guest/agent/CMakeLists.txt)"
#endif

extern char** environ;

namespace sm::agent {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "sm-agent-test.XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
    ::chmod(path_.c_str(), 0755);  // a process running as another user must be able to chdir here
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::optional<int> wait_pid(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    int st = 0;
    pid_t r = ::waitpid(pid, &st, WNOHANG);
    if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (r < 0 || Clock::now() > deadline) return std::nullopt;
    std::this_thread::sleep_for(5ms);
  }
}

size_t open_fds(pid_t pid) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) ++n;
  return n;
}

// The agent closes a connection when it sees the client's EOF, a moment after the client
// returns: wait until its only socket is the listener again, then count its fds.
size_t settled_fds(pid_t pid) {
  auto deadline = Clock::now() + 5s;
  for (;;) {
    size_t sockets = 0;
    for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
      std::error_code ec;
      if (fs::read_symlink(e.path(), ec).string().rfind("socket:", 0) == 0) ++sockets;
    }
    if (sockets <= 1 || Clock::now() > deadline) return open_fds(pid);
    std::this_thread::sleep_for(5ms);
  }
}

bool process_gone(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (::kill(pid, 0) != 0 && errno == ESRCH) return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

// The real agent, serving on a Unix socket in a temporary directory.
class AgentProcess {
 public:
  explicit AgentProcess(std::vector<std::string> extra = {}) {
    socket_ = dir_.path() / "agent.sock";
    ReadyListener ready(dir_.path() / "ready.sock");
    std::vector<std::string> args = {SM_AGENT_BINARY, "--no-init", "--listen", "unix:" + socket_.string(),
                                     "--notify", "unix:" + ready.path().string(), "--hostname", "agent-test"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (::posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ) != 0)
      throw std::runtime_error("posix_spawn sm-agent failed");
    hello_ = ready.wait(Clock::now() + 20s);
  }
  ~AgentProcess() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGTERM);
      if (!wait_pid(pid_, 10s)) {
        ::kill(pid_, SIGKILL);
        (void)wait_pid(pid_, 10s);
      }
    }
  }
  AgentProcess(const AgentProcess&) = delete;
  AgentProcess& operator=(const AgentProcess&) = delete;

  [[nodiscard]] Client client(ClientOptions o = {}) const {
    o.io_timeout = 20s;
    return Client(Endpoint::unix_socket(socket_), o);
  }
  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] const fs::path& socket() const { return socket_; }
  [[nodiscard]] const fs::path& dir() const { return dir_.path(); }
  [[nodiscard]] const HelloReply& hello() const { return hello_; }
  std::optional<int> wait_exit(std::chrono::milliseconds timeout) {
    auto r = wait_pid(pid_, timeout);
    if (r) exited_ = true;
    return r;
  }

 private:
  TempDir dir_;
  fs::path socket_;
  pid_t pid_ = -1;
  bool exited_ = false;
  HelloReply hello_;
};

ExecRequest cmd(std::vector<std::string> argv) {
  ExecRequest r;
  r.argv = std::move(argv);
  return r;
}

// ---- the agent, through the client ---------------------------------------------------------

TEST(AgentExec, ReadinessNotificationAndHello) {
  AgentProcess agent;
  EXPECT_EQ(agent.hello().version, kProtocolVersion);
  EXPECT_FALSE(agent.hello().init);
  EXPECT_EQ(agent.hello().hostname, "agent-test");
  auto h = agent.client().wait_ready(Clock::now() + 5s);
  EXPECT_EQ(h.agent.rfind("sm-agent ", 0), 0u) << h.agent;
}

TEST(AgentExec, EchoHello) {
  AgentProcess agent;
  auto r = agent.client().exec(cmd({"echo", "hello"}));
  EXPECT_EQ(r.out, "hello\n");
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.exit_code(), 0);
  EXPECT_EQ(r.status, (ExitStatus{0, 0, false}));
  EXPECT_GT(r.duration.count(), 0);
}

TEST(AgentExec, ExitStatusIsReported) {
  AgentProcess agent;
  EXPECT_EQ(agent.client().exec(cmd({"sh", "-c", "exit 7"})).exit_code(), 7);
}

TEST(AgentExec, KilledBySigkillReports137) {
  AgentProcess agent;
  auto r = agent.client().exec(cmd({"sh", "-c", "kill -9 $$"}));
  EXPECT_EQ(r.exit_code(), 137);
  EXPECT_EQ(r.status.signal, SIGKILL);
  EXPECT_FALSE(r.status.timed_out);
}

TEST(AgentExec, StdoutAndStderrStaySeparate) {
  AgentProcess agent;
  auto r = agent.client().exec(cmd({"sh", "-c", "echo out1; echo err1 >&2; echo out2; echo err2 >&2"}));
  EXPECT_EQ(r.out, "out1\nout2\n");
  EXPECT_EQ(r.err, "err1\nerr2\n");
}

TEST(AgentExec, TenMiBOfBinaryStdinComeBackByteExact) {
  AgentProcess agent;
  std::string data = random_bytes(10u << 20, 42);
  auto r = agent.client().exec(cmd({"cat"}), data);
  EXPECT_EQ(r.exit_code(), 0);
  ASSERT_EQ(r.out.size(), data.size());
  EXPECT_TRUE(r.out == data) << "stdin came back altered";
}

TEST(AgentExec, StdinFromAFileDescriptor) {
  AgentProcess agent;
  TempDir d;
  std::string data = random_bytes(300000, 7);
  fs::path f = d.path() / "in.bin";
  std::ofstream(f, std::ios::binary) << data;
  int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  auto req = cmd({"sh", "-c", "wc -c"});
  req.attach_stdin = true;
  ExecSession s = agent.client().start(req);
  std::string out;
  StreamIo io;
  io.stdin_fd = fd;
  io.on_stdout = [&](std::string_view d) { out += d; };
  auto st = s.wait(io);
  ::close(fd);
  EXPECT_EQ(st.code, 0);
  EXPECT_EQ(std::stoul(out), data.size());
}

TEST(AgentExec, NoStdinMeansDevNull) {
  AgentProcess agent;
  auto r = agent.client().exec(cmd({"sh", "-c", "cat; echo done"}));
  EXPECT_EQ(r.out, "done\n");
}

TEST(AgentExec, EnvAndCwdTakeEffect) {
  AgentProcess agent;
  TempDir d;
  auto req = cmd({"sh", "-c", "echo \"$FOO|$EMPTY|$HOSTNAME\"; pwd"});
  req.env = {"FOO=bar baz", "EMPTY="};
  req.cwd = d.path().string();
  auto r = agent.client().exec(req);
  EXPECT_EQ(r.out, "bar baz||agent-test\n" + fs::canonical(d.path()).string() + "\n");
}

TEST(AgentExec, WorkloadInheritsOnlyStdio) {
  AgentProcess agent;
  // The agent's sockets, pipes and whatever it inherited itself stay out of the workload.
  auto r = agent.client().exec(cmd({"sh", "-c", "ls /proc/$$/fd"}));
  EXPECT_EQ(r.out, "0\n1\n2\n");
}

TEST(AgentExec, DefaultPathWhenTheEnvHasNone) {
  AgentProcess agent;
  auto r = agent.client().exec(cmd({"sh", "-c", "echo $PATH"}));
  EXPECT_EQ(r.out, "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
}

TEST(AgentExec, CommandIsLookedUpInTheRequestsPath) {
  AgentProcess agent;
  TempDir d;
  fs::path tool = d.path() / "my-tool";
  std::ofstream(tool) << "#!/bin/sh\necho from-my-tool\n";
  fs::permissions(tool, fs::perms(0755));
  auto req = cmd({"my-tool"});
  req.env = {"PATH=/nonexistent:" + d.path().string()};
  EXPECT_EQ(agent.client().exec(req).out, "from-my-tool\n");
}

TEST(AgentExec, CreateCwd) {
  AgentProcess agent;
  TempDir d;
  auto req = cmd({"pwd"});
  req.cwd = (d.path() / "a/b/c").string();
  req.create_cwd = true;
  EXPECT_EQ(agent.client().exec(req).out, fs::canonical(d.path()).string() + "/a/b/c\n");
}

TEST(AgentExec, TimeoutKillsAndIsReported) {
  AgentProcess agent;
  auto req = cmd({"sh", "-c", "echo started; sleep 30"});
  req.timeout = 300ms;
  auto t0 = Clock::now();
  auto r = agent.client().exec(req);
  EXPECT_LT(Clock::now() - t0, 10s);
  EXPECT_TRUE(r.status.timed_out);
  EXPECT_EQ(r.status.signal, SIGKILL);
  EXPECT_EQ(r.exit_code(), 137);
  EXPECT_EQ(r.out, "started\n");
}

TEST(AgentExec, CommandNotFoundIsADistinctError) {
  AgentProcess agent;
  for (const char* c : {"no-such-command-xyz", "/nonexistent/dir/cmd"}) {
    try {
      (void)agent.client().exec(cmd({c}));
      FAIL() << c << " ran";
    } catch (const ExecError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCommandNotFound) << e.what();
      EXPECT_EQ(e.exit_code(), 127);
      EXPECT_NE(std::string(e.what()).find(c), std::string::npos) << e.what();
    }
  }
}

TEST(AgentExec, NotExecutableIs126) {
  AgentProcess agent;
  TempDir d;
  fs::path f = d.path() / "data.txt";
  std::ofstream(f) << "not a program\n";
  fs::permissions(f, fs::perms(0644));
  try {
    (void)agent.client().exec(cmd({f.string()}));
    FAIL() << "a non-executable file ran";
  } catch (const ExecError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCommandNotExecutable) << e.what();
    EXPECT_EQ(e.exit_code(), 126);
  }
  try {
    (void)agent.client().exec(cmd({d.path().string()}));  // a directory
    FAIL();
  } catch (const ExecError& e) {
    EXPECT_EQ(e.exit_code(), 126) << e.what();
  }
}

TEST(AgentExec, SetUpFailuresAreExecFailed) {
  AgentProcess agent;
  auto bad_cwd = cmd({"true"});
  bad_cwd.cwd = "/nonexistent-dir-for-agent-test";
  try {
    (void)agent.client().exec(bad_cwd);
    FAIL();
  } catch (const ExecError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kExecFailed);
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir-for-agent-test"), std::string::npos) << e.what();
  }
  auto bad_user = cmd({"true"});
  bad_user.user = "no-such-user-xyz";
  try {
    (void)agent.client().exec(bad_user);
    FAIL();
  } catch (const ExecError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kExecFailed);
    EXPECT_NE(std::string(e.what()).find("unable to find user no-such-user-xyz"), std::string::npos) << e.what();
  }
  auto bad_rlimit = cmd({"true"});
  bad_rlimit.rlimits = {{"bogus", 1, 1}};
  EXPECT_THROW((void)agent.client().exec(bad_rlimit), ExecError);
}

TEST(AgentExec, RlimitsApply) {
  AgentProcess agent;
  auto req = cmd({"sh", "-c", "ulimit -n"});
  req.rlimits = {{"nofile", 256, 512}};
  EXPECT_EQ(agent.client().exec(req).out, "256\n");
}

TEST(AgentExec, UserAndGroupsSwitch) {
  if (::geteuid() != 0) GTEST_SKIP() << "switching users needs root";
  AgentProcess agent;
  TempDir d;
  // A uid without a passwd entry: its HOME is "/" and it has no supplementary groups.
  auto req = cmd({"sh", "-c", "id -u; id -g; id -G; echo $HOME; pwd"});
  req.user = "4242:4343";
  req.cwd = d.path().string();
  auto r = agent.client().exec(req);
  EXPECT_EQ(r.out, "4242\n4343\n4343\n/\n" + fs::canonical(d.path()).string() + "\n") << r.err;
  auto named = cmd({"sh", "-c", "id -u; echo $HOME"});
  named.user = "nobody";  // resolved from the host's /etc/passwd (--users-root defaults to /)
  EXPECT_EQ(agent.client().exec(named).out, "65534\n/nonexistent\n");
}

// As in runc (and so Docker): the working directory is entered before the user switch, so a
// user may start in a directory only root can enter (`-u 1000` with WorkingDir /root).
TEST(AgentExec, UserStartsInADirectoryOnlyRootCanEnter) {
  if (::geteuid() != 0) GTEST_SKIP() << "switching users needs root";
  AgentProcess agent;
  TempDir d;
  fs::permissions(d.path(), fs::perms::owner_all);
  auto req = cmd({"sh", "-c", "id -u; pwd; ls . >/dev/null 2>&1 || echo cannot-list"});
  req.user = "4242:4242";
  req.cwd = d.path().string();
  auto r = agent.client().exec(req);
  EXPECT_EQ(r.out, "4242\n" + fs::canonical(d.path()).string() + "\ncannot-list\n") << r.err;
}

TEST(AgentExec, SignalIsDelivered) {
  AgentProcess agent;
  ExecSession s = agent.client().start(cmd({"sh", "-c", "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done"}));
  EXPECT_GT(s.pid(), 0);
  std::string out;
  std::atomic<bool> ready{false};
  std::thread t([&] {
    while (!ready) std::this_thread::sleep_for(5ms);
    s.signal(SIGTERM);  // from another thread while wait() pumps
  });
  StreamIo io;
  io.on_stdout = [&](std::string_view d) {
    out += d;
    if (out.find("ready") != std::string::npos) ready = true;
  };
  auto st = s.wait(io);
  t.join();
  EXPECT_EQ(out, "ready\ngot-term\n");
  EXPECT_EQ(st.code, 3);

  ExecSession k = agent.client().start(cmd({"sleep", "30"}));
  k.signal(SIGTERM);  // before wait(): sent directly
  auto ks = k.wait();
  EXPECT_EQ(ks.signal, SIGTERM);
  EXPECT_EQ(ks.code, 128 + SIGTERM);
}

TEST(AgentExec, ClosingTheConnectionKillsTheProcess) {
  AgentProcess agent;
  int64_t pid;
  {
    ExecSession s = agent.client().start(cmd({"sleep", "30"}));
    pid = s.pid();
    EXPECT_EQ(::kill(static_cast<pid_t>(pid), 0), 0);
  }
  EXPECT_TRUE(process_gone(static_cast<pid_t>(pid), 10s));
}

TEST(AgentExec, SessionsRunConcurrently) {
  AgentProcess agent;
  Client c = agent.client();
  auto req = cmd({"sh", "-c", "read line; echo \"got $line\""});
  req.attach_stdin = true;
  ExecSession waiting = c.start(req);
  // While the first session blocks on stdin, others come and go.
  for (int i = 0; i < 5; ++i) EXPECT_EQ(c.exec(cmd({"echo", std::to_string(i)})).out, std::to_string(i) + "\n");
  std::string out;
  bool sent = false;
  StreamIo io;
  io.stdin_source = [&]() -> std::string {
    if (sent) return "";
    sent = true;
    return "first\n";
  };
  io.on_stdout = [&](std::string_view d) { out += d; };
  EXPECT_EQ(waiting.wait(io).code, 0);
  EXPECT_EQ(out, "got first\n");

  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&, i] {
      auto r = c.exec(cmd({"sh", "-c", "sleep 0.2; echo " + std::to_string(i)}));
      if (r.out == std::to_string(i) + "\n") ++ok;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 8);
}

TEST(AgentExec, TtyWithWindowSizeAndResize) {
  if (::access("/dev/ptmx", R_OK | W_OK) != 0) GTEST_SKIP() << "no /dev/ptmx";
  AgentProcess agent;
  auto req = cmd({"sh", "-c", "test -t 0 && test -t 1 && echo tty; stty size; echo $TERM"});
  req.tty = TtySize{24, 80};
  auto r = agent.client().exec(req);
  EXPECT_EQ(r.out, "tty\r\n24 80\r\nxterm\r\n");
  EXPECT_EQ(r.err, "") << "a terminal merges stderr into its output";

  auto rq = cmd({"sh", "-c", "read x; stty size"});
  rq.tty = TtySize{24, 80};
  rq.attach_stdin = true;  // as docker -it: without it the terminal gets no input
  ExecSession s = agent.client().start(rq);
  s.resize(TtySize{33, 99});  // frames arrive in order: the resize lands before the input
  std::string out;
  bool sent = false;
  StreamIo io;
  io.stdin_source = [&]() -> std::string {
    if (sent) return "";
    sent = true;
    return "go\n";
  };
  io.on_stdout = [&](std::string_view d) { out += d; };
  EXPECT_EQ(s.wait(io).code, 0);
  EXPECT_NE(out.find("33 99"), std::string::npos) << out;
}

TEST(AgentFiles, WriteAndReadRoundTrip) {
  AgentProcess agent;
  TempDir d;
  Client c = agent.client();
  std::string data = random_bytes(3u << 20, 9);
  std::string path = (d.path() / "sub/dir/file.bin").string();
  c.write_file(path, data, 0640, /*make_parents=*/true);
  struct stat st{};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(static_cast<size_t>(st.st_size), data.size());
  EXPECT_TRUE(c.read_file(path) == data);
  c.write_file(path, "", 0600);  // replaces, atomically
  EXPECT_EQ(c.read_file(path), "");
  for (const auto& e : fs::directory_iterator(d.path() / "sub/dir"))
    EXPECT_EQ(e.path().filename(), "file.bin") << "temporary file left behind";
}

TEST(AgentFiles, ErrorsAreReported) {
  AgentProcess agent;
  TempDir d;
  Client c = agent.client();
  try {
    (void)c.read_file("/nonexistent/file");
    FAIL();
  } catch (const ExecError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFileError);
    EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos) << e.what();
  }
  std::string big = (d.path() / "big").string();
  c.write_file(big, std::string(1000, 'x'));
  EXPECT_THROW((void)c.read_file(big, 999), ExecError);
  EXPECT_EQ(c.read_file(big, 1000).size(), 1000u);
  EXPECT_THROW((void)c.read_file(d.path().string()), ExecError) << "a directory is not a regular file";
  EXPECT_THROW(c.write_file((d.path() / "no/parent").string(), "x"), ExecError);
  // Large data for a refused write is still consumed, and the connection answers ERROR.
  EXPECT_THROW(c.write_file((d.path() / "no/parent").string(), std::string(3u << 20, 'y')), ExecError);
  EXPECT_EQ(c.exec(cmd({"true"})).exit_code(), 0) << "the agent keeps serving";
}

TEST(AgentMain, MainProcessEndEndsTheAgentWithItsStatus) {
  AgentProcess agent;
  auto req = cmd({"sh", "-c", "echo bye; exit 3"});
  req.main = true;
  auto r = agent.client().exec(req);
  EXPECT_EQ(r.out, "bye\n");
  EXPECT_EQ(r.exit_code(), 3);
  EXPECT_EQ(agent.wait_exit(10s), 3) << "without init, 'power off' is the agent exiting with the status";
}

TEST(AgentMain, MainProcessThatCannotStartEndsTheAgentWith127) {
  AgentProcess agent;
  auto req = cmd({"no-such-command-xyz"});
  req.main = true;
  EXPECT_THROW((void)agent.client().exec(req), ExecError);
  EXPECT_EQ(agent.wait_exit(10s), 127);
}

TEST(AgentMain, DetachedMainIsSignalledFromAnotherConnection) {
  AgentProcess agent;
  Client c = agent.client();
  auto req = cmd({"sh", "-c", "trap 'exit 9' TERM; while :; do sleep 0.05; done"});
  int64_t pid = c.start_detached_main(req);
  EXPECT_GT(pid, 0);
  auto again = cmd({"true"});
  again.main = true;
  try {
    (void)c.exec(again);
    FAIL() << "a second main process started";
  } catch (const ExecError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kBusy);
  }
  EXPECT_EQ(c.exec(cmd({"echo", "side"})).out, "side\n") << "exec runs beside the main process";
  c.signal_main(SIGTERM);
  EXPECT_EQ(agent.wait_exit(10s), 9);
}

TEST(AgentMain, PowerOffRequest) {
  AgentProcess agent;
  agent.client().power_off(5);
  EXPECT_EQ(agent.wait_exit(10s), 5);
}

TEST(AgentExec, SequentialExecsLeakNoAgentFds) {
  AgentProcess agent;
  Client c = agent.client();
  (void)c.exec(cmd({"true"}));
  size_t before = settled_fds(agent.pid());
  for (int i = 0; i < 30; ++i) {
    auto req = cmd({"cat"});
    (void)c.exec(req, "x");
    (void)c.exec(cmd({"sh", "-c", "echo e >&2"}));
  }
  EXPECT_EQ(settled_fds(agent.pid()), before);
}

// ---- hostile frames sent to the agent ------------------------------------------------------

std::string frame_header(uint32_t len, uint8_t type) {
  std::string h(5, '\0');
  for (int i = 0; i < 4; ++i) h[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  h[4] = static_cast<char>(type);
  return h;
}

std::string hello_request() { return encode_frame(FrameType::kHello, encode(HelloRequest{})); }

UniqueFd connect_unix(const fs::path& p) {
  UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, p.c_str(), sizeof a.sun_path - 1);
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("connect");
  return s;
}

// Sends raw bytes, half-closes, and returns the frames the agent sent back before closing.
std::vector<Frame> raw_exchange(const fs::path& sock, const std::string& bytes, bool half_close = true) {
  UniqueFd s = connect_unix(sock);
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(s.get(), bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;  // the agent may close on us mid-way
    off += static_cast<size_t>(n);
  }
  if (half_close) ::shutdown(s.get(), SHUT_WR);
  FrameDecoder d;
  std::vector<Frame> frames;
  auto deadline = Clock::now() + 10s;
  for (;;) {
    pollfd p{s.get(), POLLIN, 0};
    if (::poll(&p, 1, 1000) <= 0) {
      if (Clock::now() > deadline) throw std::runtime_error("the agent neither answered nor closed");
      continue;
    }
    char buf[65536];
    ssize_t n = ::read(s.get(), buf, sizeof buf);
    if (n <= 0) break;
    d.feed(std::string_view(buf, static_cast<size_t>(n)));
    while (auto f = d.next()) frames.push_back(std::move(*f));
  }
  return frames;
}

void expect_protocol_error(const std::vector<Frame>& frames, const std::string& what) {
  ASSERT_FALSE(frames.empty()) << what << ": no reply";
  ASSERT_EQ(frames.back().type, FrameType::kError) << what;
  EXPECT_EQ(decode<ErrorInfo>(frames.back().payload).code, ErrorCode::kProtocol) << what;
}

TEST(AgentHostileInput, MalformedFramesEndTheConnectionNotTheAgent) {
  AgentProcess agent;
  TempDir d;
  Client c = agent.client();
  (void)c.exec(cmd({"true"}));
  size_t fds_before = settled_fds(agent.pid());

  std::string hello = hello_request();
  WriteFileRequest wf;
  wf.path = (d.path() / "victim").string();
  wf.size = 3;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"oversize length", frame_header(0xffffffffu, 1)},
      {"oversize JSON", frame_header(kMaxJsonPayload + 1, 1) + std::string(100, '{')},
      {"unknown type", frame_header(0, 99)},
      {"HELLO not JSON", encode_frame(FrameType::kHello, "garbage")},
      {"HELLO wrong protocol", encode_frame(FrameType::kHello, R"({"protocol":"x","min_version":1,"max_version":1})")},
      {"first frame not HELLO", encode_frame(FrameType::kStdin, "data")},
      {"EXEC argv not a list", hello + encode_frame(FrameType::kExec, R"({"argv":"ls"})")},
      {"EXEC deep nesting", hello + encode_frame(FrameType::kExec, std::string(5000, '[') + std::string(5000, ']'))},
      {"FILE_DATA while idle", hello + encode_frame(FrameType::kFileData, "x")},
      {"agent-to-host frame", hello + encode_frame(FrameType::kStdout, "x")},
      {"HTTP request", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"},
      {"file data beyond the announced size",
       hello + encode_frame(FrameType::kWriteFile, encode(wf)) + encode_frame(FrameType::kFileData, "0123456789")},
      {"STDIN_EOF with payload",
       hello + encode_frame(FrameType::kExec, encode(cmd({"sleep", "30"}))) + encode_frame(FrameType::kStdinEof, "x")},
  };
  for (const auto& [what, bytes] : cases) expect_protocol_error(raw_exchange(agent.socket(), bytes), what);

  // Truncated input: the agent just sees the peer leave.
  std::string exec = encode_frame(FrameType::kExec, encode(cmd({"true"})));
  auto frames = raw_exchange(agent.socket(), hello + exec.substr(0, exec.size() / 2));
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].type, FrameType::kHello);

  EXPECT_FALSE(fs::exists(d.path() / "victim"));
  for (const auto& e : fs::directory_iterator(d.path())) ADD_FAILURE() << "left behind: " << e.path();
  EXPECT_EQ(c.exec(cmd({"echo", "still here"})).out, "still here\n");
  EXPECT_EQ(settled_fds(agent.pid()), fds_before) << "a hostile connection leaked agent fds";
}

TEST(AgentHostileInput, ProtocolErrorKillsTheSessionsProcess) {
  AgentProcess agent;
  UniqueFd s = connect_unix(agent.socket());
  std::string bytes = hello_request() + encode_frame(FrameType::kExec, encode(cmd({"sleep", "30"})));
  ASSERT_EQ(::send(s.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  FrameDecoder d;
  std::optional<int64_t> pid;
  while (!pid) {
    char buf[4096];
    ssize_t n = ::read(s.get(), buf, sizeof buf);
    ASSERT_GT(n, 0);
    d.feed(std::string_view(buf, static_cast<size_t>(n)));
    while (auto f = d.next())
      if (f->type == FrameType::kStarted) pid = decode<Started>(f->payload).pid;
  }
  std::string junk = frame_header(0, 250);
  ASSERT_EQ(::send(s.get(), junk.data(), junk.size(), MSG_NOSIGNAL), 5);
  EXPECT_TRUE(process_gone(static_cast<pid_t>(*pid), 10s));
}

TEST(AgentHostileInput, UnsupportedVersionIsRefused) {
  AgentProcess agent;
  auto frames = raw_exchange(agent.socket(), encode_frame(FrameType::kHello, encode(HelloRequest{5, 9})));
  ASSERT_EQ(frames.size(), 1u);
  ASSERT_EQ(frames[0].type, FrameType::kError);
  EXPECT_EQ(decode<ErrorInfo>(frames[0].payload).code, ErrorCode::kUnsupportedVersion);
}

// ---- hostile agents, as seen by the client -------------------------------------------------

// A fake agent: accepts one connection, sends a scripted reply, then closes (or holds the
// connection open until the client leaves).
class FakeAgent {
 public:
  explicit FakeAgent(std::string reply, bool hold_open = false) {
    path_ = dir_.path() / "fake.sock";
    listener_ = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path_.c_str(), sizeof a.sun_path - 1);
    if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener_.get(), 1) != 0)
      throw std::runtime_error("fake agent listen failed");
    thread_ = std::thread([this, reply = std::move(reply), hold_open] {
      UniqueFd c(::accept(listener_.get(), nullptr, nullptr));
      if (!c) return;
      size_t off = 0;
      while (off < reply.size()) {
        ssize_t n = ::send(c.get(), reply.data() + off, reply.size() - off, MSG_NOSIGNAL);
        if (n <= 0) break;
        off += static_cast<size_t>(n);
      }
      if (hold_open) {
        char buf[65536];
        while (::read(c.get(), buf, sizeof buf) > 0) {
        }
      }
    });
  }
  ~FakeAgent() {
    ::shutdown(listener_.get(), SHUT_RDWR);
    thread_.join();
  }
  [[nodiscard]] Client client(ClientOptions o = {}) const {
    o.io_timeout = 5s;
    return Client(Endpoint::unix_socket(path_), o);
  }

 private:
  TempDir dir_;
  fs::path path_;
  UniqueFd listener_;
  std::thread thread_;
};

std::string good_hello() { return encode_frame(FrameType::kHello, encode(HelloReply{1, "fake", false, "h"})); }
std::string started() { return encode_frame(FrameType::kStarted, encode(Started{123})); }

TEST(ClientHostileAgent, MalformedHandshakesAreProtocolErrors) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"oversize frame", frame_header(0xffffffffu, 6)},
      {"unknown type", frame_header(0, 77)},
      {"HELLO not JSON", encode_frame(FrameType::kHello, "{{{")},
      {"HELLO array", encode_frame(FrameType::kHello, "[1,2]")},
      {"version not offered", encode_frame(FrameType::kHello, encode(HelloReply{7, "x", false, ""}))},
      {"EXIT instead of HELLO", encode_frame(FrameType::kExit, encode(ExitStatus{}))},
      {"truncated", good_hello().substr(0, 9)},
  };
  for (const auto& [what, reply] : cases) {
    FakeAgent fake(reply);
    EXPECT_THROW((void)fake.client().hello(), Error) << what;
  }
  FakeAgent typed(frame_header(0, 77));
  EXPECT_THROW((void)typed.client().hello(), ProtocolError);
  FakeAgent nothing("");
  EXPECT_THROW((void)nothing.client().hello(), Error) << "closed without a word";
}

TEST(ClientHostileAgent, MalformedExecStreamsAreErrors) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"oversize STDOUT", good_hello() + started() + frame_header(2u << 20, 6)},
      {"EXIT code out of range", good_hello() + started() + encode_frame(FrameType::kExit, R"({"code":999})")},
      {"EXIT not JSON", good_hello() + started() + encode_frame(FrameType::kExit, "exit!")},
      {"unexpected HELLO", good_hello() + started() + good_hello()},
      {"closed mid-frame", good_hello() + started() + encode_frame(FrameType::kStdout, "hello").substr(0, 7)},
      {"closed before EXIT", good_hello() + started() + encode_frame(FrameType::kStdout, "partial output")},
      {"STARTED missing pid", good_hello() + encode_frame(FrameType::kStarted, "{}")},
      {"unknown type mid-stream", good_hello() + started() + frame_header(3, 200) + "abc"},
  };
  for (const auto& [what, reply] : cases) {
    FakeAgent fake(reply);
    EXPECT_THROW((void)fake.client().exec(cmd({"x"})), Error) << what;
  }
}

TEST(ClientHostileAgent, OutputBeyondTheCapStopsTheExec) {
  std::string flood = good_hello() + started();
  for (int i = 0; i < 64; ++i) flood += encode_frame(FrameType::kStdout, std::string(1000, 'z'));
  FakeAgent fake(flood, /*hold_open=*/true);
  ClientOptions o;
  o.max_output = 10000;
  try {
    (void)fake.client(o).exec(cmd({"x"}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than 10000 bytes"), std::string::npos) << e.what();
  }
}

TEST(ClientHostileAgent, ReadFileSizeLiesAreCaught) {
  // hold_open: a fake that closed at once could make the client's request fail (EPIPE,
  // ECONNRESET) before the lie is read, which is an Error but not the ProtocolError checked here.
  {
    FakeAgent fake(good_hello() + encode_frame(FrameType::kFileInfo, encode(FileInfo{100, 0644})), /*hold_open=*/true);
    EXPECT_THROW((void)fake.client().read_file("/f", 10), ProtocolError);
  }
  {
    FakeAgent fake(good_hello() + encode_frame(FrameType::kFileInfo, encode(FileInfo{5, 0644})) +
                       encode_frame(FrameType::kFileData, std::string(20, 'x')),
                   /*hold_open=*/true);
    EXPECT_THROW((void)fake.client().read_file("/f", 10), ProtocolError);
  }
}

TEST(ClientHostileAgent, SilentAgentTimesOut) {
  FakeAgent fake("", /*hold_open=*/true);
  auto t0 = Clock::now();
  Client quick(Endpoint::unix_socket(fake.client().endpoint().socket), ClientOptions{200ms, 1 << 20});
  EXPECT_THROW((void)quick.hello(), Error);
  EXPECT_LT(Clock::now() - t0, 5s);
}

// ---- through a VMM-style vsock socket -------------------------------------------------------

// Plays the VMM's part of Firecracker's host-initiated vsock connection: reads "CONNECT <port>",
// answers "OK <n>" and relays bytes to the agent's Unix socket. `refuse` answers nothing and
// closes, as the VMM does when no guest program listens on the port.
class FakeVmm {
 public:
  FakeVmm(fs::path agent_socket, uint32_t port, bool refuse = false) {
    path_ = dir_.path() / "vm.vsock";
    listener_ = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path_.c_str(), sizeof a.sun_path - 1);
    if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener_.get(), 4) != 0)
      throw std::runtime_error("fake vmm listen failed");
    thread_ = std::thread([this, agent_socket, port, refuse] {
      for (;;) {
        UniqueFd c(::accept(listener_.get(), nullptr, nullptr));
        if (!c) return;
        std::string line;
        char ch;
        while (::read(c.get(), &ch, 1) == 1 && ch != '\n') line.push_back(ch);
        if (refuse || line != "CONNECT " + std::to_string(port)) continue;
        UniqueFd up = connect_unix(agent_socket);
        std::string ok = "OK 1073741824\n";
        if (::send(c.get(), ok.data(), ok.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(ok.size())) continue;
        relay(c.get(), up.get());
      }
    });
  }
  ~FakeVmm() {
    ::shutdown(listener_.get(), SHUT_RDWR);
    thread_.join();
  }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  // Passes a half-close on (shutdown(SHUT_WR) on the other side), as the real VMM does
  // (docs/vsock.md), and ends when both directions have.
  static void relay(int a, int b) {
    pollfd p[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
    char buf[65536];
    while (p[0].fd >= 0 || p[1].fd >= 0) {
      if (::poll(p, 2, -1) <= 0) return;
      for (int i = 0; i < 2; ++i) {
        if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t n = ::read(p[i].fd, buf, sizeof buf);
        if (n < 0) return;
        if (n == 0) {
          ::shutdown(i == 0 ? b : a, SHUT_WR);
          p[i].fd = -1;
          continue;
        }
        for (ssize_t off = 0; off < n;) {
          ssize_t w = ::send(i == 0 ? b : a, buf + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
          if (w <= 0) return;
          off += w;
        }
      }
    }
  }
  TempDir dir_;
  fs::path path_;
  UniqueFd listener_;
  std::thread thread_;
};

TEST(AgentVsock, ExecThroughTheVmmHandshake) {
  AgentProcess agent;
  FakeVmm vmm(agent.socket(), kDefaultPort);
  Client c(Endpoint::vsock(vmm.path()), ClientOptions{10s, 1 << 20});
  EXPECT_EQ(c.wait_ready(Clock::now() + 10s).hostname, "agent-test");
  auto r = c.exec(cmd({"sh", "-c", "echo via-vsock; exit 4"}));
  EXPECT_EQ(r.out, "via-vsock\n");
  EXPECT_EQ(r.exit_code(), 4);
}

TEST(AgentVsock, RefusedPortIsRetriedUntilTheDeadline) {
  AgentProcess agent;
  FakeVmm vmm(agent.socket(), kDefaultPort, /*refuse=*/true);
  Client c(Endpoint::vsock(vmm.path()), ClientOptions{1s, 1 << 20});
  auto t0 = Clock::now();
  try {
    (void)c.wait_ready(Clock::now() + 300ms);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did not become ready"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("refused"), std::string::npos) << e.what();
  }
  EXPECT_LT(Clock::now() - t0, 5s);
}

// ---- RESTORE (protocol v2) and fast, bounded connecting ------------------------------------

RestoreRequest restore_request(std::string hostname) {
  RestoreRequest r;
  // Now: even an agent that wrongly set the clock here would not move the host's.
  r.realtime_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  r.entropy = random_bytes(64, 99);
  r.hostname = std::move(hostname);
  return r;
}

std::string host_hostname() {
  char h[256] = {};
  ::gethostname(h, sizeof h - 1);
  return h;
}

TEST(AgentRestore, RoundTripWithoutInitLeavesTheHostAlone) {
  AgentProcess agent;
  Client c = agent.client();
  EXPECT_EQ(c.hello().version, kProtocolVersion) << "a current host and agent speak the newest version";
  const std::string before = host_hostname();
  RestoreReply r = c.restore(restore_request("clone-42"));
  EXPECT_EQ(r, RestoreReply{}) << "without init the clock and hostname are skipped, entropy only mixed in";
  EXPECT_EQ(host_hostname(), before) << "--no-init must not touch the host's hostname";
  // The agent's own hostname follows: HELLO and the HOSTNAME of new processes.
  EXPECT_EQ(c.hello().hostname, "clone-42");
  EXPECT_EQ(c.exec(cmd({"sh", "-c", "echo $HOSTNAME"})).out, "clone-42\n");
  // Again (a clone may be re-personalised), and the agent keeps serving.
  EXPECT_EQ(c.restore(restore_request("clone-43")), RestoreReply{});
  EXPECT_EQ(c.hello().hostname, "clone-43");
  EXPECT_EQ(c.exec(cmd({"echo", "ok"})).out, "ok\n");
}

TEST(AgentRestore, Version1SessionRefusesRestoreAndV1StillWorks) {
  AgentProcess agent;
  std::string v1_hello = encode_frame(FrameType::kHello, encode(HelloRequest{1, 1}));
  // A v1 host's exec, exactly as before version 2 existed.
  auto frames = raw_exchange(agent.socket(), v1_hello + encode_frame(FrameType::kExec, encode(cmd({"echo", "v1"}))));
  ASSERT_GE(frames.size(), 2u);
  ASSERT_EQ(frames[0].type, FrameType::kHello);
  EXPECT_EQ(decode<HelloReply>(frames[0].payload).version, 1u);
  EXPECT_EQ(frames[1].type, FrameType::kStarted);
  // RESTORE in a v1 session is a protocol error, and the hostname stays.
  std::string restore = encode_frame(FrameType::kRestore, encode(restore_request("never")));
  frames = raw_exchange(agent.socket(), v1_hello + restore);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(decode<HelloReply>(frames[0].payload).version, 1u);
  expect_protocol_error(frames, "RESTORE in a v1 session");
  EXPECT_NE(decode<ErrorInfo>(frames[1].payload).message.find("version 2"), std::string::npos);
  EXPECT_EQ(agent.client().hello().hostname, "agent-test");
  // In a v2 session: OK, and a malformed RESTORE is a protocol error like any other.
  frames = raw_exchange(agent.socket(), hello_request() + restore);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[1].type, FrameType::kOk);
  frames = raw_exchange(agent.socket(), hello_request() + encode_frame(FrameType::kRestore, R"({"realtime_ns":1})"));
  expect_protocol_error(frames, "RESTORE without entropy");
  // RESTORE is a request of its own, not a frame inside an exec session.
  frames = raw_exchange(agent.socket(), hello_request() + encode_frame(FrameType::kExec, encode(cmd({"sleep", "30"}))) +
                                            restore);
  expect_protocol_error(frames, "RESTORE during an exec");
}

TEST(AgentRestore, ClientRefusesAnInvalidRequestBeforeConnecting) {
  TempDir d;
  Client c(Endpoint::unix_socket(d.path() / "nobody.sock"), ClientOptions{200ms, 1 << 20});
  auto r = restore_request("ok");
  r.entropy.resize(16);
  try {
    (void)c.restore(r);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("RESTORE.entropy"), std::string::npos) << e.what();
  }
  r = restore_request("bad name");
  EXPECT_THROW((void)c.restore(r), Error);
}

TEST(ClientHostileAgent, RestoreAgainstAVersion1AgentOrAFailedStep) {
  {
    // An agent from before version 2 picks version 1 (and would refuse frame type 18).
    FakeAgent fake(good_hello() + encode_frame(FrameType::kError, encode(ErrorInfo{ErrorCode::kProtocol, "unknown frame type 18"})),
                   /*hold_open=*/true);
    try {
      (void)fake.client().restore(restore_request("x"));
      FAIL();
    } catch (const ExecError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kUnsupportedVersion) << e.what();
    }
  }
  {
    HelloReply v2{2, "fake", true, "h"};
    FakeAgent fake(encode_frame(FrameType::kHello, encode(v2)) +
                       encode_frame(FrameType::kError, encode(ErrorInfo{ErrorCode::kRestoreFailed, "sethostname: Operation not permitted (errno 1)"})),
                   /*hold_open=*/true);
    try {
      (void)fake.client().restore(restore_request("x"));
      FAIL();
    } catch (const ExecError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kRestoreFailed);
      EXPECT_NE(std::string(e.what()).find("sethostname"), std::string::npos) << e.what();
    }
  }
  {
    HelloReply v2{2, "fake", true, "h"};
    FakeAgent fake(encode_frame(FrameType::kHello, encode(v2)) + encode_frame(FrameType::kOk, encode(RestoreReply{true, true, true})),
                   /*hold_open=*/true);
    EXPECT_EQ(fake.client().restore(restore_request("x")), (RestoreReply{true, true, true}));
  }
}

// A Unix listener that never accepts, with its backlog filled: the state a burst of VMs can
// leave the VMM's vsock socket in. A blocking connect() to it sleeps until someone accepts.
class FullBacklog {
 public:
  FullBacklog() {
    path_ = dir_.path() / "full.sock";
    listener_ = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path_.c_str(), sizeof a.sun_path - 1);
    if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener_.get(), 0) != 0)
      throw std::runtime_error("listen failed");
    for (;;) {
      UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
      if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        if (errno == EAGAIN) break;  // full
        throw std::runtime_error(std::string("filling the backlog: ") + std::strerror(errno));
      }
      fillers_.push_back(std::move(s));
      if (fillers_.size() > 1000) throw std::runtime_error("the backlog never filled");
    }
  }
  // Closing the listener wakes a connect() blocked on it (it then fails), so a test of the
  // unfixed client ends instead of hanging.
  void close() { listener_.reset(); }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  TempDir dir_;
  fs::path path_;
  UniqueFd listener_;
  std::vector<UniqueFd> fillers_;
};

TEST(ClientConnect, FullBacklogIsBoundedByTheDeadline) {
  FullBacklog full;
  ClientOptions o;
  o.io_timeout = 200ms;
  Client c(Endpoint::unix_socket(full.path()), o);
  auto t0 = Clock::now();
  auto attempt = std::async(std::launch::async, [&]() -> std::string {
    try {
      (void)c.hello();
      return "connected";
    } catch (const Error& e) {
      return e.what();
    }
  });
  if (attempt.wait_for(3s) != std::future_status::ready) {
    ADD_FAILURE() << "connect() to a listener with a full backlog ignored the 200 ms deadline";
    full.close();
  }
  std::string what = attempt.get();
  auto took = Clock::now() - t0;
  EXPECT_LT(took, 1s);
  EXPECT_GE(took, 190ms) << "gave up before the deadline: " << what;
  EXPECT_NE(what.find("timed out connecting to the agent at " + full.path().string()), std::string::npos) << what;
  EXPECT_NE(what.find("backlog"), std::string::npos) << what;

  // Through the VMM's socket, and inside wait_ready (which retries until its own deadline).
  Client v(Endpoint::vsock(full.path()), o);
  t0 = Clock::now();
  EXPECT_THROW((void)v.wait_ready(Clock::now() + 300ms), Error);
  EXPECT_LT(Clock::now() - t0, 1500ms);
}

// Accepts and at once closes every connection, counting them: each wait_ready() attempt is one.
class ClosingListener {
 public:
  ClosingListener() {
    path_ = dir_.path() / "closing.sock";
    listener_ = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path_.c_str(), sizeof a.sun_path - 1);
    if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener_.get(), 64) != 0)
      throw std::runtime_error("listen failed");
    thread_ = std::thread([this] {
      for (;;) {
        UniqueFd c(::accept(listener_.get(), nullptr, nullptr));
        if (!c) return;
        ++accepted;
      }
    });
  }
  ~ClosingListener() {
    ::shutdown(listener_.get(), SHUT_RDWR);
    thread_.join();
  }
  [[nodiscard]] const fs::path& path() const { return path_; }
  std::atomic<int> accepted{0};

 private:
  TempDir dir_;
  fs::path path_;
  UniqueFd listener_;
  std::thread thread_;
};

TEST(ClientConnect, ReadyBackoffCapIsConfigurable) {
  EXPECT_EQ(ClientOptions{}.ready_poll_max, 50ms) << "the default is unchanged";
  auto attempts = [](std::chrono::milliseconds cap) {
    ClosingListener l;
    ClientOptions o;
    o.io_timeout = 1s;
    o.ready_poll_max = cap;
    Client c(Endpoint::unix_socket(l.path()), o);
    EXPECT_THROW((void)c.wait_ready(Clock::now() + 400ms), Error) << "ready without an agent";
    std::this_thread::sleep_for(20ms);  // let the acceptor count the last one
    return l.accepted.load();
  };
  int slow = attempts(50ms), fast = attempts(2ms);
  // 1+2+4+8+16+32 ms, then every 50: about 12 tries in 400 ms; every 2 ms: well over 100.
  EXPECT_LE(slow, 20);
  EXPECT_GE(fast, 3 * slow) << "slow " << slow << ", fast " << fast;
}

// ---- NETWORK (protocol v3) ------------------------------------------------------------------

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

NetworkRequest network_request() {
  NetworkRequest r;
  r.interface = NetworkRequest::Interface{"52:54:00:12:34:56", 65520, "10.0.2.15", 24, "10.0.2.2",
                                          "fec0::15", 64, "fec0::2"};
  r.nameservers = {"10.0.2.3", "fec0::3"};
  r.search = {"example"};
  r.hosts = {{"db", "10.0.2.100"}};
  r.hostname = "web-1";
  return r;
}

TEST(AgentNetworkRequest, WithoutInitWritesTheFilesIntoTheUsersRootOnly) {
  TempDir root;
  AgentProcess agent({"--users-root", root.path().string()});
  Client c = agent.client();
  EXPECT_EQ(c.hello().version, 3u);
  c.configure_network(network_request());
  EXPECT_EQ(slurp(root.path() / "etc" / "resolv.conf"),
            "# Written by sm-agent from the host's network configuration.\n"
            "nameserver 10.0.2.3\nnameserver fec0::3\nsearch example\n");
  std::string hosts = slurp(root.path() / "etc" / "hosts");
  EXPECT_NE(hosts.find("10.0.2.15\tweb-1\n"), std::string::npos) << hosts;
  EXPECT_NE(hosts.find("10.0.2.100\tdb\n"), std::string::npos) << hosts;
  // Again (after a restore): fine, and the agent keeps serving.
  c.configure_network(network_request());
  EXPECT_EQ(c.exec(cmd({"echo", "ok"})).out, "ok\n");
}

TEST(AgentNetworkRequest, OlderSessionsAndBadRequestsAreRefused) {
  AgentProcess agent;
  NetworkRequest req = network_request();
  std::string network = encode_frame(FrameType::kNetwork, encode(req));
  // A v2 session has no NETWORK: a protocol error, as RESTORE is in a v1 session.
  auto frames = raw_exchange(agent.socket(), encode_frame(FrameType::kHello, encode(HelloRequest{1, 2})) + network);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(decode<HelloReply>(frames[0].payload).version, 2u);
  expect_protocol_error(frames, "NETWORK in a v2 session");
  EXPECT_NE(decode<ErrorInfo>(frames[1].payload).message.find("version 3"), std::string::npos);
  // Without --users-root the agent writes nothing (never the host's /etc) and answers OK.
  frames = raw_exchange(agent.socket(), hello_request() + network);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[1].type, FrameType::kOk);
  // A hostile host's request: a clear protocol error naming the field, the agent unharmed.
  frames = raw_exchange(agent.socket(), hello_request() + encode_frame(FrameType::kNetwork,
                                                                       R"({"nameservers":["1.1.1.1\nsearch evil"]})"));
  expect_protocol_error(frames, "nameserver with a newline");
  EXPECT_NE(decode<ErrorInfo>(frames.back().payload).message.find("NETWORK.nameservers"), std::string::npos);
  EXPECT_EQ(agent.client().exec(cmd({"echo", "alive"})).out, "alive\n");
  // The client refuses the same before connecting.
  TempDir d;
  Client nobody(Endpoint::unix_socket(d.path() / "nobody.sock"), ClientOptions{200ms, 1 << 20});
  req.hosts.push_back({"bad name", "1.2.3.4"});
  try {
    nobody.configure_network(req);
    FAIL();
  } catch (const ExecError&) {
    FAIL() << "must not reach an agent";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("NETWORK.hosts"), std::string::npos) << e.what();
  }
}

TEST(ClientHostileAgent, NetworkAgainstAnOldAgentOrAFailedStep) {
  {
    HelloReply v2{2, "sm-agent old", true, "h"};
    FakeAgent fake(encode_frame(FrameType::kHello, encode(v2)), /*hold_open=*/true);
    try {
      fake.client().configure_network(network_request());
      FAIL();
    } catch (const ExecError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kUnsupportedVersion) << e.what();
    }
  }
  {
    HelloReply v3{3, "fake", true, "h"};
    FakeAgent fake(encode_frame(FrameType::kHello, encode(v3)) +
                       encode_frame(FrameType::kError, encode(ErrorInfo{ErrorCode::kNetworkFailed,
                                                                        "NETWORK: add 10.0.2.15/24 to eth0: Operation not permitted (errno 1)"})),
                   /*hold_open=*/true);
    try {
      fake.client().configure_network(network_request());
      FAIL();
    } catch (const ExecError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kNetworkFailed);
      EXPECT_NE(std::string(e.what()).find("add 10.0.2.15/24 to eth0"), std::string::npos) << e.what();
    }
  }
  {
    HelloReply v3{3, "fake", true, "h"};
    FakeAgent fake(encode_frame(FrameType::kHello, encode(v3)) + encode_frame(FrameType::kOk, "{}"), /*hold_open=*/true);
    EXPECT_NO_THROW(fake.client().configure_network(network_request()));
  }
}

// ---- TCP forwarding (vsock port 1026) ----------------------------------------------------------

// A TCP service on 127.0.0.1 that echoes what it reads, upper-cased, then closes after EOF.
class UpperEcho {
 public:
  UpperEcho() {
    fd_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_.get(), 4) != 0 ||
        ::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
      throw std::runtime_error("listen on 127.0.0.1 failed");
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      UniqueFd c(::accept(fd_.get(), nullptr, nullptr));
      if (!c) return;
      char buf[4096];
      ssize_t n;
      while ((n = ::read(c.get(), buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n; ++i) buf[i] = static_cast<char>(std::toupper(static_cast<unsigned char>(buf[i])));
        if (::send(c.get(), buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) return;
      }
      (void)::send(c.get(), "<eof>", 5, MSG_NOSIGNAL);
    });
  }
  ~UpperEcho() {
    ::shutdown(fd_.get(), SHUT_RDWR);
    thread_.join();
  }
  [[nodiscard]] uint16_t port() const { return port_; }

 private:
  UniqueFd fd_;
  uint16_t port_ = 0;
  std::thread thread_;
};

std::string read_to_eof(int fd) {
  std::string s;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) s.append(buf, static_cast<size_t>(n));
  return s;
}

TEST(AgentTcpForwardE2E, ThroughTheRealAgentAndTheVmmHandshake) {
  TempDir d;
  fs::path tcp_sock = d.path() / "tcp.sock";
  AgentProcess agent({"--tcp-listen", "unix:" + tcp_sock.string()});
  FakeVmm vmm(tcp_sock, kTcpForwardPort);
  UpperEcho service;
  UniqueFd s = connect_tcp(vmm.path(), service.port(), 5s);
  ASSERT_TRUE(s);
  EXPECT_EQ(::fcntl(s.get(), F_GETFL) & O_NONBLOCK, 0) << "handed back blocking";
  ASSERT_EQ(::send(s.get(), "hello", 5, MSG_NOSIGNAL), 5);
  ::shutdown(s.get(), SHUT_WR);  // the service sees EOF and answers after it
  EXPECT_EQ(read_to_eof(s.get()), "HELLO<eof>");
  s.reset();
  // A port nobody listens on in the "guest": the agent's reason, in the documented words.
  UniqueFd probe(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ASSERT_EQ(::bind(probe.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::getsockname(probe.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
  uint16_t closed = ntohs(a.sin_port);
  probe.reset();
  try {
    (void)connect_tcp(vmm.path(), closed, 5s);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "cannot connect to port " + std::to_string(closed) + " in the VM: connection refused");
  }
  // The agent's protocol is unaffected, and its forwarders are reaped without a trace.
  EXPECT_EQ(agent.client().exec(cmd({"echo", "ok"})).out, "ok\n");
}

// Plays the VMM and the agent's forwarder at once: checks "CONNECT 1026" and "TCP <port>",
// then sends a scripted reply and holds the connection until the client leaves.
class FakeForwarder {
 public:
  explicit FakeForwarder(std::string reply, bool vmm_refuses = false) {
    path_ = dir_.path() / "vm.vsock";
    listener_ = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path_.c_str(), sizeof a.sun_path - 1);
    if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener_.get(), 1) != 0)
      throw std::runtime_error("fake forwarder listen failed");
    thread_ = std::thread([this, reply = std::move(reply), vmm_refuses] {
      UniqueFd c(::accept(listener_.get(), nullptr, nullptr));
      if (!c) return;
      auto line = [&] {
        std::string l;
        char ch;
        while (::read(c.get(), &ch, 1) == 1 && ch != '\n') l.push_back(ch);
        return l;
      };
      connect_line = line();
      if (vmm_refuses) return;
      (void)::send(c.get(), "OK 1073741824\n", 14, MSG_NOSIGNAL);
      tcp_line = line();
      (void)::send(c.get(), reply.data(), reply.size(), MSG_NOSIGNAL);
      char buf[4096];
      while (::read(c.get(), buf, sizeof buf) > 0) {
      }
    });
  }
  ~FakeForwarder() { join(); }
  // Waits for the fake to finish (the client must have closed); the lines are then stable.
  void join() {
    ::shutdown(listener_.get(), SHUT_RDWR);
    if (thread_.joinable()) thread_.join();
  }
  [[nodiscard]] const fs::path& path() const { return path_; }
  std::string connect_line, tcp_line;  // valid after join()

 private:
  TempDir dir_;
  fs::path path_;
  UniqueFd listener_;
  std::thread thread_;
};

TEST(ClientConnectTcp, OkHandsOverTheStreamUntouched) {
  FakeForwarder fake("OK\nfirst bytes of the service");
  UniqueFd s = connect_tcp(fake.path(), 8080, 2s);
  char buf[64];
  ssize_t n = ::read(s.get(), buf, sizeof buf);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)), "first bytes of the service");
  s.reset();
  fake.join();
  EXPECT_EQ(fake.connect_line, "CONNECT 1026");
  EXPECT_EQ(fake.tcp_line, "TCP 8080");
}

TEST(ClientConnectTcp, ErrAndTimeoutAndGarbage) {
  {
    FakeForwarder fake("ERR connection refused\n");
    try {
      (void)connect_tcp(fake.path(), 8080, 2s);
      FAIL();
    } catch (const ProtocolError& e) {
      FAIL() << e.what();
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), "cannot connect to port 8080 in the VM: connection refused");
    }
  }
  {
    FakeForwarder fake("ERR \x1b[31mred\x07\n");
    try {
      (void)connect_tcp(fake.path(), 8080, 2s);
      FAIL();
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), "cannot connect to port 8080 in the VM: ?[31mred?") << "control bytes neutralised";
    }
  }
  {
    FakeForwarder fake("");  // never answers
    auto t0 = Clock::now();
    try {
      (void)connect_tcp(fake.path(), 8080, 300ms);
      FAIL();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("timed out"), std::string::npos) << e.what();
    }
    EXPECT_LT(Clock::now() - t0, 3s);
    EXPECT_GE(Clock::now() - t0, 290ms);
  }
  {
    FakeForwarder fake("HTTP/1.1 400 Bad Request\r\n");
    EXPECT_THROW((void)connect_tcp(fake.path(), 8080, 2s), ProtocolError);
  }
  {
    FakeForwarder fake(std::string(1000, 'O'));  // no newline: capped, not buffered for ever
    EXPECT_THROW((void)connect_tcp(fake.path(), 8080, 2s), ProtocolError);
  }
  {
    FakeForwarder fake("", /*vmm_refuses=*/true);  // nothing listens on vsock port 1026
    try {
      (void)connect_tcp(fake.path(), 8080, 2s);
      FAIL();
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("cannot connect to port 8080 in the VM: ", 0), 0u) << e.what();
      EXPECT_NE(std::string(e.what()).find("1026"), std::string::npos) << e.what();
    }
  }
  TempDir d;
  try {
    (void)connect_tcp(d.path() / "no-vm.vsock", 8080, 200ms);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("cannot connect to port 8080 in the VM: ", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace sm::agent
