// Snapshots, restore and the warm pool against real microVMs (issue: "what must show"):
// many restores of one snapshot, independent clones, a 2-vCPU busy capture, per-clone clock,
// entropy and hostname, bakes by default, the pool, and refusals of damaged or foreign
// snapshots. One process, its own image store, runtime directory and TMPDIR.
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <supermachine/supermachine.h>

#include "oci/digest.h"
#include "runtime/assets.h"
#include "snapshot/format.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

sm::test::PrivateDirs g_dirs;
fs::path g_layout;

class SnapshotEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    g_dirs = sm::test::use_private_dirs("sm-snaptest");
    g_layout = sm::test::test_images_dir(SM_SOURCE_DIR) / "oci";
    ASSERT_TRUE(fs::exists(g_layout / "index.json")) << g_layout;
  }
  void TearDown() override { fs::remove_all(g_dirs.root); }
};
[[maybe_unused]] const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new SnapshotEnvironment);

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string hash_file(const fs::path& p) { return sm::oci::Digest::of(std::string_view(slurp(p))).hex(); }

sm::VmConfig small() {
  sm::VmConfig c;
  c.memory_mib = 256;
  c.snapshot = false;  // these tests make their own snapshots; bakes have their own test
  return c;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// One snapshot of a busybox VM with a file written and a process started before the capture,
// shared by the tests that restore it.
class SnapshotTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    image_ = std::make_unique<sm::Image>(sm::Image::load(g_layout, "busybox"));
    sm::Vm vm = sm::Vm::start(*image_, small());
    vm.write_file("/data/before", "written before the capture\n");
    // A process that outlives the capture: it counts, so a clone shows it kept running.
    auto r = vm.exec({"sh", "-c", "(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.05; done) "
                                  ">/dev/null 2>&1 & echo $! > /tmp/loop.pid"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::this_thread::sleep_for(300ms);
    snap_ = fs::path(g_dirs.root) / "snap";
    EXPECT_EQ(vm.snapshot(snap_), snap_);
    // The original runs on after its capture.
    EXPECT_EQ(vm.exec({"echo", "still here"}).out, "still here\n");
  }
  static void TearDownTestSuite() { image_.reset(); }

  static std::unique_ptr<sm::Image> image_;
  static fs::path snap_;
};
std::unique_ptr<sm::Image> SnapshotTest::image_;
fs::path SnapshotTest::snap_;

TEST_F(SnapshotTest, HundredRestoresInARowEachAnswer) {
  for (int i = 0; i < 100; ++i) {
    sm::Vm clone = sm::Vm::restore(snap_);
    ASSERT_TRUE(clone.restored());
    sm::ExecResult r = clone.exec({"echo", "ok"});
    ASSERT_EQ(r.out, "ok\n") << "restore " << i << ": " << r.err << clone.console_tail();
    ASSERT_EQ(clone.read_file("/data/before"), "written before the capture\n") << i;
    // The loop started before the capture is still alive, and still counting.
    r = clone.exec({"sh", "-c", "kill -0 $(cat /tmp/loop.pid) && cat /tmp/counter"});
    ASSERT_EQ(r.exit_code, 0) << "restore " << i << ": the background process is gone: " << r.err;
  }
}

TEST_F(SnapshotTest, ClonesAreIndependentAndTheSnapshotIsUnchanged) {
  const std::string mem_before = hash_file(snap_ / "memory");
  const std::string state_before = hash_file(snap_ / "state");
  sm::Vm a = sm::Vm::restore(snap_);
  sm::Vm b = sm::Vm::restore(snap_);
  a.write_file("/data/mine", "a's\n");
  EXPECT_EQ(a.read_file("/data/mine"), "a's\n");
  EXPECT_NE(b.exec({"test", "-e", "/data/mine"}).exit_code, 0) << "b sees a's write";
  b.write_file("/data/before", "changed in b\n");
  EXPECT_EQ(a.read_file("/data/before"), "written before the capture\n");
  // The counters run on independently in each clone.
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(a.exec({"sh", "-c", "kill -0 $(cat /tmp/loop.pid)"}).exit_code, 0);
  EXPECT_EQ(b.exec({"sh", "-c", "kill -0 $(cat /tmp/loop.pid)"}).exit_code, 0);
  a.stop();
  b.stop();
  EXPECT_EQ(hash_file(snap_ / "memory"), mem_before);
  EXPECT_EQ(hash_file(snap_ / "state"), state_before);
}

TEST_F(SnapshotTest, ClonesGetTheHostClockFreshEntropyAndTheirOwnHostname) {
  sm::RestoreOptions oa, ob;
  oa.hostname = "clone-a";
  ob.hostname = "clone-b";
  // Let the snapshot's clock fall well behind, so a clone that kept it would show.
  std::this_thread::sleep_for(2s);
  sm::Vm a = sm::Vm::restore(snap_, oa);
  sm::Vm b = sm::Vm::restore(snap_, ob);
  for (sm::Vm* vm : {&a, &b}) {
    auto r = vm->exec({"date", "+%s"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    long guest = std::stol(r.out);
    long host = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    EXPECT_LE(std::labs(host - guest), 1) << "guest " << guest << " host " << host;
  }
  EXPECT_EQ(trim(a.exec({"hostname"}).out), "clone-a");
  EXPECT_EQ(trim(b.exec({"hostname"}).out), "clone-b");
  auto random = [](sm::Vm& vm) {
    auto r = vm.exec({"sh", "-c", "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out;
  };
  std::string ra = random(a), rb = random(b);
  EXPECT_EQ(ra.size(), 64u);
  EXPECT_NE(ra, rb) << "two clones read the same random bytes";
}

TEST_F(SnapshotTest, DamagedAndForeignSnapshotsAreRefusedWithClearErrors) {
  auto expect_refused = [](const fs::path& dir, const std::string& needle) {
    try {
      sm::Vm vm = sm::Vm::restore(dir);
      ADD_FAILURE() << dir << " was restored; expected an error with '" << needle << "'";
    } catch (const sm::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto copy_of = [&](const std::string& name) {
    fs::path d = fs::path(g_dirs.root) / name;
    fs::copy(snap_, d);
    return d;
  };
  // Truncated state.
  fs::path t = copy_of("truncated");
  fs::resize_file(t / "state", fs::file_size(t / "state") / 2);
  expect_refused(t, "truncated");
  // A flipped byte in a section.
  fs::path c = copy_of("corrupt");
  {
    std::string s = slurp(c / "state");
    s[s.size() - 10] ^= 0x5a;
    std::ofstream(c / "state", std::ios::binary | std::ios::trunc) << s;
  }
  expect_refused(c, "corrupt");
  // Another format version (the u32 after the 8-byte magic).
  fs::path v = copy_of("version");
  {
    std::string s = slurp(v / "state");
    s[8] = 99;
    std::ofstream(v / "state", std::ios::binary | std::ios::trunc) << s;
  }
  expect_refused(v, "version");
  // A memory file of the wrong size.
  fs::path m = copy_of("memory");
  fs::resize_file(m / "memory", 4096);
  expect_refused(m, "memory");
  // Another root filesystem: the same snapshot, pointed at a copy of its rootfs (another file).
  fs::path r = copy_of("rootfs");
  {
    auto file = sm::snapshot::StateFile::read(r / "state");
    std::vector<sm::snapshot::Section> sections;
    for (const auto& name : file.names()) {
      auto bytes = file.section(name);
      std::vector<std::byte> payload(bytes.begin(), bytes.end());
      if (name == "container") {
        std::string json(reinterpret_cast<const char*>(payload.data()), payload.size());
        auto at = json.find("\"rootfs\":\"") + 10;
        auto end = json.find('"', at);
        fs::path orig = json.substr(at, end - at);
        fs::path copy = fs::path(g_dirs.root) / "rootfs-copy.img";
        fs::copy_file(orig, copy);
        json.replace(at, end - at, copy.string());
        auto b = std::as_bytes(std::span(json.data(), json.size()));
        payload.assign(b.begin(), b.end());
      }
      sections.push_back({name, payload});
    }
    fs::remove(r / "state");
    sm::snapshot::write_state_file(r / "state", sections);
  }
  expect_refused(r, "disk 0 differs");
  // Another kernel: the same kernel copied (a rebuilt kernel has another identity too).
  fs::path kernel_copy = fs::path(g_dirs.root) / "kernel-copy";
  fs::copy_file(sm::runtime::find_guest_assets().kernel, kernel_copy);
  const char* old = std::getenv("SM_KERNEL");
  std::string saved = old ? old : "";
  ::setenv("SM_KERNEL", kernel_copy.c_str(), 1);
  expect_refused(snap_, "kernel differs");
  if (old) ::setenv("SM_KERNEL", saved.c_str(), 1);
  else ::unsetenv("SM_KERNEL");
}

TEST(SnapshotSmp, TwoBusyVcpusKeepRunningAfterRestore) {
  sm::Image image = sm::Image::load(g_layout, "busybox");
  sm::VmConfig cfg = small();
  cfg.cpus = 2;
  sm::Vm vm = sm::Vm::start(image, cfg);
  ASSERT_EQ(trim(vm.exec({"nproc"}).out), "2");
  // One busy loop pinned to each vCPU, each bumping its own counter file.
  for (int cpu = 0; cpu < 2; ++cpu) {
    auto r = vm.exec({"sh", "-c",
                      "taskset -c " + std::to_string(cpu) + " sh -c 'i=0; while true; do i=$((i+1)); "
                      "[ $((i % 200)) = 0 ] && echo $i > /tmp/busy" + std::to_string(cpu) + ".t && mv /tmp/busy" +
                          std::to_string(cpu) + ".t /tmp/busy" + std::to_string(cpu) + "; done' >/dev/null 2>&1 &"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  std::this_thread::sleep_for(500ms);
  fs::path snap = fs::path(g_dirs.root) / "smp-snap";
  vm.snapshot(snap);
  vm.stop();
  for (int i = 0; i < 50; ++i) {
    sm::Vm clone = sm::Vm::restore(snap);
    auto read = [&](int cpu) {
      auto r = clone.exec({"cat", "/tmp/busy" + std::to_string(cpu)});
      EXPECT_EQ(r.exit_code, 0) << r.err;
      return std::stol("0" + trim(r.out));
    };
    long a0 = read(0), a1 = read(1);
    std::this_thread::sleep_for(200ms);
    long b0 = read(0), b1 = read(1);
    ASSERT_GT(b0, a0) << "restore " << i << ": vCPU 0's loop stopped";
    ASSERT_GT(b1, a1) << "restore " << i << ": vCPU 1's loop stopped";
  }
}

TEST(Bake, SecondStartRestoresTheBakeAndAChangedConfigBakesAgain) {
  sm::Image image = sm::Image::load(g_layout, "busybox");
  sm::VmConfig cfg;
  cfg.memory_mib = 320;  // a size no other test uses: this test's bake is its own
  {
    sm::Vm first = sm::Vm::start(image, cfg);
    EXPECT_FALSE(first.restored()) << "the first start boots (and bakes)";
    EXPECT_EQ(first.exec({"echo", "hi"}).out, "hi\n");
  }
  {
    sm::Vm second = sm::Vm::start(image, cfg);
    EXPECT_TRUE(second.restored()) << "the second start restores the bake";
    EXPECT_EQ(second.exec({"echo", "hi"}).out, "hi\n");
  }
  cfg.memory_mib = 352;
  {
    sm::Vm other = sm::Vm::start(image, cfg);
    EXPECT_FALSE(other.restored()) << "another memory size makes another bake";
  }
  cfg.snapshot = false;
  {
    sm::Vm cold = sm::Vm::start(image, cfg);
    EXPECT_FALSE(cold.restored()) << "snapshot = false boots";
  }
}

TEST(Pool, ServesTwentyCyclesReplacesAKilledVmAndLeavesNothing) {
  sm::Image image = sm::Image::load(g_layout, "busybox");
  const size_t tmp_entries_before = [] {
    size_t n = 0;
    for ([[maybe_unused]] auto& e : fs::directory_iterator(g_dirs.tmp)) ++n;
    return n;
  }();
  {
    sm::PoolConfig pc;
    pc.vm.memory_mib = 256;
    pc.min = 2;
    pc.max = 4;
    sm::Pool pool(image, pc);
    std::set<std::string> dirs;
    for (int i = 0; i < 20; ++i) {
      sm::Vm vm = pool.acquire();
      ASSERT_TRUE(vm.running());
      EXPECT_TRUE(dirs.insert(vm.dir().string()).second) << "a VM was handed out twice";
      auto r = vm.exec({"sh", "-c", "test -e /tmp/used && echo reused; touch /tmp/used; echo ok"});
      ASSERT_EQ(r.out, "ok\n") << "cycle " << i << ": " << r.err;
    }
    // A VM killed while acquired: the pool's count drops when it goes, and it refills.
    {
      sm::Vm vm = pool.acquire();
      (void)vm.exec({"sh", "-c", "echo o > /proc/sysrq-trigger"});  // power off from inside
      for (int i = 0; i < 100 && vm.running(); ++i) std::this_thread::sleep_for(50ms);
    }
    sm::Vm after = pool.acquire();
    EXPECT_EQ(after.exec({"echo", "ok"}).out, "ok\n");
    EXPECT_LE(pool.alive(), pc.max);
  }
  // Nothing running, nothing left in TMPDIR where the VMs' directories were.
  size_t n = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(g_dirs.tmp)) ++n;
  EXPECT_EQ(n, tmp_entries_before);
}

}  // namespace
