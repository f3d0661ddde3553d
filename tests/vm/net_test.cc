// Networking against real microVMs (issue "what must show"): downloads by name through DNS from
// a test host, published TCP and UDP ports, Vm::connect, the host-loopback guard, the egress
// policy (domains, raw IPs, refused at once), --network none, hostile frames, and the CLI's -p
// and `port`. All traffic stays on this machine: loopback, or a test host in a network namespace
// this test creates (a veth pair, 10.77.0.1 here and 10.77.0.2/.3 there) running busybox httpd
// and dnsmasq. Needs root (namespaces, veth); skipped otherwise.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <supermachine/supermachine.h>

#include "child_process.h"
#include "oci/digest.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

sm::test::PrivateDirs g_dirs;
fs::path g_layout;

int sh(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The test host: a network namespace held by a `sleep` child, joined to ours by a veth pair,
// serving HTTP on :80 of both its addresses and DNS on 10.77.0.2:53.
class TestHost {
 public:
  explicit TestHost(const fs::path& www) {
    holder_ = std::make_unique<sm::test::ChildProcess>(std::vector<std::string>{"/usr/bin/unshare", "-n", "/bin/sleep", "100000"});
    std::this_thread::sleep_for(200ms);
    const int pid = holder_->pid();
    ns_ = fmt::format("nsenter -t {} -n", pid);
    sh("ip link del sm-nt0 2>/dev/null");
    ok_ = sh("ip link add sm-nt0 type veth peer name sm-nt1") == 0 &&
          sh(fmt::format("ip link set sm-nt1 netns {}", pid)) == 0 &&
          sh("ip addr add 10.77.0.1/24 dev sm-nt0 && ip link set sm-nt0 up") == 0 &&
          sh(ns_ + " sh -c 'ip addr add 10.77.0.2/24 dev sm-nt1 && ip addr add 10.77.0.3/24 dev sm-nt1 && "
                   "ip link set sm-nt1 up && ip link set lo up'") == 0;
    if (!ok_) return;
    httpd_ = std::make_unique<sm::test::ChildProcess>(std::vector<std::string>{
        "/usr/bin/nsenter", "-t", std::to_string(pid), "-n", "/bin/busybox", "httpd", "-f", "-p", "80", "-h", www.string()});
    dns_ = std::make_unique<sm::test::ChildProcess>(std::vector<std::string>{
        "/usr/bin/nsenter", "-t", std::to_string(pid), "-n", "/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
        "--no-resolv", "--no-hosts", "--pid-file=", "--user=root", "--group=root", "--bind-interfaces",
        "--listen-address=10.77.0.2", "--local-ttl=30", "--local=/test/", "--address=/files.test/10.77.0.2",
        "--address=/other.test/10.77.0.3", "--log-facility=-"});
    // Both answer once they listen.
    for (auto deadline = Clock::now() + 10s; Clock::now() < deadline; std::this_thread::sleep_for(100ms)) {
      if (sh(ns_ + " sh -c 'busybox wget -q -O /dev/null http://10.77.0.2/small && busybox nslookup -type=a files.test "
                   "10.77.0.2' >/dev/null 2>&1") == 0) {
        ready_ = true;
        break;
      }
    }
  }
  ~TestHost() {
    httpd_.reset();
    dns_.reset();
    holder_.reset();  // the namespace goes with its last process, and the veth pair with it
    sh("ip link del sm-nt0 2>/dev/null");
  }
  [[nodiscard]] bool ok() const { return ok_; }
  [[nodiscard]] bool ready() const { return ready_; }

 private:
  std::string ns_;
  bool ok_ = false;
  bool ready_ = false;
  std::unique_ptr<sm::test::ChildProcess> holder_, httpd_, dns_;
};

std::unique_ptr<TestHost> g_host;
std::string g_big_sha;

class NetEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    g_dirs = sm::test::use_private_dirs("sm-nettest");
    g_layout = sm::test::test_images_dir(SM_SOURCE_DIR) / "oci";
    ASSERT_TRUE(fs::exists(g_layout / "index.json")) << g_layout;
    if (::geteuid() != 0) return;
    fs::path www = g_dirs.root / "www";
    fs::create_directories(www);
    std::ofstream(www / "small") << "small file from the test host\n";
    ASSERT_EQ(sh(fmt::format("head -c 52428800 /dev/urandom > {}", (www / "big").string())), 0);
    g_big_sha = sm::oci::Digest::of(std::string_view(slurp(www / "big"))).hex();
    g_host = std::make_unique<TestHost>(www);
  }
  void TearDown() override {
    g_host.reset();
    fs::remove_all(g_dirs.root);
  }
};
[[maybe_unused]] const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new NetEnvironment);

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// A TCP listener on the host's loopback that greets each connection; port() tells where.
class LoopbackGreeter {
 public:
  LoopbackGreeter() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 16), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      while (!stop_) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) continue;
        int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        const char msg[] = "hello from the host loopback\n";
        [[maybe_unused]] ssize_t n = ::write(c, msg, sizeof msg - 1);
        ::close(c);
      }
    });
  }
  ~LoopbackGreeter() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  [[nodiscard]] uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// An HTTP GET of / on 127.0.0.1:port; the whole response, or "" when the connection fails.
std::string http_get(uint16_t port, const std::string& path = "/") {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string req = fmt::format("GET {} HTTP/1.0\r\nHost: x\r\n\r\n", path);
    [[maybe_unused]] ssize_t w = ::write(fd, req.data(), req.size());
    char buf[4096];
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

// True when a TCP connection to 127.0.0.1:port is refused (nothing listens there).
bool connection_refused(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool refused = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno == ECONNREFUSED;
  ::close(fd);
  return refused;
}

class NetTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { image_ = std::make_unique<sm::Image>(sm::Image::load(g_layout, "busybox")); }
  static void TearDownTestSuite() { image_.reset(); }
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "network namespaces and veth pairs need root";
    ASSERT_TRUE(g_host && g_host->ok()) << "could not set up the test host's namespace and veth pair";
    ASSERT_TRUE(g_host->ready()) << "the test host's httpd and dnsmasq did not answer";
  }

  static sm::VmConfig config() {
    sm::VmConfig c;
    c.memory_mib = 256;
    c.network.dns = {"10.77.0.2"};
    return c;
  }
  // A guest httpd on `port` serving /www with index.html = `body`.
  static void serve(sm::Vm& vm, uint16_t port, const std::string& body, const std::string& bind = "") {
    vm.write_file("/www/index.html", body);
    auto r = vm.exec({"sh", "-c", fmt::format("httpd -p {}{} -h /www", bind, port)});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }

  static std::unique_ptr<sm::Image> image_;
};
std::unique_ptr<sm::Image> NetTest::image_;

TEST_F(NetTest, DownloadsFiftyMebibytesByNameByteExact) {
  sm::Vm vm = sm::Vm::start(*image_, config());
  auto r = vm.exec({"cat", "/etc/resolv.conf"});
  EXPECT_NE(r.out.find("nameserver 10.77.0.2"), std::string::npos) << r.out;
  const auto t0 = Clock::now();
  r = vm.exec({"sh", "-c", "wget -q -O - http://files.test/big | sha256sum"}, {.timeout = 300s});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.substr(0, 64), g_big_sha);
  std::printf("50 MiB in %.1f s\n", std::chrono::duration<double>(Clock::now() - t0).count());
  auto s = vm.net_stats();
  EXPECT_GT(s.rx_bytes, 50u << 20);
  EXPECT_EQ(s.tx_malformed, 0u);
}

TEST_F(NetTest, PublishedPortsAnswerOnTheHostAndATakenPortIsRefused) {
  sm::VmConfig c1 = config();
  c1.network.publish.push_back({.host_port = 18080, .guest_port = 80});
  sm::VmConfig c2 = config();
  c2.network.publish.push_back({.host_ip = "127.0.0.1", .host_port = 0, .guest_port = 80});
  sm::Vm a = sm::Vm::start(*image_, c1);
  sm::Vm b = sm::Vm::start(*image_, c2);
  serve(a, 80, "vm a\n");
  serve(b, 80, "vm b\n");
  auto ports = b.ports();
  ASSERT_EQ(ports.size(), 1u);
  EXPECT_NE(ports[0].host_port, 0);
  EXPECT_EQ(a.ports().at(0).host_port, 18080);
  EXPECT_NE(http_get(18080).find("vm a"), std::string::npos);
  EXPECT_NE(http_get(ports[0].host_port).find("vm b"), std::string::npos);

  // The same host port again: an error before the VM boots, naming the port.
  try {
    sm::Vm c = sm::Vm::start(*image_, c1);
    FAIL() << "a second VM published host port 18080";
  } catch (const sm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("18080"), std::string::npos) << e.what();
  }
  // Publish and unpublish at run time.
  auto m = a.publish({.host_ip = "127.0.0.1", .guest_port = 80});
  EXPECT_NE(http_get(m.host_port).find("vm a"), std::string::npos);
  EXPECT_TRUE(a.unpublish(m));
  EXPECT_EQ(http_get(m.host_port), "");
  // A stopped VM's ports close with it: clients are refused, not left hanging.
  a.stop();
  EXPECT_TRUE(connection_refused(18080)) << "port 18080 still accepts connections after the VM stopped";
}

TEST_F(NetTest, UdpRoundTripThroughAPublishedPort) {
  sm::VmConfig c = config();
  c.network.publish.push_back({.protocol = sm::PortMapping::Protocol::udp, .host_ip = "127.0.0.1", .guest_port = 5353});
  sm::Vm vm = sm::Vm::start(*image_, c);
  vm.write_file("/bin/sm-nettool", slurp(SM_NETTOOL), 0755);
  auto r = vm.exec({"sh", "-c", "sm-nettool udp-echo 5353 >/tmp/echo.log 2>&1 &"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const uint16_t port = vm.ports().at(0).host_port;
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  timeval tv{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string got;
  // The echo server may still be starting: send until an answer comes.
  for (int i = 0; i < 30 && got.empty(); ++i) {
    const std::string msg = fmt::format("datagram {}", i);
    ASSERT_EQ(::send(fd, msg.data(), msg.size(), 0), static_cast<ssize_t>(msg.size()));
    char buf[256];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) got.assign(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  EXPECT_TRUE(got.starts_with("datagram ")) << "no UDP echo came back; guest: " << vm.read_file("/tmp/echo.log");
}

TEST_F(NetTest, ConnectReachesAGuestServerWithoutPublishing) {
  sm::Vm vm = sm::Vm::start(*image_, config());
  serve(vm, 8081, "reached through Vm::connect\n", "127.0.0.1:");
  EXPECT_TRUE(vm.ports().empty());
  int fd = -1;
  for (auto deadline = Clock::now() + 10s; fd < 0 && Clock::now() < deadline;) {
    try {
      fd = vm.connect(8081);
    } catch (const sm::Error&) {
      std::this_thread::sleep_for(100ms);
    }
  }
  ASSERT_GE(fd, 0);
  const std::string req = "GET / HTTP/1.0\r\n\r\n";
  ASSERT_EQ(::write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  EXPECT_NE(out.find("reached through Vm::connect"), std::string::npos) << out;
  // Nothing listens on 8082: a clear error.
  EXPECT_THROW((void)vm.connect(8082), sm::Error);
}

TEST_F(NetTest, HostLoopbackIsOutOfReachUnlessAllowed) {
  LoopbackGreeter greeter;
  const std::string cmd = fmt::format("nc 10.0.2.2 {} </dev/null", greeter.port());
  {
    sm::Vm vm = sm::Vm::start(*image_, config());
    const auto t0 = Clock::now();
    auto r = vm.exec({"sh", "-c", cmd}, {.timeout = 30s});
    EXPECT_EQ(r.out.find("hello"), std::string::npos) << r.out;
    EXPECT_NE(r.exit_code, 0);
    EXPECT_LT(Clock::now() - t0, 5s) << "the refusal was not at once";
    EXPECT_GE(vm.net_stats().denied_tcp, 1u);
  }
  sm::VmConfig c = config();
  c.network.allow_host_loopback = true;
  sm::Vm vm = sm::Vm::start(*image_, c);
  auto r = vm.exec({"sh", "-c", cmd}, {.timeout = 30s});
  EXPECT_NE(r.out.find("hello from the host loopback"), std::string::npos)
      << r.out << r.err << vm.exec({"sh", "-c", "ip addr; ip route"}).out;
}

TEST_F(NetTest, EgressDenyWithAnAllowedDomain) {
  sm::VmConfig c = config();
  c.network.egress_allow = false;
  c.network.allow = {"files.test"};
  sm::Vm vm = sm::Vm::start(*image_, c);
  auto r = vm.exec({"wget", "-q", "-O", "-", "http://files.test/small"}, {.timeout = 60s});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "small file from the test host\n");

  auto t0 = Clock::now();
  r = vm.exec({"nslookup", "other.test"}, {.timeout = 30s});
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_LT(Clock::now() - t0, 5s) << "the denied name was not refused at once";

  t0 = Clock::now();
  r = vm.exec({"wget", "-q", "-O", "-", "http://10.77.0.3/small"}, {.timeout = 30s});
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_EQ(r.out, "");
  EXPECT_LT(Clock::now() - t0, 5s) << "the raw IP was not refused at once";

  auto s = vm.net_stats();
  EXPECT_GE(s.denied_dns, 1u);
  EXPECT_GE(s.denied_tcp, 1u);
}

TEST_F(NetTest, DeniedCidrAndNoneMode) {
  sm::VmConfig c = config();
  c.network.deny = {"10.77.0.3/32"};
  {
    sm::Vm vm = sm::Vm::start(*image_, c);
    auto r = vm.exec({"wget", "-q", "-O", "-", "http://10.77.0.2/small"}, {.timeout = 60s});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    r = vm.exec({"wget", "-q", "-O", "-", "http://10.77.0.3/small"}, {.timeout = 30s});
    EXPECT_NE(r.exit_code, 0);
  }
  c.network.mode = sm::NetworkConfig::Mode::none;
  c.network.dns.clear();
  sm::Vm vm = sm::Vm::start(*image_, c);
  // Only loopback; the kernel's own sit0 (IPv6-in-IPv4, always down) is not an interface we add.
  auto r = vm.exec({"sh", "-c", "ls /sys/class/net | grep -vx sit0"});
  EXPECT_EQ(trim(r.out), "lo");
  r = vm.exec({"ip", "route"});
  EXPECT_EQ(trim(r.out), "");
  const auto t0 = Clock::now();
  r = vm.exec({"wget", "-q", "-O", "-", "http://10.77.0.2/small"}, {.timeout = 30s});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_LT(Clock::now() - t0, 5s);
  EXPECT_EQ(vm.net_stats(), sm::NetStats{});
}

TEST_F(NetTest, HostileFramesAreCountedAndTheVmmRunsOn) {
  sm::VmConfig c = config();
  c.network.egress_allow = false;  // so the policy parses every frame
  c.network.allow = {"files.test"};
  sm::Vm vm = sm::Vm::start(*image_, c);
  vm.write_file("/bin/sm-nettool", slurp(SM_NETTOOL), 0755);
  auto r = vm.exec({"sm-nettool", "hostile", "eth0"}, {.timeout = 60s});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("sent "), std::string::npos) << r.out;
  auto s = vm.net_stats();
  EXPECT_GE(s.denied_other + s.denied_udp + s.denied_tcp + s.denied_dns + s.tx_malformed, 8u)
      << "denied_other " << s.denied_other << " denied_udp " << s.denied_udp << " tx_malformed " << s.tx_malformed;
  // The VM and its network still work.
  r = vm.exec({"wget", "-q", "-O", "-", "http://files.test/small"}, {.timeout = 60s});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(vm.running());
}

TEST_F(NetTest, SnapshotCloneGetsItsOwnNatAndPorts) {
  sm::VmConfig c = config();
  c.snapshot = false;
  sm::Vm vm = sm::Vm::start(*image_, c);
  serve(vm, 80, "from the snapshot\n");
  // A connection open at capture: its clone-side twin must end, not hang.
  auto r = vm.exec({"sh", "-c", "(wget -q -O /tmp/held http://files.test/big; echo $? > /tmp/held.rc) &"});
  ASSERT_EQ(r.exit_code, 0);
  fs::path snap = g_dirs.root / "net-snap";
  vm.snapshot(snap);
  sm::RestoreOptions o;
  o.network = sm::NetworkConfig{};
  o.network->dns = {"10.77.0.2"};
  o.network->publish.push_back({.host_ip = "127.0.0.1", .guest_port = 80});
  sm::Vm clone = sm::Vm::restore(snap, o);
  const uint16_t port = clone.ports().at(0).host_port;
  EXPECT_NE(http_get(port).find("from the snapshot"), std::string::npos);
  r = clone.exec({"wget", "-q", "-O", "-", "http://files.test/small"}, {.timeout = 60s});
  EXPECT_EQ(r.out, "small file from the test host\n") << r.err;
  // The download in flight at capture ends in the clone (an error or, if it had finished, 0).
  bool ended = false;
  for (auto deadline = Clock::now() + 120s; !ended && Clock::now() < deadline; std::this_thread::sleep_for(500ms))
    ended = clone.exec({"test", "-f", "/tmp/held.rc"}).exit_code == 0;
  EXPECT_TRUE(ended) << "a connection open at capture did not end in the clone";
}

// --network tap:NAME: the VM on a TAP interface the test makes, with the plan's gateway address
// (10.0.2.2/24) on the host side and a web server there. The guest takes the interface's MTU and
// the egress policy still holds on the LAN.
TEST_F(NetTest, TapPutsTheVmOnAHostInterfaceUnderThePolicy) {
  sh("ip link del sm-tap0 2>/dev/null");
  ASSERT_EQ(sh("ip tuntap add dev sm-tap0 mode tap && ip link set sm-tap0 mtu 1400 && "
               "ip addr add 10.0.2.2/24 dev sm-tap0 && ip link set sm-tap0 up"),
            0);
  struct Cleanup {
    ~Cleanup() { sh("ip link del sm-tap0 2>/dev/null"); }
  } cleanup;
  const fs::path www = g_dirs.root / "www";
  sm::test::ChildProcess httpd({"/bin/busybox", "httpd", "-f", "-p", "10.0.2.2:8088", "-h", www.string()});
  sm::VmConfig c;
  c.memory_mib = 256;
  c.network.mode = sm::NetworkConfig::Mode::tap;
  c.network.tap_name = "sm-tap0";
  {
    sm::Vm vm = sm::Vm::start(*image_, c);
    EXPECT_EQ(trim(vm.exec({"cat", "/sys/class/net/eth0/mtu"}).out), "1400");
    std::string got;
    for (auto deadline = Clock::now() + 30s; Clock::now() < deadline && got.empty(); std::this_thread::sleep_for(200ms))
      got = vm.exec({"wget", "-q", "-O", "-", "http://10.0.2.2:8088/small"}, {.timeout = 20s}).out;
    EXPECT_EQ(got, "small file from the test host\n");
    EXPECT_THROW((void)vm.publish({.guest_port = 80}), sm::Error);
  }
  c.network.egress_allow = false;
  sm::Vm vm = sm::Vm::start(*image_, c);
  const auto t0 = Clock::now();
  auto r = vm.exec({"wget", "-q", "-O", "-", "http://10.0.2.2:8088/small"}, {.timeout = 30s});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.out, "");
  EXPECT_LT(Clock::now() - t0, 5s) << "the denied address was not refused at once";
  EXPECT_GE(vm.net_stats().denied_tcp, 1u);
}

TEST_F(NetTest, CliPublishPortAndTakenPort) {
  ASSERT_EQ(sh(fmt::format("{} load -q -i {} >/dev/null", SM_BINARY, g_layout.string())), 0);
  sm::test::ChildProcess run({SM_BINARY, "run", "-d", "--name", "web", "-p", "18090:80", "localhost/oci:busybox",
                              "httpd", "-f", "-p", "80", "-h", "/etc"});
  ASSERT_EQ(run.wait(300s), 0) << run.err();
  sm::test::ChildProcess port({SM_BINARY, "port", "web"});
  ASSERT_EQ(port.wait(30s), 0) << port.err();
  EXPECT_EQ(trim(port.out()), "80/tcp -> 0.0.0.0:18090");
  std::string got;
  for (auto deadline = Clock::now() + 20s; got.empty() && Clock::now() < deadline; std::this_thread::sleep_for(200ms))
    got = http_get(18090, "/motd");
  EXPECT_NE(got.find("busybox test image"), std::string::npos) << got;

  sm::test::ChildProcess taken({SM_BINARY, "run", "--rm", "-p", "18090:80", "localhost/oci:busybox", "true"});
  EXPECT_EQ(taken.wait(300s), 125);
  EXPECT_NE(taken.err().find("18090"), std::string::npos) << taken.err();
  sm::test::ChildProcess rm({SM_BINARY, "rm", "-f", "web"});
  EXPECT_EQ(rm.wait(60s), 0) << rm.err();
}

}  // namespace
