#include "runtime/state.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "common/error.h"

namespace sm::runtime {
namespace {

namespace fs = std::filesystem;

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string t = (fs::temp_directory_path() / "sm-state-test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(t.data()), nullptr);
    root_ = t;
  }
  void TearDown() override { fs::remove_all(root_); }
  fs::path root_;
};

TEST_F(RegistryTest, CreateFindSaveRemove) {
  VmRegistry reg(root_);
  auto a = reg.create("web", "alpine", {"echo", "hi"}, false);
  auto b = reg.create("", "busybox", {"sh"}, true);
  EXPECT_EQ(a.id.size(), 64u);
  EXPECT_FALSE(b.name.empty());
  EXPECT_EQ(reg.list().size(), 2u);
  EXPECT_EQ(reg.find("web").id, a.id);
  EXPECT_EQ(reg.find(a.id.substr(0, 12)).name, "web");
  EXPECT_EQ(reg.find(b.name).id, b.id);
  EXPECT_THROW((void)reg.find("nope"), Error);
  EXPECT_THROW((void)reg.create("web", "x", {}, false), Error) << "names are unique";
  EXPECT_THROW((void)reg.create("../x", "x", {}, false), Error) << "names are checked";

  // The creating process is the supervisor: running while it lives.
  EXPECT_EQ(VmRegistry::state(a), VmState::kRunning);
  a.exit_code = 3;
  reg.save(a);
  EXPECT_EQ(VmRegistry::state(reg.reload(a)), VmState::kExited);
  EXPECT_EQ(*reg.reload(a).exit_code, 3);

  b.pid_start += 1;  // a reused pid is not our supervisor
  EXPECT_EQ(VmRegistry::state(b), VmState::kDead);

  reg.remove(a);
  EXPECT_FALSE(fs::exists(reg.dir(a)));
  EXPECT_EQ(reg.list().size(), 1u);
}

// The VM's sockets (vm.vsock, vm.vsock_1025) are bound in its directory: under a typical
// runtime root their paths must fit in sun_path (108 bytes, NUL included).
TEST(RegistryLayout, SocketPathsFitInSunPath) {
  VmRegistry reg("/run/user/1000000/supermachine");
  VmRecord r;
  r.id = std::string(64, 'f');
  EXPECT_LT((reg.dir(r) / "vm.vsock_4294967295").string().size(), 96u);
}

TEST_F(RegistryTest, CorruptRecordsAreSkipped) {
  VmRegistry reg(root_);
  auto a = reg.create("ok", "img", {}, false);
  fs::create_directories(root_ / "vms/bad");
  std::ofstream(root_ / "vms/bad/state.json") << "{not json";
  auto all = reg.list();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].id, a.id);
}

TEST(ProcessStartTime, SelfIsKnownAndMissingIsZero) {
  EXPECT_GT(process_start_time(::getpid()), 0u);
  EXPECT_EQ(process_start_time(0x3fffffff), 0u);
}

}  // namespace
}  // namespace sm::runtime
