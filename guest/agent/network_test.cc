// The NETWORK request's host-testable parts: the file contents, the atomic write (a symlink in
// the image is replaced, not followed), and apply_network without init (files only, into a
// root of the test's own; the host's interfaces are never touched).
#include "network.h"

#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace sm::agent {
namespace {

namespace fs = std::filesystem;

class TempRoot {
 public:
  TempRoot() {
    std::string tmpl = (fs::temp_directory_path() / "sm-net-test.XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempRoot() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

NetworkRequest plan() {
  NetworkRequest r;
  r.interface = NetworkRequest::Interface{"52:54:00:12:34:56", 65520, "10.0.2.15", 24, "10.0.2.2",
                                          "fec0::15", 64, "fec0::2"};
  r.nameservers = {"10.0.2.3", "fec0::3"};
  r.hostname = "web-1";
  return r;
}

TEST(AgentNetwork, ResolvConf) {
  NetworkRequest r = plan();
  EXPECT_EQ(resolv_conf_contents(r),
            "# Written by sm-agent from the host's network configuration.\n"
            "nameserver 10.0.2.3\n"
            "nameserver fec0::3\n");
  r.search = {"corp.example", "example"};
  r.options = {"ndots:1", "edns0"};
  EXPECT_EQ(resolv_conf_contents(r),
            "# Written by sm-agent from the host's network configuration.\n"
            "nameserver 10.0.2.3\n"
            "nameserver fec0::3\n"
            "search corp.example example\n"
            "options ndots:1 edns0\n");
  EXPECT_EQ(resolv_conf_contents(NetworkRequest{}), "# Written by sm-agent from the host's network configuration.\n");
}

TEST(AgentNetwork, Hosts) {
  NetworkRequest r = plan();
  r.hosts = {{"db", "10.0.2.100"}, {"cache.internal", "fec0::99"}};
  EXPECT_EQ(hosts_contents(r),
            "127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            "10.0.2.15\tweb-1\n"
            "fec0::15\tweb-1\n"
            "10.0.2.100\tdb\n"
            "fec0::99\tcache.internal\n");
  r.interface->ipv6.clear();
  r.hosts.clear();
  EXPECT_EQ(hosts_contents(r),
            "127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            "10.0.2.15\tweb-1\n");
  // No interface of ours: the hostname still resolves, to a loopback address.
  r.interface.reset();
  EXPECT_EQ(hosts_contents(r),
            "127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            "127.0.1.1\tweb-1\n");
  r.hostname.clear();
  EXPECT_EQ(hosts_contents(r), "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
}

TEST(AgentNetwork, AtomicWriteReplacesASymlinkInsteadOfFollowingIt) {
  TempRoot root;
  fs::create_directories(root.path() / "etc");
  fs::create_directories(root.path() / "run");
  std::ofstream(root.path() / "run" / "stub") << "keep me\n";
  // An image's /etc/resolv.conf -> ../run/stub (systemd-resolved's layout).
  fs::create_symlink("../run/stub", root.path() / "etc" / "resolv.conf");
  write_file_atomically(root.path() / "etc" / "resolv.conf", "nameserver 10.0.2.3\n");
  EXPECT_FALSE(fs::is_symlink(root.path() / "etc" / "resolv.conf"));
  EXPECT_EQ(slurp(root.path() / "etc" / "resolv.conf"), "nameserver 10.0.2.3\n");
  EXPECT_EQ(slurp(root.path() / "run" / "stub"), "keep me\n") << "the link's target must not be written";
  struct stat st{};
  ASSERT_EQ(::stat((root.path() / "etc" / "resolv.conf").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  // Again, over the regular file; no temporary file is left behind.
  write_file_atomically(root.path() / "etc" / "resolv.conf", "nameserver 1.1.1.1\n");
  EXPECT_EQ(slurp(root.path() / "etc" / "resolv.conf"), "nameserver 1.1.1.1\n");
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(root.path() / "etc")) ++entries;
  EXPECT_EQ(entries, 1u);
  // A missing /etc is created.
  write_file_atomically(root.path() / "new" / "hosts", "x\n");
  EXPECT_EQ(slurp(root.path() / "new" / "hosts"), "x\n");
}

TEST(AgentNetwork, AtomicWriteFailureNamesTheStep) {
  TempRoot root;
  std::ofstream(root.path() / "file") << "";
  try {
    write_file_atomically(root.path() / "file" / "etc" / "hosts", "x");  // parent is not a directory
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mkdir"), std::string::npos) << e.what();
  }
}

TEST(AgentNetwork, WithoutInitOnlyTheFilesAreWritten) {
  TempRoot root;
  NetworkRequest r = plan();
  // A MAC no host interface has: with init false the interface steps must not even be tried.
  r.interface->mac = "02:00:00:00:00:01";
  EXPECT_EQ(apply_network(r, NetworkOptions{false, root.path()}), std::nullopt);
  EXPECT_EQ(slurp(root.path() / "etc" / "resolv.conf"), resolv_conf_contents(r));
  EXPECT_EQ(slurp(root.path() / "etc" / "hosts"), hosts_contents(r));
  // Idempotent: a second NETWORK (after a restore) succeeds and rewrites.
  r.nameservers = {"1.1.1.1"};
  EXPECT_EQ(apply_network(r, NetworkOptions{false, root.path()}), std::nullopt);
  EXPECT_EQ(slurp(root.path() / "etc" / "resolv.conf"), resolv_conf_contents(r));
  // No root: nothing is written anywhere.
  EXPECT_EQ(apply_network(r, NetworkOptions{false, {}}), std::nullopt);
}

TEST(AgentNetwork, AFileStepFailureIsANetworkError) {
  TempRoot root;
  std::ofstream(root.path() / "etc") << "not a directory";
  auto err = apply_network(plan(), NetworkOptions{false, root.path()});
  ASSERT_TRUE(err.has_value());
  EXPECT_EQ(err->code, ErrorCode::kNetworkFailed);
  EXPECT_EQ(err->message.rfind("NETWORK: write /etc/resolv.conf: ", 0), 0u) << err->message;
}

// The kernel steps for real, in a network namespace of their own (root and iproute2 needed; the
// host's interfaces are never touched): a veth pair stands in for virtio-net.
TEST(AgentNetwork, ConfiguresAnInterfaceInAPrivateNetworkNamespace) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces)";
  if (std::system("command -v ip >/dev/null 2>&1") != 0) GTEST_SKIP() << "needs iproute2's ip";
  TempRoot root;
  const fs::path out = root.path() / "out", err_file = root.path() / "error";
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // A fresh sysfs in a private mount namespace shows this namespace's interfaces only.
    if (::unshare(CLONE_NEWNET | CLONE_NEWNS) != 0) ::_exit(77);
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount("sysfs", "/sys", "sysfs", 0, nullptr) != 0)
      ::_exit(77);
    if (std::system("ip link add v0 type veth peer name v1 && ip link set v1 up") != 0) ::_exit(77);
    std::string mac;
    std::getline(std::ifstream("/sys/class/net/v0/address"), mac);
    NetworkRequest r = plan();
    r.interface->mac = mac;
    for (int round = 0; round < 2; ++round) {  // the second is a NETWORK after a restore
      if (auto e = apply_network(r, NetworkOptions{true, root.path()})) {
        std::ofstream(err_file) << "round " << round << ": " << e->message;
        ::_exit(1);
      }
    }
    // An interface nobody has: a clear error, naming the MAC.
    NetworkRequest missing = r;
    missing.interface->mac = "02:5e:00:00:00:99";
    if (auto e = apply_network(missing, NetworkOptions{true, {}})) std::ofstream(err_file) << e->message;
    std::string cmd = "(ip -o addr show dev v0; ip -o link show v0; ip -o link show lo; ip route; ip -6 route; "
                      "cat /proc/sys/net/ipv6/conf/v0/accept_dad /proc/sys/net/ipv6/conf/v0/accept_ra) > " +
                      out.string() + " 2>&1";
    ::_exit(std::system(cmd.c_str()) == 0 ? 0 : 2);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(pid, &st, 0), pid);
  ASSERT_TRUE(WIFEXITED(st));
  if (WEXITSTATUS(st) == 77) GTEST_SKIP() << "network namespaces or veth are unavailable here";
  ASSERT_EQ(WEXITSTATUS(st), 0) << slurp(err_file);
  std::string o = slurp(out);
  for (const char* want : {"inet 10.0.2.15/24", "inet6 fec0::15/64", "mtu 65520", "default via 10.0.2.2 dev v0",
                           "default via fec0::2 dev v0", "lo: <LOOPBACK,UP"})
    EXPECT_NE(o.find(want), std::string::npos) << want << " in:\n" << o;
  EXPECT_EQ(o.find("tentative"), std::string::npos) << "IFA_F_NODAD: usable at once\n" << o;
  EXPECT_NE(o.find("0\n0\n"), std::string::npos) << "accept_dad and accept_ra are 0\n" << o;
  EXPECT_NE(slurp(root.path() / "etc" / "hosts").find("10.0.2.15\tweb-1"), std::string::npos);
  EXPECT_EQ(slurp(err_file).rfind("NETWORK: no network interface has MAC address 02:5e:00:00:00:99", 0), 0u)
      << slurp(err_file);
}

}  // namespace
}  // namespace sm::agent
