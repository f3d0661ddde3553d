// VM tests of the guest agent as PID 1: `supermachine boot` with the project kernel, the agent
// initramfs, a busybox image as the read-only root (ext4 or EROFS, built here with mke2fs -d /
// mkfs.erofs) and a vsock socket; the host side is sm::agent::Client through the VMM's vsock
// socket. They need a KVM that runs a standard guest (scripts/test routes label `vm` through the
// nested harness here), the guest kernel (scripts/setup) and busybox-static.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "../../../tests/vm/child_process.h"
#include "agent/client.h"

namespace sm::agent {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Nested KVM under TCG is slow: a boot takes seconds.
constexpr auto kBootDeadline = 180s;

fs::path cache_dir() {
  if (const char* c = std::getenv("SM_CACHE")) return c;
  if (const char* x = std::getenv("XDG_CACHE_HOME")) return fs::path(x) / "supermachine";
  return fs::path(std::getenv("HOME") ? std::getenv("HOME") : "/root") / ".cache/supermachine";
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "sm-agent-vmtest.XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void run(const std::string& cmd) {
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("failed: " + cmd);
}

// A minimal image: static busybox with every applet linked, a passwd/group with a non-root user.
void make_busybox_tree(const fs::path& root) {
  fs::create_directories(root / "bin");
  fs::create_directories(root / "etc");
  fs::create_directories(root / "home/app");
  fs::create_directories(root / "root");
  fs::copy_file("/bin/busybox", root / "bin/busybox");
  run("for a in $(/bin/busybox --list); do [ \"$a\" = busybox ] || ln -s busybox " + (root / "bin").string() + "/$a; done");
  std::ofstream(root / "etc/passwd") << "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n";
  std::ofstream(root / "etc/group") << "root:x:0:\nwheel:x:10:app\napp:x:1000:\n";
  std::ofstream(root / "etc/image-marker") << "from-the-image\n";
}

fs::path make_image(const fs::path& dir, const std::string& type) {
  fs::path tree = dir / "tree", img = dir / ("root." + type);
  make_busybox_tree(tree);
  if (type == "ext4") run("mke2fs -q -t ext4 -d " + tree.string() + " " + img.string() + " 32M");
  else run("mkfs.erofs --quiet " + img.string() + " " + tree.string());
  return img;
}

struct Vm {
  TempDir dir;
  fs::path vsock;
  std::unique_ptr<ReadyListener> ready;
  std::unique_ptr<sm::test::ChildProcess> proc;
  HelloReply hello;

  Vm(const std::vector<std::string>& disks, const std::string& cmdline) {
    vsock = dir.path() / "vm.vsock";
    // The agent reports ready by connecting to host port 1025: the VMM bridges that to
    // "<vsock>_1025", listened on before the VM starts.
    ready = std::make_unique<ReadyListener>(vsock.string() + "_1025");
    std::vector<std::string> argv = {SM_BINARY, "boot", "--kernel", (cache_dir() / "kernel/current/bzImage").string(),
                                     "--initrd", SM_AGENT_INITRAMFS, "--vsock", vsock.string(),
                                     "--cmdline", "sm.notify=1025 sm.hostname=agent-vm " + cmdline};
    for (const auto& d : disks) {
      argv.push_back("--disk");
      argv.push_back(d);
    }
    proc = std::make_unique<sm::test::ChildProcess>(argv);
    hello = ready->wait(Clock::now() + kBootDeadline);
  }
  [[nodiscard]] Client client() const { return Client(Endpoint::vsock(vsock), ClientOptions{60s, 256u << 20}); }
  std::string describe() {
    return "\nconsole:\n" + proc->out() + "\nstderr:\n" + proc->err();
  }
};

class AgentVmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(cache_dir() / "kernel/current/bzImage")) GTEST_SKIP() << "no guest kernel: run scripts/setup";
    if (!fs::exists("/bin/busybox")) GTEST_SKIP() << "busybox-static is not installed";
  }
};

ExecRequest cmd(std::vector<std::string> argv) {
  ExecRequest r;
  r.argv = std::move(argv);
  r.env = {"PATH=/bin"};
  return r;
}

TEST_F(AgentVmTest, ContainerOnAnExt4ImageWithTmpfsUpper) {
  TempDir work;
  fs::path img = make_image(work.path(), "ext4");
  Vm vm({img.string() + ":ro"}, "sm.debug=1");
  EXPECT_TRUE(vm.hello.init) << vm.describe();
  EXPECT_EQ(vm.hello.hostname, "agent-vm");
  Client c = vm.client();

  auto hello = c.exec(cmd({"echo", "hello"}));
  EXPECT_EQ(hello.out, "hello\n") << vm.describe();
  EXPECT_EQ(hello.exit_code(), 0);
  EXPECT_EQ(c.exec(cmd({"sh", "-c", "exit 7"})).exit_code(), 7);
  EXPECT_EQ(c.exec(cmd({"sh", "-c", "kill -9 $$"})).exit_code(), 137);
  auto sep = c.exec(cmd({"sh", "-c", "echo out; echo err >&2"}));
  EXPECT_EQ(sep.out, "out\n");
  EXPECT_EQ(sep.err, "err\n");

  std::string data(10u << 20, '\0');
  std::mt19937 rng(5);
  for (auto& ch : data) ch = static_cast<char>(rng());
  auto cat = c.exec(cmd({"cat"}), data);
  EXPECT_EQ(cat.out.size(), data.size());
  EXPECT_TRUE(cat.out == data) << "10 MiB through cat came back altered";

  auto env = cmd({"sh", "-c", "echo \"$FOO $HOSTNAME $HOME\"; pwd; hostname"});
  env.env.push_back("FOO=bar");
  env.cwd = "/etc";
  EXPECT_EQ(c.exec(env).out, "bar agent-vm /root\n/etc\nagent-vm\n");

  auto user = cmd({"sh", "-c", "id -u; id -g; id -G; echo $HOME"});
  user.user = "1000:1000";
  EXPECT_EQ(c.exec(user).out, "1000\n1000\n1000\n/home/app\n");
  user.user = "app";
  EXPECT_EQ(c.exec(user).out, "1000\n1000\n1000 10\n/home/app\n") << "supplementary groups from /etc/group";

  // The image is the read-only lower layer; writes land in the tmpfs upper.
  auto mounts = c.exec(cmd({"cat", "/proc/mounts"})).out;
  EXPECT_NE(mounts.find("overlay / overlay"), std::string::npos) << mounts;
  for (const char* m : {" /proc proc", " /sys sysfs", " /dev devtmpfs", " /dev/pts devpts", " /dev/shm tmpfs",
                        " /run tmpfs", " /tmp tmpfs"})
    EXPECT_NE(mounts.find(m), std::string::npos) << m << "\n" << mounts;
  EXPECT_EQ(c.exec(cmd({"cat", "/etc/image-marker"})).out, "from-the-image\n");
  EXPECT_EQ(c.exec(cmd({"sh", "-c", "echo new > /written && cat /written"})).out, "new\n");

  auto timeout = cmd({"sleep", "30"});
  timeout.timeout = 500ms;
  auto t = c.exec(timeout);
  EXPECT_TRUE(t.status.timed_out);
  EXPECT_EQ(t.exit_code(), 137);
  try {
    (void)c.exec(cmd({"no-such-command"}));
    ADD_FAILURE() << "a missing command ran";
  } catch (const ExecError& e) {
    EXPECT_EQ(e.exit_code(), 127);
  }

  c.write_file("/tmp/sub/f.bin", data.substr(0, 3u << 20), 0600, true);
  EXPECT_TRUE(c.read_file("/tmp/sub/f.bin") == data.substr(0, 3u << 20));
  EXPECT_EQ(c.exec(cmd({"stat", "-c", "%a", "/tmp/sub/f.bin"})).out, "600\n");

  auto tty = cmd({"sh", "-c", "stty size; tty"});
  tty.tty = TtySize{30, 100};
  auto tr = c.exec(tty);
  EXPECT_EQ(tr.out.substr(0, 8), "30 100\r\n") << tr.out;
  EXPECT_NE(tr.out.find("/dev/pts/"), std::string::npos) << tr.out;

  // The main process: its end powers the VM off with its status.
  auto main = cmd({"sh", "-c", "echo last words; exit 3"});
  main.main = true;
  auto m = c.exec(main);
  EXPECT_EQ(m.out, "last words\n");
  EXPECT_EQ(m.exit_code(), 3);
  EXPECT_EQ(vm.proc->wait(60s), 3) << "the VMM exits with the main process's status" << vm.describe();
}

TEST_F(AgentVmTest, ErofsImageScratchDiskAndDetachedMain) {
  TempDir work;
  fs::path img = make_image(work.path(), "erofs");
  fs::path scratch = work.path() / "scratch.ext4";
  run("mke2fs -q -t ext4 " + scratch.string() + " 64M");
  Vm vm({img.string() + ":ro", scratch.string()}, "sm.scratch=/dev/vdb");
  Client c = vm.client();
  // Mounts outside the new root are invisible in /proc/mounts; the overlay's own options and
  // the size of / (statfs of the upper layer) show which disk holds what.
  auto mounts = c.exec(cmd({"cat", "/proc/mounts"})).out;
  EXPECT_NE(mounts.find("overlay / overlay"), std::string::npos) << mounts << vm.describe();
  EXPECT_NE(mounts.find("lowerdir=/sm/lower,upperdir=/sm/rw/upper"), std::string::npos) << mounts;
  auto size_kib = std::stoul(c.exec(cmd({"sh", "-c", "df -k / | tail -n 1 | awk '{print $2}'"})).out);
  EXPECT_GT(size_kib, 40000u) << "the writable layer is the 64 MiB scratch disk";
  EXPECT_LT(size_kib, 70000u) << "the writable layer is the 64 MiB scratch disk";
  EXPECT_EQ(c.exec(cmd({"sh", "-c", "echo kept > /on-scratch && cat /on-scratch"})).out, "kept\n");
  EXPECT_EQ(c.exec(cmd({"cat", "/etc/image-marker"})).out, "from-the-image\n");

  auto main = cmd({"sh", "-c", "trap 'echo stopping; exit 9' TERM; echo main-started; while :; do sleep 0.1; done"});
  int64_t pid = c.start_detached_main(main);
  EXPECT_GT(pid, 1);
  EXPECT_TRUE(vm.proc->wait_for_output("main-started", 60s)) << "a detached main process writes to the console";
  EXPECT_EQ(c.exec(cmd({"echo", "beside"})).out, "beside\n");
  c.signal_main(SIGTERM);
  EXPECT_EQ(vm.proc->wait(60s), 9) << vm.describe();
}

// RESTORE as PID 1: what a clone of a snapshot is sent right after the restore (here on a
// freshly booted VM: the agent cannot tell the difference).
TEST_F(AgentVmTest, RestoreSetsClockEntropyAndHostname) {
  TempDir work;
  fs::path img = make_image(work.path(), "ext4");
  Vm vm({img.string() + ":ro"}, "");
  Client c = vm.client();
  EXPECT_EQ(c.hello().version, sm::agent::kProtocolVersion) << vm.describe();
  RestoreRequest req;
  req.realtime_ns = 2208988800LL * 1000000000LL + 123;  // 2040-01-01T00:00:00Z: unmistakable
  std::mt19937 rng(11);
  req.entropy.resize(64);
  for (auto& ch : req.entropy) ch = static_cast<char>(rng());
  req.hostname = "clone_1.pool";
  EXPECT_EQ(c.restore(req), (RestoreReply{true, true, true})) << vm.describe();
  EXPECT_EQ(c.exec(cmd({"date", "-u", "+%Y"})).out, "2040\n");
  EXPECT_EQ(c.exec(cmd({"sh", "-c", "hostname; echo $HOSTNAME; cat /proc/sys/kernel/hostname"})).out,
            "clone_1.pool\nclone_1.pool\nclone_1.pool\n");
  EXPECT_EQ(c.hello().hostname, "clone_1.pool");
  EXPECT_EQ(c.exec(cmd({"head", "-c", "16", "/dev/urandom"})).out.size(), 16u);
  c.power_off(0);
  EXPECT_EQ(vm.proc->wait(60s), 0) << vm.describe();
}

TEST_F(AgentVmTest, MissingImageDiskPowersOffWith125) {
  TempDir dir;
  std::vector<std::string> argv = {SM_BINARY, "boot", "--kernel", (cache_dir() / "kernel/current/bzImage").string(),
                                   "--initrd", SM_AGENT_INITRAMFS, "--cmdline", "sm.root=/dev/vda"};
  sm::test::ChildProcess vm(argv);
  EXPECT_EQ(vm.wait(kBootDeadline), 125) << vm.out() << vm.err();
  EXPECT_NE(vm.out().find("sm-agent: error: mount the image /dev/vda"), std::string::npos) << vm.out();
}

}  // namespace
}  // namespace sm::agent
