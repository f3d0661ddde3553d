#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/error.h"
#include "hypervisor/hypervisor.h"
#include "hypervisor/kvm/kvm.h"

namespace sm::hv {
namespace {

namespace fs = std::filesystem;

class ProbeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sm-probe-" + std::to_string(::getpid()));
    fs::create_directories(dir_ / "sys_module");
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string probe_error(const ProbeOptions& o) {
    try {
      (void)kvm::probe(o);
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "probe succeeded";
    return {};
  }

  fs::path dir_;
};

TEST_F(ProbeTest, MissingDeviceSaysHowToGetKvm) {
  std::string msg = probe_error({dir_ / "kvm", dir_ / "sys_module"});
  EXPECT_NE(msg.find("not found"), std::string::npos) << msg;
  EXPECT_NE(msg.find("kvm_intel"), std::string::npos) << msg;
  EXPECT_NE(msg.find("scripts/nested"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("PVM"), std::string::npos) << msg;
}

TEST_F(ProbeTest, MissingDeviceOnPvmHostNamesPvm) {
  fs::create_directories(dir_ / "sys_module" / "kvm_pvm");
  std::string msg = probe_error({dir_ / "kvm", dir_ / "sys_module"});
  EXPECT_NE(msg.find("PVM"), std::string::npos) << msg;
  EXPECT_NE(msg.find("scripts/nested"), std::string::npos) << msg;
}

TEST_F(ProbeTest, FileThatIsNotKvmIsRejected) {
  std::ofstream(dir_ / "kvm") << "not a device";
  std::string msg = probe_error({dir_ / "kvm", dir_ / "sys_module"});
  EXPECT_NE(msg.find("is not a KVM device"), std::string::npos) << msg;
}

TEST_F(ProbeTest, PermissionDeniedSaysKvmGroup) {
  if (::geteuid() == 0) GTEST_SKIP() << "root opens any file";
  std::ofstream(dir_ / "kvm") << "";
  fs::permissions(dir_ / "kvm", fs::perms::none);
  std::string msg = probe_error({dir_ / "kvm", dir_ / "sys_module"});
  EXPECT_NE(msg.find("kvm group"), std::string::npos) << msg;
}

}  // namespace
}  // namespace sm::hv
