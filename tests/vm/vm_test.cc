// VM tests: each boots the project's guest kernel with the VM-test initramfs under
// `supermachine boot` on a real KVM (the host's, or the nested harness's) and checks what the
// guest printed, the VMM's exit status and what the guest left on host files and sockets.
// The guest side of each case is tests/vm/guest/init, chosen with sm.test=NAME.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "child_process.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// Nested KVM under TCG is slow; a boot takes seconds, so deadlines are generous.
constexpr auto kBootDeadline = 180s;

fs::path cache_dir() {
  if (const char* c = std::getenv("SM_CACHE")) return c;
  if (const char* x = std::getenv("XDG_CACHE_HOME")) return fs::path(x) / "supermachine";
  return fs::path(std::getenv("HOME") ? std::getenv("HOME") : "/root") / ".cache/supermachine";
}
fs::path kernel(const char* name) { return cache_dir() / "kernel/current" / name; }
fs::path initramfs() { return cache_dir() / "initramfs/current/initramfs.cpio.gz"; }

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "sm-vmtest.XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

struct Boot {
  std::string kernel_name = "bzImage";
  std::string cmdline;
  std::vector<std::string> extra_args;
  std::vector<std::string> env;
};

std::vector<std::string> boot_argv(const Boot& b) {
  std::vector<std::string> argv = {SM_BINARY, "boot", "--kernel", kernel(b.kernel_name.c_str()).string(),
                                   "--initrd", initramfs().string(), "--cmdline", b.cmdline};
  argv.insert(argv.end(), b.extra_args.begin(), b.extra_args.end());
  return argv;
}

struct Result {
  std::optional<int> status;
  std::string out, err;
};

Result run_vm(const Boot& b) {
  sm::test::ChildProcess vm(boot_argv(b), b.env);
  Result r;
  r.status = vm.wait(kBootDeadline);
  r.out = vm.out();
  r.err = vm.err();
  return r;
}

// The value after "KEY " on the guest's line "KEY value", or "" when absent.
std::string guest_value(const std::string& out, const std::string& key) {
  std::smatch m;
  std::regex re(key + " ([^\r\n]*)");
  return std::regex_search(out, m, re) ? m[1].str() : "";
}

std::string describe(const Result& r) {
  return "stdout:\n" + r.out + "\nstderr:\n" + r.err;
}

class VmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (auto p : {kernel("bzImage"), kernel("vmlinux"), initramfs()})
      ASSERT_TRUE(fs::exists(p)) << p << " is missing: run scripts/setup first";
  }
};

TEST_F(VmTest, BzImageBootsAndInitPrints) {
  auto r = run_vm({.cmdline = "sm.test=hello"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_NE(r.out.find("SM_INIT_READY"), std::string::npos) << describe(r);
  EXPECT_NE(guest_value(r.out, "SM_HELLO").find("from Linux 6.1"), std::string::npos) << describe(r);
}

TEST_F(VmTest, VmlinuxBootsAndInitPrints) {
  auto r = run_vm({.kernel_name = "vmlinux", .cmdline = "sm.test=hello"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_NE(guest_value(r.out, "SM_HELLO").find("from Linux 6.1"), std::string::npos) << describe(r);
}

TEST_F(VmTest, GuestExitStatusBecomesVmmStatus) {
  auto r = run_vm({.cmdline = "sm.test=status sm.status=7"});
  EXPECT_EQ(r.status, 7) << describe(r);
}

TEST_F(VmTest, GuestRebootEndsTheVmCleanly) {
  auto r = run_vm({.cmdline = "sm.test=reboot"});
  EXPECT_EQ(r.status, 0) << describe(r);
}

TEST_F(VmTest, TwoCpusComeUp) {
  auto r = run_vm({.cmdline = "sm.test=cpus", .extra_args = {"--cpus", "2"}});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_EQ(guest_value(r.out, "SM_CPUS"), "2") << describe(r);
}

TEST_F(VmTest, BlockDevicesReadOnlyAndReadWrite) {
  TempDir dir;
  auto ro = dir.path() / "ro.img";
  auto rw = dir.path() / "rw.img";
  {
    std::ofstream f(ro, std::ios::binary);
    std::string pattern = "supermachine-ro-0123456789abcdef";  // 32 bytes the guest echoes back
    for (int i = 0; i < 1024 * 1024 / 32; ++i) f << pattern;
  }
  {
    std::ofstream f(rw, std::ios::binary);
    f << std::string(1024 * 1024, '\0');
  }
  std::string token = std::to_string(std::random_device{}());
  auto r = run_vm({.cmdline = "sm.test=blk sm.token=" + token,
                   .extra_args = {"--disk", ro.string() + ":ro", "--disk", rw.string()}});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_EQ(guest_value(r.out, "SM_RO_DATA"), "supermachine-ro-0123456789abcdef") << describe(r);
  // 1 MiB = 2048 sectors, and the guest sees the disk as read-only.
  EXPECT_EQ(guest_value(r.out, "SM_RO_SIZE"), "2048 1") << describe(r);
  EXPECT_EQ(r.out.find("SM_FAIL"), std::string::npos) << describe(r);

  std::ifstream f(rw, std::ios::binary);
  std::string want = "supermachine-rw-pattern-" + token;
  std::string got(want.size(), '\0');
  f.read(got.data(), static_cast<std::streamsize>(got.size()));
  EXPECT_EQ(got, want);
  // The read-only image is untouched.
  std::ifstream g(ro, std::ios::binary);
  std::string head(32, '\0');
  g.read(head.data(), 32);
  EXPECT_EQ(head, "supermachine-ro-0123456789abcdef");
}

TEST_F(VmTest, GuestReadsEntropyFromVirtioRng) {
  auto r = run_vm({.cmdline = "sm.test=rng"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_NE(guest_value(r.out, "SM_RNG_CURRENT").find("virtio_rng"), std::string::npos) << describe(r);
  auto a = guest_value(r.out, "SM_RNG_A");
  auto b = guest_value(r.out, "SM_RNG_B");
  EXPECT_EQ(a.size(), 128u) << describe(r);
  EXPECT_EQ(b.size(), 128u) << describe(r);
  EXPECT_NE(a, b);
  EXPECT_NE(a, std::string(128, '0'));
}

// Deterministic payload both sides can check.
std::string payload(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131u + (i >> 12)) & 0xff);
  return s;
}

int unix_connect(const fs::path& p) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", p.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

int unix_listen(const fs::path& p) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", p.c_str());
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 4) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::string read_line(int fd) {
  std::string line;
  char c;
  while (::read(fd, &c, 1) == 1 && c != '\n') line += c;
  return line;
}

bool write_all(int fd, const char* p, size_t n) {
  while (n) {
    ssize_t w = ::write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

TEST_F(VmTest, VsockHostToGuestEchoesOneMiB) {
  TempDir dir;
  auto sock = dir.path() / "vm.vsock";
  auto argv = boot_argv({.cmdline = "sm.test=vsock-server sm.port=1234", .extra_args = {"--vsock", sock.string()}});
  sm::test::ChildProcess vm(argv);
  ASSERT_TRUE(vm.wait_for_output("vsock-listening 1234", kBootDeadline)) << vm.out() << vm.err();

  int fd = unix_connect(sock);
  ASSERT_GE(fd, 0) << "cannot connect to " << sock;
  ASSERT_TRUE(write_all(fd, "CONNECT 1234\n", 13));
  EXPECT_EQ(read_line(fd).rfind("OK ", 0), 0u);
  const std::string data = payload(1 << 20);
  std::string back;
  std::thread writer([&] {
    write_all(fd, data.data(), data.size());
    ::shutdown(fd, SHUT_WR);
  });
  char buf[65536];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) back.append(buf, static_cast<size_t>(n));
  writer.join();
  ::close(fd);
  EXPECT_EQ(back.size(), data.size());
  EXPECT_TRUE(back == data) << "echoed bytes differ";
  EXPECT_EQ(vm.wait(kBootDeadline), 0) << vm.out() << vm.err();
  EXPECT_NE(vm.out().find("vsock-echoed 1048576"), std::string::npos) << vm.out();
}

TEST_F(VmTest, VsockGuestToHostEchoesOneMiB) {
  TempDir dir;
  auto sock = dir.path() / "vm.vsock";
  int lfd = unix_listen(sock.string() + "_5678");
  ASSERT_GE(lfd, 0);
  auto argv = boot_argv({.cmdline = "sm.test=vsock-client sm.port=5678 sm.bytes=1048576",
                         .extra_args = {"--vsock", sock.string()}});
  sm::test::ChildProcess vm(argv);
  // Echo whatever the guest sends until it half-closes, while the VM runs.
  size_t echoed = 0;
  std::thread host([&] {
    int c = ::accept(lfd, nullptr, nullptr);
    if (c < 0) return;
    char buf[65536];
    for (ssize_t n; (n = ::read(c, buf, sizeof buf)) > 0;) {
      if (!write_all(c, buf, static_cast<size_t>(n))) break;
      echoed += static_cast<size_t>(n);
    }
    ::close(c);
  });
  auto status = vm.wait(kBootDeadline);
  ::shutdown(lfd, SHUT_RDWR);  // unblocks accept() if the guest never connected
  host.join();
  ::close(lfd);
  EXPECT_EQ(status, 0) << vm.out() << vm.err();
  EXPECT_NE(vm.out().find("vsock-echo-ok 1048576"), std::string::npos) << vm.out() << vm.err();
  EXPECT_EQ(echoed, 1u << 20);
}

TEST_F(VmTest, PoweroffLeavesNoTempFilesOrSockets) {
  TempDir dir;
  auto tmp = dir.path() / "tmp";
  fs::create_directory(tmp);
  auto sock = dir.path() / "vm.vsock";
  auto r = run_vm({.cmdline = "sm.test=hello",
                   .extra_args = {"--vsock", sock.string()},
                   .env = {"TMPDIR=" + tmp.string()}});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_TRUE(fs::is_empty(tmp)) << "the VMM left files in TMPDIR";
  EXPECT_FALSE(fs::exists(sock)) << "the VMM left its vsock socket behind";
}

}  // namespace
