#include "vmm/machine_shape.h"

#include <gtest/gtest.h>

namespace sm::vmm {
namespace {

MachineShape sample() {
  MachineShape s;
  s.memory = {{0, 0x10000000}};
  s.cpus = 2;
  s.devices = {{2, 0xd0000000, 5, 1}, {4, 0xd0001000, 6, 1}, {19, 0xd0002000, 7, 3}};
  s.cmdline = "console=ttyS0";
  s.identity = {{"kernel", "1:2"}, {"vmm", "0.1.0+ab"}, {"rootfs", "sha256:00"}};
  return s;
}

TEST(MachineShape, RoundTripsAndAgreesWithItself) {
  snapshot::Encoder e;
  save(e, sample());
  snapshot::Decoder d(e.data(), "machine");
  MachineShape back = load_machine_shape(d);
  EXPECT_EQ(back.memory, sample().memory);
  EXPECT_EQ(back.devices, sample().devices);
  EXPECT_EQ(back.identity, sample().identity);
  EXPECT_EQ(shape_mismatch(back, sample()), std::nullopt);
}

TEST(MachineShape, TruncatedEncodingsFail) {
  snapshot::Encoder e;
  save(e, sample());
  for (size_t n = 0; n < e.data().size(); ++n) {
    snapshot::Decoder d(std::span(e.data()).first(n), "machine");
    EXPECT_THROW((void)load_machine_shape(d), snapshot::SnapshotError) << n;
  }
}

TEST(MachineShape, NamesWhatDiffers) {
  auto s = sample();
  auto w = sample();
  w.cpus = 1;
  EXPECT_NE(shape_mismatch(s, w)->find("2 vCPU"), std::string::npos);
  w = sample();
  w.memory = {{0, 0x20000000}};
  EXPECT_NE(shape_mismatch(s, w)->find("256 MiB"), std::string::npos);
  w = sample();
  w.identity[0].second = "3:4";
  EXPECT_NE(shape_mismatch(s, w)->find("kernel differs"), std::string::npos);
  w = sample();
  w.identity[2].second = "sha256:11";
  EXPECT_NE(shape_mismatch(s, w)->find("rootfs"), std::string::npos);
  w = sample();
  w.devices.pop_back();
  EXPECT_NE(shape_mismatch(s, w)->find("virtio devices"), std::string::npos);
  w = sample();
  w.identity.pop_back();
  EXPECT_NE(shape_mismatch(s, w)->find("rootfs"), std::string::npos);
}

}  // namespace
}  // namespace sm::vmm
