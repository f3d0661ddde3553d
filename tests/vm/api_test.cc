// The public library API (include/supermachine/supermachine.h) against real microVMs: images
// from the offline test layout (tests/images/build), exec and its options, streaming, files,
// errors, and that a destroyed Vm leaves nothing behind. Also runs the two examples/ programs
// and checks what they print.
//
// One process: the image store, the runtime state and $TMPDIR (where each Vm makes its
// directory) are a fresh temporary directory, and most tests share one VM, because a boot under
// the nested harness takes seconds.
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <supermachine/supermachine.h>

#include "child_process.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// Nested KVM under TCG is slow; deadlines are generous.
constexpr auto kExampleDeadline = 300s;

sm::test::PrivateDirs g_dirs;  // this process's image store, VM state and TMPDIR
fs::path g_layout;              // the test images' OCI layout

class ApiEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    g_dirs = sm::test::use_private_dirs("sm-apitest");
    g_layout = sm::test::test_images_dir(SM_SOURCE_DIR) / "oci";
    ASSERT_TRUE(fs::exists(g_layout / "index.json")) << g_layout;
  }
  void TearDown() override { fs::remove_all(g_dirs.root); }
};

[[maybe_unused]] const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new ApiEnvironment);

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename());
  return names;
}

size_t count_entries(const char* dir) { return entries(dir).size(); }

// Most tests share one VM of the busybox image.
class ApiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    image_ = std::make_unique<sm::Image>(sm::Image::load(g_layout, "busybox"));
    vm_ = std::make_unique<sm::Vm>(sm::Vm::start(*image_));
  }
  static void TearDownTestSuite() {
    vm_.reset();
    image_.reset();
  }
  sm::Vm& vm() { return *vm_; }

  static std::unique_ptr<sm::Image> image_;
  static std::unique_ptr<sm::Vm> vm_;
};
std::unique_ptr<sm::Image> ApiTest::image_;
std::unique_ptr<sm::Vm> ApiTest::vm_;

// Images need no VM.
TEST(ApiImage, FromLayoutIsNamedAndStored) {
  sm::Image image = sm::Image::load(g_layout, "busybox");
  EXPECT_EQ(image.reference(), "localhost/oci:busybox");
  EXPECT_TRUE(image.digest().starts_with("sha256:")) << image.digest();
  EXPECT_EQ(image.command(), std::vector<std::string>{"sh"});
  // Now in the store: local() finds it without loading anything.
  sm::Image again = sm::Image::local("localhost/oci:busybox");
  EXPECT_EQ(again.digest(), image.digest());
  // The layout holds several images: one must be named.
  try {
    (void)sm::Image::load(g_layout);
    FAIL() << "no error";
  } catch (const sm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("name the one to use"), std::string::npos) << e.what();
  }
}

TEST(ApiImage, MissingImagesSayWhatIsMissing) {
  try {
    (void)sm::Image::local("localhost/no-such-image:1");
    FAIL() << "no error";
  } catch (const sm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not in the local store"), std::string::npos) << e.what();
  }
  try {
    (void)sm::Image::load(g_layout, "no-such-tag");
    FAIL() << "no error";
  } catch (const sm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no image named 'no-such-tag'"), std::string::npos) << e.what();
  }
}

TEST_F(ApiTest, ExecSeparatesStdoutAndStderr) {
  ASSERT_TRUE(vm().running());
  sm::ExecResult r = vm().exec({"echo", "hi"});
  EXPECT_EQ(r.out, "hi\n");
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_FALSE(r.signal);
  EXPECT_GT(r.duration, 0ns);

  r = vm().exec({"sh", "-c", "echo to-out; echo to-err >&2"});
  EXPECT_EQ(r.out, "to-out\n");
  EXPECT_EQ(r.err, "to-err\n");
}

TEST_F(ApiTest, ExecReportsExitCodeAndSignal) {
  sm::ExecResult r = vm().exec({"sh", "-c", "exit 7"});
  EXPECT_EQ(r.exit_code, 7);
  EXPECT_FALSE(r.signal);

  r = vm().exec({"sh", "-c", "kill -9 $$"});
  EXPECT_EQ(r.exit_code, 137);
  EXPECT_EQ(r.signal, 9);
}

TEST_F(ApiTest, ExecPassesStdinData) {
  sm::ExecOptions o;
  o.stdin_data = "line one\nline two\n";
  sm::ExecResult r = vm().exec({"sh", "-c", "cat; echo end"}, o);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "line one\nline two\nend\n");
  EXPECT_EQ(vm().exec({"cat"}).out, "") << "stdin is /dev/null without stdin_data";
}

TEST_F(ApiTest, ExecStreamStreamsStdinAndOutput) {
  std::vector<std::string> chunks = {"alpha\n", "beta\n", "gamma\n"};
  size_t next = 0;
  std::string out, err;
  sm::ExecStream io;
  io.stdin_source = [&] { return next < chunks.size() ? chunks[next++] : std::string(); };
  io.on_stdout = [&](std::string_view s) { out += s; };
  io.on_stderr = [&](std::string_view s) { err += s; };
  sm::ExecStatus st = vm().exec_stream({"sh", "-c", "tr a-z A-Z; echo eof >&2; exit 4"}, io);
  EXPECT_EQ(st.exit_code, 4);
  EXPECT_EQ(out, "ALPHA\nBETA\nGAMMA\n");
  EXPECT_EQ(err, "eof\n");
  EXPECT_EQ(next, chunks.size());
}

TEST_F(ApiTest, ExecOptionsSetEnvWorkingDirAndUser) {
  // The image's defaults: Env GREETING=hello, WorkingDir /root, root.
  sm::ExecResult r = vm().exec({"sh", "-c", "echo $GREETING:$(pwd):$(id -u)"});
  EXPECT_EQ(r.out, "hello:/root:0\n");

  sm::ExecOptions o;
  o.env = {"GREETING=bonjour", "EXTRA=1"};
  o.working_dir = "/tmp";
  o.user = "user";
  r = vm().exec({"sh", "-c", "echo $GREETING:$EXTRA:$(pwd):$(id -u):$HOME"}, o);
  EXPECT_EQ(r.out, "bonjour:1:/tmp:1000:/home/user\n") << r.err;

  o = {};
  o.working_dir = "/does/not/exist";
  EXPECT_THROW((void)vm().exec({"pwd"}, o), sm::ExecError);
}

TEST_F(ApiTest, WriteFileAndReadFileRoundTrip) {
  std::string data("binary\0data\n", 12);
  for (int i = 0; i < 100000; ++i) data += static_cast<char>(i * 7);
  vm().write_file("/srv/new/dir/blob", data, 0600);
  EXPECT_EQ(vm().read_file("/srv/new/dir/blob"), data);
  sm::ExecResult r = vm().exec({"stat", "-c", "%a %s", "/srv/new/dir/blob"});
  EXPECT_EQ(r.out, "600 " + std::to_string(data.size()) + "\n");

  vm().write_file("/srv/script", "#!/bin/sh\necho ran \"$@\"\n", 0755);
  EXPECT_EQ(vm().exec({"/srv/script", "x"}).out, "ran x\n");

  try {
    (void)vm().read_file("/no/such/file");
    FAIL() << "no error";
  } catch (const sm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/no/such/file"), std::string::npos) << e.what();
  }
  EXPECT_THROW(vm().write_file("relative", "x"), sm::Error);
}

TEST_F(ApiTest, MissingCommandIsAnExecErrorThatSaysSo) {
  try {
    (void)vm().exec({"no-such-command", "arg"});
    FAIL() << "no error";
  } catch (const sm::ExecError& e) {
    EXPECT_EQ(e.exit_code(), 127);
    std::string msg = e.what();
    EXPECT_NE(msg.find("no-such-command"), std::string::npos) << msg;
    EXPECT_NE(msg.find("command not found"), std::string::npos) << msg;
  }
  EXPECT_THROW((void)vm().exec({}), sm::Error);
  // The VM is unaffected.
  EXPECT_EQ(vm().exec({"echo", "still", "here"}).out, "still here\n");
}

TEST_F(ApiTest, TimeoutKillsTheProcess) {
  sm::ExecOptions o;
  o.timeout = 1s;
  auto start = std::chrono::steady_clock::now();
  sm::ExecResult r = vm().exec({"sh", "-c", "echo started; sleep 60"}, o);
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.exit_code, 137);
  EXPECT_EQ(r.out, "started\n");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
}

TEST_F(ApiTest, ConcurrentExecsRunIndependently) {
  sm::ExecResult slow;
  std::thread t([&] { slow = vm().exec({"sh", "-c", "sleep 2; echo slow"}); });
  sm::ExecResult fast = vm().exec({"echo", "fast"});
  t.join();
  EXPECT_EQ(fast.out, "fast\n");
  EXPECT_EQ(slow.out, "slow\n");
  EXPECT_LT(fast.duration, slow.duration);
}

// A VM of its own: configuration, stop(), and what destruction leaves behind.
TEST(ApiVm, ConfigAndStopAndNothingLeftBehind) {
  sm::Image image = sm::Image::load(g_layout, "busybox");
  size_t fds = count_entries("/proc/self/fd");
  size_t threads = count_entries("/proc/self/task");
  fs::path dir;
  {
    sm::VmConfig c;
    c.cpus = 2;
    c.memory_mib = 256;
    c.hostname = "api-test";
    c.env = {"FROM_CONFIG=yes"};
    c.working_dir = "/made/by/config";
    c.user = "1000";
    sm::Vm vm = sm::Vm::start(image, c);
    dir = vm.dir();
    EXPECT_TRUE(fs::is_directory(dir));
    EXPECT_EQ(dir.parent_path(), g_dirs.tmp);
    EXPECT_GT(count_entries("/proc/self/task"), threads);
    sm::ExecResult r = vm.exec(
        {"sh", "-c", "echo $(hostname):$(grep -c ^processor /proc/cpuinfo):$FROM_CONFIG:$GREETING:$(pwd):$(id -u)"});
    EXPECT_EQ(r.out, "api-test:2:yes:hello:/made/by/config:1000\n") << r.err;
    // MemTotal is what the guest kernel did not keep for itself: under 256 MiB, over half of it.
    r = vm.exec({"awk", "/MemTotal/ { print ($2 > 131072 && $2 <= 262144) ? \"ok\" : $2 }", "/proc/meminfo"});
    EXPECT_EQ(r.out, "ok\n");

    // A moved-to Vm is the VM; the moved-from one refuses politely.
    sm::Vm moved = std::move(vm);
    EXPECT_TRUE(moved.running());
    EXPECT_FALSE(vm.running());  // NOLINT(bugprone-use-after-move): documented behaviour
    EXPECT_THROW((void)vm.exec({"true"}), sm::Error);

    moved.stop();
    EXPECT_FALSE(moved.running());
    EXPECT_FALSE(fs::exists(dir));
    try {
      (void)moved.exec({"true"});
      FAIL() << "exec after stop";
    } catch (const sm::Error& e) {
      EXPECT_NE(std::string(e.what()).find("stopped"), std::string::npos) << e.what();
    }
    moved.stop();  // idempotent
  }
  {
    // The destructor alone, with processes still running in the VM.
    sm::Vm vm = sm::Vm::start(image);
    dir = vm.dir();
    vm.write_file("/tmp/x", "x");
    EXPECT_EQ(vm.exec({"sh", "-c", "sleep 600 </dev/null >/dev/null 2>&1 & echo started"}).out, "started\n");
  }
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_TRUE(entries(g_dirs.tmp).empty());
  EXPECT_EQ(count_entries("/proc/self/fd"), fds);
  EXPECT_EQ(count_entries("/proc/self/task"), threads);
}

// stop() from another thread (a watchdog) ends the requests in flight instead of waiting for them.
TEST(ApiVm, StopFromAnotherThreadEndsRequestsInFlight) {
  sm::Image image = sm::Image::load(g_layout, "busybox");
  sm::Vm vm = sm::Vm::start(image);
  std::atomic<bool> started = false;
  std::optional<std::string> exec_error, stream_error;
  auto t0 = std::chrono::steady_clock::now();
  std::thread a([&] {
    try {
      (void)vm.exec({"sleep", "600"});
    } catch (const sm::Error& e) {
      exec_error = e.what();
    }
  });
  std::thread b([&] {
    sm::ExecStream io;
    io.on_stdout = [&](std::string_view s) { started = started || s.find("started") != s.npos; };
    try {
      (void)vm.exec_stream({"sh", "-c", "echo started; sleep 600"}, io);
    } catch (const sm::Error& e) {
      stream_error = e.what();
    }
  });
  for (int i = 0; i < 1200 && !started; ++i) std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(started);
  vm.stop();
  a.join();
  b.join();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 120s);
  EXPECT_FALSE(vm.running());
  EXPECT_TRUE(exec_error.has_value()) << "exec of sleep 600 returned normally";
  ASSERT_TRUE(stream_error.has_value()) << "exec_stream of sleep 600 returned normally";
  EXPECT_NE(stream_error->find("the VM ended"), std::string::npos) << *stream_error;
}

TEST(ApiVm, BadConfigFailsBeforeBooting) {
  sm::Image image = sm::Image::load(g_layout, "busybox");
  sm::VmConfig c;
  c.env = {"NOEQUALS"};
  EXPECT_THROW((void)sm::Vm::start(image, c), sm::Error);
  c = {};
  c.hostname = "bad host";
  try {
    (void)sm::Vm::start(image, c);
    FAIL() << "no error";
  } catch (const sm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("hostname"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(entries(g_dirs.tmp).empty());
}

struct Ran {
  std::optional<int> status;
  std::string out, err;
};

Ran run_example(const char* binary) {
  sm::test::ChildProcess p({binary, g_layout.string(), "busybox"});
  Ran r;
  r.status = p.wait(kExampleDeadline);
  r.out = p.out();
  r.err = p.err();
  return r;
}

TEST(ApiExamples, HelloPrintsTheGreeting) {
  Ran r = run_example(SM_EXAMPLE_HELLO);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_TRUE(r.out.starts_with("hello from localhost/oci:busybox\nexit code 0 in ")) << r.out;
  EXPECT_TRUE(entries(g_dirs.tmp).empty());
}

TEST(ApiExamples, SandboxStreamsAndReadsTheResult) {
  Ran r = run_example(SM_EXAMPLE_SANDBOX);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_TRUE(r.out.starts_with("got: line 1\ngot: line 2\ngot: line 3\nexit code 3 in ")) << r.out;
  EXPECT_TRUE(r.out.ends_with(" ms\ncount: 3\n")) << r.out;
  EXPECT_EQ(r.err, "done\n");
  EXPECT_TRUE(entries(g_dirs.tmp).empty());
}

}  // namespace
