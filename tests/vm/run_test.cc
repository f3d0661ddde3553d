// VM tests of the container CLI: `supermachine run / exec / ps / logs / stop / kill / rm` on the
// offline test images (tests/images/build), each command a real process booting real microVMs
// on a real KVM (the host's, or the nested harness's). The whole file runs as one ctest test so
// the images are loaded and their root filesystems built once.
//
// Every command runs with its own image store (XDG_DATA_HOME), VM state directory
// (SUPERMACHINE_RUNTIME_DIR) and TMPDIR, all in one temporary directory, so the tests can check
// exactly what the runtime leaves behind.
#include <dirent.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "child_process.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

constexpr auto kDeadline = 240s;  // a cold boot under nested TCG takes seconds; be generous
const std::string kBusybox = "localhost/oci:busybox";
const std::string kMulti = "localhost/oci:multi";

struct Result {
  std::optional<int> status;
  std::string out, err;
};

sm::test::PrivateDirs g_dirs;  // this run's image store, VM state and TMPDIR

// Runs argv to its end (or the deadline) and collects what it printed.
Result run_child(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                 std::chrono::seconds deadline) {
  sm::test::ChildProcess p(argv, env);
  Result r;
  r.status = p.wait(deadline);
  r.out = p.out();
  r.err = p.err();
  return r;
}

Result sm(std::vector<std::string> args, std::chrono::seconds deadline = kDeadline) {
  args.insert(args.begin(), SM_BINARY);
  return run_child(args, {}, deadline);
}

// A shell command line (for redirections); SM stands for the supermachine binary.
Result shell(const std::string& script, std::chrono::seconds deadline = kDeadline) {
  return run_child({"/bin/sh", "-c", script}, {std::string("SM=") + SM_BINARY}, deadline);
}

std::string describe(const Result& r) {
  return "status " + (r.status ? std::to_string(*r.status) : std::string("(killed at the deadline)")) +
         "\n--- stdout ---\n" + r.out.substr(0, 2000) + "\n--- stderr ---\n" + r.err.substr(0, 4000);
}

std::vector<fs::path> files_under(const fs::path& dir) {
  std::vector<fs::path> v;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
    v.push_back(it->path());
  return v;
}

// Processes running our supermachine binary (a leaked supervisor or VMM).
std::vector<int> supermachine_processes() {
  std::vector<int> pids;
  std::error_code ec;
  const fs::path binary = fs::canonical(SM_BINARY, ec);
  for (auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::error_code ec2;
    auto exe = fs::read_symlink(e.path() / "exe", ec2);
    if (!ec2 && exe == binary) pids.push_back(std::stoi(name));
  }
  return pids;
}

class RunTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    g_dirs = sm::test::use_private_dirs("sm-runtest");
    const fs::path images = sm::test::test_images_dir(SM_SOURCE_DIR);
    Result load = sm({"load", "-q", "-i", (images / "oci").string()}, 600s);
    ASSERT_EQ(load.status, 0) << describe(load);
    ASSERT_NE(load.out.find(kBusybox), std::string::npos) << load.out;
    ASSERT_NE(load.out.find(kMulti), std::string::npos) << load.out;
  }
  static void TearDownTestSuite() {
    // Nothing may be left running; then remove the store and state.
    for (int pid : supermachine_processes()) ::kill(pid, SIGKILL);
    std::error_code ec;
    fs::remove_all(g_dirs.root, ec);
  }
  void SetUp() override {
    if (!fs::exists("/dev/kvm")) GTEST_SKIP() << "no /dev/kvm";
    ASSERT_FALSE(g_dirs.root.empty());
  }
};

TEST_F(RunTest, EchoPrintsExactlyHello) {
  Result r = sm({"run", "--rm", kBusybox, "echo", "hello"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_EQ(r.out, "hello\n");
  EXPECT_EQ(r.err, "");
}

TEST_F(RunTest, ExitStatusAndSignalAreTheWorkloads) {
  Result seven = sm({"run", "--rm", kBusybox, "sh", "-c", "exit 7"});
  EXPECT_EQ(seven.status, 7) << describe(seven);
  Result killed = sm({"run", "--rm", kBusybox, "sh", "-c", "kill -9 $$"});
  EXPECT_EQ(killed.status, 137) << describe(killed);
}

TEST_F(RunTest, RuntimeFailuresExitLikeDocker) {
  Result missing = sm({"run", "--rm", kBusybox, "/no/such/command"});
  EXPECT_EQ(missing.status, 127) << describe(missing);
  EXPECT_NE(missing.err.find("/no/such/command"), std::string::npos) << missing.err;
  Result not_exec = sm({"run", "--rm", kBusybox, "/etc/passwd"});
  EXPECT_EQ(not_exec.status, 126) << describe(not_exec);
  Result bad_memory = sm({"run", "--rm", "--memory", "lots", kBusybox, "true"});
  EXPECT_EQ(bad_memory.status, 125) << describe(bad_memory);
  // The guest resetting under the workload (as a kernel panic does) is the runtime's failure.
  Result reset = sm({"run", "--rm", kBusybox, "reboot", "-f"});
  EXPECT_EQ(reset.status, 125) << describe(reset);
  EXPECT_NE(reset.err.find("the guest reset"), std::string::npos) << describe(reset);
}

TEST_F(RunTest, StdinComesBackThroughCatByteExact) {
  const fs::path in = g_dirs.root / "stdin.bin";
  std::string data(10u << 20, '\0');
  std::mt19937_64 rng(42);
  for (size_t i = 0; i < data.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(&data[i], &v, 8);
  }
  std::ofstream(in, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
  Result r = shell("exec \"$SM\" run --rm -i " + kBusybox + " cat < " + in.string());
  fs::remove(in);
  ASSERT_EQ(r.status, 0) << describe(r);
  ASSERT_EQ(r.out.size(), data.size());
  EXPECT_TRUE(r.out == data) << "stdin came back changed";
}

TEST_F(RunTest, StdoutAndStderrStaySeparate) {
  Result r = sm({"run", "--rm", kBusybox, "sh", "-c", "echo to-out; echo to-err >&2; echo more-out"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_EQ(r.out, "to-out\nmore-out\n");
  EXPECT_EQ(r.err, "to-err\n");
}

TEST_F(RunTest, ImageEnvWorkingDirAndUserAreDefaults) {
  // busybox: Env GREETING=hello, WorkingDir /root, no User (root).
  Result bb = sm({"run", "--rm", kBusybox, "sh", "-c", "echo $GREETING; pwd; id -u"});
  ASSERT_EQ(bb.status, 0) << describe(bb);
  EXPECT_EQ(bb.out, "hello\n/root\n0\n");
  // multi: User 1000:1000, WorkingDir /data, Entrypoint sh -c, Cmd "cat /data/file".
  Result multi = sm({"run", "--rm", kMulti});
  ASSERT_EQ(multi.status, 0) << describe(multi);
  EXPECT_EQ(multi.out, "shared payload\n");
  Result who = sm({"run", "--rm", kMulti, "id -u; id -g; pwd"});
  ASSERT_EQ(who.status, 0) << describe(who);
  EXPECT_EQ(who.out, "1000\n1000\n/data\n");
}

TEST_F(RunTest, EnvWorkdirAndUserFlagsOverride) {
  const fs::path env_file = g_dirs.root / "env.list";
  std::ofstream(env_file) << "# comment\nFROM_FILE=file value\n";
  Result r = sm({"run", "--rm", "-e", "FOO=bar", "-e", "GREETING=hi", "--env-file", env_file.string(), "-w",
                 "/tmp/new/dir", "-u", "1000:1000", kBusybox, "sh", "-c",
                 "echo $FOO $GREETING $FROM_FILE; pwd; id -u; id -g"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_EQ(r.out, "bar hi file value\n/tmp/new/dir\n1000\n1000\n");
  Result named = sm({"run", "--rm", "-u", "user", kBusybox, "id", "-un"});
  ASSERT_EQ(named.status, 0) << describe(named);
  EXPECT_EQ(named.out, "user\n");
  Result entry = sm({"run", "--rm", "--entrypoint", "echo", kMulti, "from", "entrypoint"});
  ASSERT_EQ(entry.status, 0) << describe(entry);
  EXPECT_EQ(entry.out, "from entrypoint\n");
}

TEST_F(RunTest, MultiLayerWhiteoutsAreHonoured) {
  Result r = sm({"run", "--rm", kMulti,
                 "test -e /etc/motd && echo motd-still-there; cat /usr/share/doc/README; ls /opt/app; "
                 "cat /var/lib/data; ls -A /srv/shared; test -e /data/file.hardlink2 || echo no-hardlink2"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_EQ(r.out, "new doc\nnew1\nsub\nnow a file\n-sorted-before-opq\nz\nno-hardlink2\n");
}

TEST_F(RunTest, WritesToRootSucceedAndVanishWithRm) {
  Result w = sm({"run", "--rm", kBusybox, "sh", "-c",
                 "echo written > /etc/new-file && mkdir -p /usr/lib/new-dir && rm /etc/motd && cat /etc/new-file"});
  ASSERT_EQ(w.status, 0) << describe(w);
  EXPECT_EQ(w.out, "written\n");
  Result r = sm({"run", "--rm", kBusybox, "sh", "-c",
                 "ls /etc/new-file /usr/lib/new-dir 2>/dev/null; cat /etc/motd >/dev/null && echo motd-back"});
  EXPECT_EQ(r.out, "motd-back\n") << describe(r);
  // A bigger write lands on the scratch disk when --disk-size asks for one.
  Result disk = sm({"run", "--rm", "--disk-size", "256m", kBusybox, "sh", "-c",
                    "dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null && ls -l /big | awk '{print $5}'"});
  ASSERT_EQ(disk.status, 0) << describe(disk);
  EXPECT_EQ(disk.out, "67108864\n");
}

TEST_F(RunTest, DetachedVmTakesConcurrentExecsAndTheVmVerbs) {
  Result d = sm({"run", "-d", "--name", "bg", kBusybox, "sh", "-c", "echo main-started; exec sleep 1000"});
  ASSERT_EQ(d.status, 0) << describe(d);
  ASSERT_EQ(d.out.size(), 65u) << "run -d prints the full VM id: " << d.out;
  const std::string id = d.out.substr(0, 64);

  Result ps = sm({"ps"});
  ASSERT_EQ(ps.status, 0) << describe(ps);
  EXPECT_NE(ps.out.find(id.substr(0, 12)), std::string::npos) << ps.out;
  EXPECT_NE(ps.out.find("bg"), std::string::npos) << ps.out;

  // The main process keeps running while execs come and go, several at once.
  Result busy = sm({"exec", "bg", "sh", "-c", "pidof sleep >/dev/null && echo main-running; hostname"});
  ASSERT_EQ(busy.status, 0) << describe(busy);
  EXPECT_EQ(busy.out, "main-running\n" + id.substr(0, 12) + "\n");
  {
    sm::test::ChildProcess a({SM_BINARY, "exec", "bg", "sh", "-c", "sleep 2; echo a"});
    sm::test::ChildProcess b({SM_BINARY, "exec", id.substr(0, 8), "sh", "-c", "echo b; exit 3"});
    EXPECT_EQ(b.wait(kDeadline), 3);
    EXPECT_EQ(b.out(), "b\n");
    EXPECT_EQ(a.wait(kDeadline), 0);
    EXPECT_EQ(a.out(), "a\n");
  }
  Result env = sm({"exec", "-e", "X=1", "-w", "/etc", "-u", "1000", "bg", "sh", "-c", "echo $X $GREETING; pwd; id -u"});
  EXPECT_EQ(env.out, "1 hello\n/etc\n1000\n") << describe(env);

  auto t0 = std::chrono::steady_clock::now();
  Result timeout = sm({"exec", "--timeout", "2s", "bg", "sleep", "100"});
  EXPECT_EQ(timeout.status, 124) << describe(timeout);
  EXPECT_NE(timeout.err.find("timed out"), std::string::npos) << timeout.err;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 60s);
  Result still = sm({"exec", "bg", "pidof", "sleep"});
  EXPECT_EQ(still.status, 0) << "the timeout killed only the exec'd command: " << describe(still);

  Result logs = sm({"logs", "bg"});
  ASSERT_EQ(logs.status, 0) << describe(logs);
  EXPECT_EQ(logs.out, "main-started\n");

  Result rm_running = sm({"rm", "bg"});
  EXPECT_NE(rm_running.status, 0) << "rm of a running VM without -f must refuse";

  Result stop = sm({"stop", "-t", "5", "bg"});
  ASSERT_EQ(stop.status, 0) << describe(stop);
  Result ps_after = sm({"ps", "-q"});
  EXPECT_EQ(ps_after.out.find(id.substr(0, 12)), std::string::npos) << ps_after.out;
  Result ps_all = sm({"ps", "-a"});
  EXPECT_NE(ps_all.out.find(id.substr(0, 12)), std::string::npos) << ps_all.out;
  EXPECT_NE(ps_all.out.find("Exited"), std::string::npos) << ps_all.out;
  Result exec_stopped = sm({"exec", "bg", "true"});
  EXPECT_NE(exec_stopped.status, 0);
  EXPECT_NE(exec_stopped.err.find("not running"), std::string::npos) << exec_stopped.err;

  Result rm = sm({"rm", "bg"});
  ASSERT_EQ(rm.status, 0) << describe(rm);
  Result ps_gone = sm({"ps", "-a", "-q"});
  EXPECT_EQ(ps_gone.out.find(id.substr(0, 12)), std::string::npos) << ps_gone.out;

  // kill: the default signal is SIGKILL; the VM reports 137.
  Result k = sm({"run", "-d", "--name", "victim", kBusybox, "sleep", "1000"});
  ASSERT_EQ(k.status, 0) << describe(k);
  Result kill = sm({"kill", "victim"});
  ASSERT_EQ(kill.status, 0) << describe(kill);
  bool exited = false;
  for (int i = 0; i < 200 && !exited; ++i) {
    exited = sm({"ps", "-q"}).out.find(k.out.substr(0, 12)) == std::string::npos;
    if (!exited) std::this_thread::sleep_for(250ms);
  }
  EXPECT_TRUE(exited);
  Result ps_k = sm({"ps", "-a"});
  EXPECT_NE(ps_k.out.find("Exited (137)"), std::string::npos) << ps_k.out;
  EXPECT_EQ(sm({"rm", "-f", "victim"}).status, 0);
}

TEST_F(RunTest, CtrlCGoesToTheWorkload) {
  sm::test::ChildProcess p({SM_BINARY, "run", "--rm", kBusybox, "sh", "-c",
                            "trap 'echo got-INT; exit 3' INT; echo ready; while :; do sleep 0.1; done"});
  ASSERT_TRUE(p.wait_for_output("ready", kDeadline)) << p.err();
  ::kill(p.pid(), SIGINT);
  EXPECT_EQ(p.wait(60s), 3) << p.err();
  EXPECT_EQ(p.out(), "ready\ngot-INT\n");
}

// -i -t on a real terminal (a pty this test holds the master of): the main process runs on a
// guest pty of the terminal's size, follows a resize, reads typed input, and its status is ours.
TEST_F(RunTest, TtyFollowsTheTerminalsSizeAndInput) {
  int master = -1;
  winsize ws{};
  ws.ws_row = 30;
  ws.ws_col = 100;
  pid_t pid = ::forkpty(&master, nullptr, nullptr, &ws);
  ASSERT_GE(pid, 0) << std::strerror(errno);
  if (pid == 0) {
    ::execl(SM_BINARY, SM_BINARY, "run", "--rm", "-i", "-t", kBusybox.c_str(), "sh", "-c",
            "tty; stty size; while read l; do [ \"$l\" = q ] && exit 3; stty size; done", nullptr);
    ::_exit(127);
  }
  std::string out;
  // Reads what the terminal shows until `needle` appears; false at EOF (EIO once the child is
  // gone) or at the deadline.
  auto read_until = [&](const std::string& needle, std::chrono::seconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (out.find(needle) == std::string::npos) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{master, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000))) <= 0) continue;
      char buf[4096];
      ssize_t n = ::read(master, buf, sizeof buf);
      if (n <= 0) return false;
      out.append(buf, static_cast<size_t>(n));
    }
    return true;
  };
  EXPECT_TRUE(read_until("30 100", kDeadline)) << out;
  EXPECT_NE(out.find("/dev/pts/"), std::string::npos) << out;
  ws.ws_row = 40;
  ws.ws_col = 120;
  ASSERT_EQ(::ioctl(master, TIOCSWINSZ, &ws), 0);  // SIGWINCH to supermachine
  // The resize travels apart from the input; ask again until the guest has it.
  bool resized = false;
  for (int i = 0; i < 30 && !resized; ++i) {
    ASSERT_EQ(::write(master, "\r", 1), 1);
    resized = read_until("40 120", 1s);
  }
  EXPECT_TRUE(resized) << out;
  ASSERT_EQ(::write(master, "q\r", 2), 2);
  read_until("\x01never\x01", 60s);  // until EOF: the child has exited
  int status = 0;
  for (int i = 0; i < 600 && ::waitpid(pid, &status, WNOHANG) == 0; ++i) std::this_thread::sleep_for(100ms);
  if (::waitpid(pid, &status, WNOHANG) == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    ADD_FAILURE() << "run -t did not exit; the terminal showed:\n" << out;
  }
  ::close(master);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 3) << "status " << status << "\n" << out;
}

TEST_F(RunTest, TwentySequentialRunsLeaveNothingBehind) {
  auto fds_before = files_under("/proc/self/fd").size();
  // What earlier cases left (a failed one may leave its VM) is theirs to report, not this case's.
  auto listing = [](const fs::path& dir) {
    auto v = files_under(dir);
    return std::set<fs::path>(v.begin(), v.end());
  };
  auto run_before = listing(g_dirs.run);
  auto tmp_before = listing(g_dirs.tmp);
  auto new_since = [&](const std::set<fs::path>& before, const fs::path& dir) {
    std::vector<fs::path> added;
    for (auto& p : listing(dir))
      if (!before.count(p)) added.push_back(p);
    return added;
  };
  for (int i = 0; i < 20; ++i) {
    Result r = sm({"run", "--rm", kBusybox, "echo", "run " + std::to_string(i)});
    ASSERT_EQ(r.status, 0) << "run " << i << ": " << describe(r);
    ASSERT_EQ(r.out, "run " + std::to_string(i) + "\n");
  }
  EXPECT_EQ(files_under("/proc/self/fd").size(), fds_before);
  EXPECT_TRUE(supermachine_processes().empty()) << "a supermachine process outlived its run";
  // No VM state, sockets, console logs or scratch disks; nothing in TMPDIR.
  EXPECT_TRUE(new_since(tmp_before, g_dirs.tmp).empty());
  for (auto& p : new_since(run_before, g_dirs.run)) {
    EXPECT_TRUE(fs::is_directory(p) || p.filename() == "lock")
        << "left behind: " << p;
  }
}

TEST_F(RunTest, TheSecondRunRestoresTheBakeAndAChangedMemoryBakesAgain) {
  // -v makes run say how its VM started (debug lines; spdlog writes them to stdout); a memory
  // size no other case uses keeps the bake ours.
  Result first = sm({"-v", "run", "--rm", "-m", "288m", kBusybox, "echo", "hi"});
  ASSERT_EQ(first.status, 0) << describe(first);
  EXPECT_NE(first.out.find("hi\n"), std::string::npos) << first.out;
  EXPECT_NE((first.out + first.err).find("booted and made the bake"), std::string::npos) << first.err;
  Result second = sm({"-v", "run", "--rm", "-m", "288m", kBusybox, "echo", "hi"});
  ASSERT_EQ(second.status, 0) << describe(second);
  EXPECT_NE(second.out.find("hi\n"), std::string::npos) << second.out;
  EXPECT_NE((second.out + second.err).find("restored from the bake"), std::string::npos) << second.err;
  Result other = sm({"-v", "run", "--rm", "-m", "304m", kBusybox, "echo", "hi"});
  ASSERT_EQ(other.status, 0) << describe(other);
  EXPECT_NE((other.out + other.err).find("booted and made the bake"), std::string::npos) << other.err;
  Result cold = sm({"-v", "run", "--rm", "--no-snapshot", "-m", "288m", kBusybox, "echo", "hi"});
  ASSERT_EQ(cold.status, 0) << describe(cold);
  EXPECT_NE((cold.out + cold.err).find("booted (no bake"), std::string::npos) << cold.err;
  // Each run's per-run settings apply after the restore.
  Result env = sm({"run", "--rm", "-m", "288m", "-e", "X=42", "-w", "/tmp", "-h", "named", kBusybox, "sh", "-c",
                   "echo $X $(pwd) $(hostname)"});
  EXPECT_EQ(env.out, "42 /tmp named\n") << describe(env);
}

TEST_F(RunTest, SnapshotAndRestoreThroughTheCliKeepTheMainProcess) {
  const std::string dir = (g_dirs.root / "cli-snap").string();
  Result started = sm({"run", "-d", "--name", "snapsrc", kBusybox, "sh", "-c",
                       "echo kept > /tmp/marker; while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 5"});
  ASSERT_EQ(started.status, 0) << describe(started);
  for (int i = 0; i < 100 && sm({"exec", "snapsrc", "test", "-e", "/tmp/marker"}).status != 0; ++i)
    std::this_thread::sleep_for(100ms);
  Result snap = sm({"snapshot", "snapsrc", dir});
  ASSERT_EQ(snap.status, 0) << describe(snap);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "state"));
  EXPECT_EQ(sm({"exec", "snapsrc", "echo", "alive"}).out, "alive\n") << "the original runs on";

  // The clone holds the main process; its exit ends the clone with its status.
  sm::test::ChildProcess clone({SM_BINARY, "restore", "--name", "snapclone", dir});
  bool reached = false;
  for (int i = 0; i < 200 && !reached; ++i) {
    reached = sm({"exec", "snapclone", "cat", "/tmp/marker"}).out == "kept\n";
    if (!reached) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(reached) << "the clone never answered";
  EXPECT_EQ(sm({"exec", "snapclone", "touch", "/tmp/go"}).status, 0);
  EXPECT_EQ(clone.wait(kDeadline), 5) << clone.err();
  // The original's main process is still waiting for its own /tmp/go.
  EXPECT_EQ(sm({"exec", "snapsrc", "test", "-e", "/tmp/go"}).status, 1);
  EXPECT_EQ(sm({"rm", "-f", "snapsrc"}).status, 0);
  EXPECT_EQ(sm({"rm", "-f", "snapclone"}).status, 0);

  // A damaged snapshot is refused with an error that says so.
  const fs::path bad = g_dirs.root / "cli-snap-bad";
  fs::copy(dir, bad);
  fs::resize_file(bad / "state", 100);
  Result refused = sm({"restore", "--rm", bad.string()});
  EXPECT_EQ(refused.status, 125) << describe(refused);
  EXPECT_NE(refused.err.find("truncated"), std::string::npos) << refused.err;
}

TEST_F(RunTest, UncachedImageWithoutNetworkSaysSo) {
  // Nothing listens on 127.0.0.1:1: the registry is unreachable, as with no network at all.
  Result r = sm({"run", "--rm", "127.0.0.1:1/nothing/here:latest", "true"}, 120s);
  EXPECT_EQ(r.status, 125) << describe(r);
  EXPECT_NE(r.err.find("127.0.0.1:1/nothing/here:latest"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("not"), std::string::npos) << r.err;
  Result never = sm({"run", "--rm", "--pull", "never", "example.invalid/none:1", "true"}, 60s);
  EXPECT_EQ(never.status, 125) << describe(never);
  EXPECT_NE(never.err.find("example.invalid/none:1"), std::string::npos) << never.err;
}

}  // namespace
