#include "vmm/machine_config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/error.h"

namespace sm::vmm {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kHostRam = 8ull << 30;

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sm-config-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    std::ofstream(dir_ / "bzImage") << "kernel";
    std::ofstream(dir_ / "initrd") << "initrd";
    std::ofstream(dir_ / "disk.img") << std::string(4096, '\0');
    cfg_.kernel = dir_ / "bzImage";
    cfg_.initrd = dir_ / "initrd";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string error_of(const MachineConfig& c, uint64_t host_ram = kHostRam) {
    try {
      validate(c, host_ram);
    } catch (const Error& e) {
      return e.what();
    }
    return "(valid)";
  }

  fs::path dir_;
  MachineConfig cfg_;
};

TEST_F(ConfigTest, AcceptsAPlainConfig) {
  EXPECT_EQ(error_of(cfg_), "(valid)");
  cfg_.disks.push_back({dir_ / "disk.img", true});
  cfg_.vsock_uds = dir_ / "vsock.sock";
  cfg_.cpus = 32;
  cfg_.memory_mib = 32;
  EXPECT_EQ(error_of(cfg_), "(valid)");
}

TEST_F(ConfigTest, RejectsCpuCountsOutOfRange) {
  cfg_.cpus = 0;
  EXPECT_NE(error_of(cfg_).find("--cpus 0 is out of range"), std::string::npos);
  cfg_.cpus = 33;
  EXPECT_NE(error_of(cfg_).find("1 to 32"), std::string::npos);
}

TEST_F(ConfigTest, RejectsMemoryTooSmallOrLargerThanHost) {
  cfg_.memory_mib = 31;
  EXPECT_NE(error_of(cfg_).find("too small"), std::string::npos);
  cfg_.memory_mib = 8193;
  std::string e = error_of(cfg_);
  EXPECT_NE(e.find("too large"), std::string::npos) << e;
  EXPECT_NE(e.find("8192 MiB"), std::string::npos) << e;
  cfg_.memory_mib = 8192;
  EXPECT_EQ(error_of(cfg_), "(valid)");
  // The layout's cap applies even on a host with more RAM.
  cfg_.memory_mib = (2ull << 40) >> 20;
  EXPECT_NE(error_of(cfg_, 4ull << 40).find("the VM layout"), std::string::npos);
}

TEST_F(ConfigTest, RejectsMissingOrOddFiles) {
  cfg_.kernel = dir_ / "nope";
  EXPECT_NE(error_of(cfg_).find("kernel " + (dir_ / "nope").string() + " does not exist"), std::string::npos);
  cfg_.kernel = dir_;
  EXPECT_NE(error_of(cfg_).find("is not a regular file"), std::string::npos);
  cfg_.kernel = "";
  EXPECT_NE(error_of(cfg_).find("--kernel"), std::string::npos);
  cfg_.kernel = dir_ / "bzImage";
  cfg_.initrd = dir_ / "missing.cpio";
  EXPECT_NE(error_of(cfg_).find("initrd"), std::string::npos);
  cfg_.initrd.reset();
  cfg_.disks.push_back({dir_ / "missing.img", false});
  EXPECT_NE(error_of(cfg_).find("disk"), std::string::npos);
}

TEST_F(ConfigTest, RejectsVsockPathsThatCannotBeBound) {
  cfg_.vsock_uds = dir_ / "bzImage";
  EXPECT_NE(error_of(cfg_).find("exists already"), std::string::npos);
  cfg_.vsock_uds = dir_ / "no-such-dir" / "v.sock";
  EXPECT_NE(error_of(cfg_).find("does not exist"), std::string::npos);
  cfg_.vsock_uds = dir_ / std::string(120, 'x');
  EXPECT_NE(error_of(cfg_).find("too long"), std::string::npos);
}

TEST_F(ConfigTest, RejectsMoreDevicesThanInterruptLines) {
  for (int i = 0; i < 18; ++i) cfg_.disks.push_back({dir_ / "disk.img", true});
  EXPECT_EQ(error_of(cfg_), "(valid)");  // 18 disks + rng = 19 = GSIs 5..23
  cfg_.disks.push_back({dir_ / "disk.img", true});
  EXPECT_NE(error_of(cfg_).find("too many devices"), std::string::npos);
}

TEST(KernelCmdline, ListsDevicesThenUserPart) {
  VirtioMmioSlot slots[] = {{0xd0000000, 5}, {0xd0001000, 6}};
  EXPECT_EQ(kernel_cmdline(slots, "  init=/bin/sh quiet \n"),
            "console=ttyS0 reboot=k panic=-1 virtio_mmio.device=4K@0xd0000000:5 "
            "virtio_mmio.device=4K@0xd0001000:6 init=/bin/sh quiet");
  EXPECT_EQ(kernel_cmdline({}, ""), "console=ttyS0 reboot=k panic=-1");
  EXPECT_EQ(kernel_cmdline({}, "   "), "console=ttyS0 reboot=k panic=-1");
}

}  // namespace
}  // namespace sm::vmm
