#include "devices/virtio/mmio.h"

#include <gtest/gtest.h>

#include <array>
#include <memory>
#include <thread>

#include "devices/virtio/fake_driver.h"
#include "devices/virtio/fake_queue.h"
#include "devices/virtio/rng.h"

namespace sm::virtio {
namespace {

using testing::Buf;
using testing::CountingInterrupt;
using testing::FakeQueue;
using testing::GuestAllocator;
using testing::mmio_activate;
using testing::reg_read;
using testing::reg_write;

constexpr uint32_t kAck = kStatusAcknowledge;
constexpr uint32_t kDrv = kStatusAcknowledge | kStatusDriver;
constexpr uint32_t kFeat = kDrv | kStatusFeaturesOk;
constexpr uint32_t kLive = kFeat | kStatusDriverOk;

struct MmioTest : ::testing::Test {
  GuestMemory mem = [] {
    const GuestMemory::RegionSpec r[] = {{0, 0x100000}};
    return GuestMemory::create(r);
  }();
  GuestAllocator alloc{mem, 0x1000};
  FakeQueue fq{mem, alloc, 16};
  std::shared_ptr<CountingInterrupt> irq = std::make_shared<CountingInterrupt>();
  std::shared_ptr<Rng> rng = std::make_shared<Rng>(64, 16);
  MmioTransport t{mem, rng, irq};
};

TEST_F(MmioTest, IdentityRegisters) {
  EXPECT_EQ(reg_read(t, 0x000), 0x74726976u);
  EXPECT_EQ(reg_read(t, 0x004), 2u);
  EXPECT_EQ(reg_read(t, 0x008), kDeviceIdEntropy);
  EXPECT_EQ(reg_read(t, 0x00c), MmioTransport::kVendorId);
  reg_write(t, 0x014, 1);
  EXPECT_EQ(reg_read(t, 0x010), 1u);  // VERSION_1 is bit 32
  reg_write(t, 0x014, 2);
  EXPECT_EQ(reg_read(t, 0x010), 0u);
  reg_write(t, 0x030, 0);
  EXPECT_EQ(reg_read(t, 0x034), 16u);
  reg_write(t, 0x030, 1);
  EXPECT_EQ(reg_read(t, 0x034), 0u);  // no such queue
  EXPECT_EQ(reg_read(t, 0x0b0), 0xffffffffu);  // no shared memory regions
  EXPECT_EQ(reg_read(t, 0x0fc), 0u);
  EXPECT_EQ(reg_read(t, 0x070), 0u);
}

TEST_F(MmioTest, HandshakeActivatesAndNotifyProcessesTheQueue) {
  EXPECT_EQ(mmio_activate(t, {&fq}), kLive);
  EXPECT_TRUE(rng->active());
  EXPECT_TRUE(rng->acked_features() & kFeatureVersion1);
  fq.add_chain({fq.writable(32)});
  reg_write(t, MmioTransport::kQueueNotifyOffset, 0);
  auto used = fq.collect_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].len, 32u);
  EXPECT_EQ(irq->count, 1);
  EXPECT_EQ(reg_read(t, 0x060), kInterruptUsedBuffer);
  reg_write(t, 0x064, kInterruptUsedBuffer);
  EXPECT_EQ(reg_read(t, 0x060), 0u);

  fq.add_chain({fq.writable(8)});
  t.queue_notify(0);  // the ioeventfd path
  EXPECT_EQ(fq.collect_used().size(), 1u);
  t.queue_notify(7);  // no such queue: ignored
  EXPECT_EQ(t.status(), kLive);
}

TEST_F(MmioTest, RefusesFeaturesTheDeviceDidNotOffer) {
  reg_write(t, 0x70, kAck);
  reg_write(t, 0x70, kDrv);
  reg_write(t, 0x24, 0);
  reg_write(t, 0x20, 1u << 5);  // not offered
  reg_write(t, 0x24, 1);
  reg_write(t, 0x20, 1);        // VERSION_1
  reg_write(t, 0x70, kFeat);
  EXPECT_EQ(reg_read(t, 0x70), kDrv);  // FEATURES_OK stays clear: refused
}

TEST_F(MmioTest, RefusesLegacyDrivers) {
  reg_write(t, 0x70, kAck);
  reg_write(t, 0x70, kDrv);
  reg_write(t, 0x70, kFeat);  // no VERSION_1 negotiated
  EXPECT_EQ(reg_read(t, 0x70), kDrv);
}

TEST_F(MmioTest, StatusMovesOneStepAtATime) {
  reg_write(t, 0x70, kLive);  // straight to DRIVER_OK: ignored
  EXPECT_EQ(reg_read(t, 0x70), 0u);
  reg_write(t, 0x70, kDrv);  // skips ACKNOWLEDGE
  EXPECT_EQ(reg_read(t, 0x70), 0u);
  reg_write(t, 0x70, kAck);
  reg_write(t, 0x70, kAck | kStatusFeaturesOk);  // skips DRIVER
  EXPECT_EQ(reg_read(t, 0x70), kAck);
  reg_write(t, 0x70, kDrv);
  reg_write(t, 0x70, kStatusDriver);  // clears ACKNOWLEDGE
  EXPECT_EQ(reg_read(t, 0x70), kDrv);
  reg_write(t, 0x70, kDrv | kStatusFailed);
  EXPECT_EQ(reg_read(t, 0x70), kDrv | kStatusFailed);
  reg_write(t, 0x70, 0);
  EXPECT_EQ(reg_read(t, 0x70), 0u);
}

TEST_F(MmioTest, FeaturesAndQueuesAreWritableOnlyInTheirWindow) {
  // DriverFeatures before DRIVER: ignored, so FEATURES_OK is refused later.
  reg_write(t, 0x24, 1);
  reg_write(t, 0x20, 1);
  reg_write(t, 0x70, kAck);
  reg_write(t, 0x70, kDrv);
  reg_write(t, 0x70, kFeat);
  EXPECT_EQ(reg_read(t, 0x70), kDrv);
  // Queue registers before FEATURES_OK: ignored.
  reg_write(t, 0x30, 0);
  reg_write(t, 0x38, 8);
  EXPECT_EQ(reg_read(t, 0x38), 16u);
  EXPECT_EQ(mmio_activate(t, {&fq}), kLive);
  // After DRIVER_OK: ignored too.
  reg_write(t, 0x38, 4);
  reg_write(t, 0x80, 0x5000);
  EXPECT_EQ(reg_read(t, 0x38), 16u);
  EXPECT_EQ(reg_read(t, 0x80), static_cast<uint32_t>(fq.desc_addr()));
  // DriverFeatures after FEATURES_OK: ignored.
  reg_write(t, 0x24, 0);
  reg_write(t, 0x20, 0xffffffff);
  EXPECT_EQ(rng->acked_features() & 0xffffffff, rng->device_features() & 0xffffffff);
}

TEST_F(MmioTest, MisconfiguredQueueAtDriverOkNeedsReset) {
  reg_write(t, 0x70, 0);
  reg_write(t, 0x70, kAck);
  reg_write(t, 0x70, kDrv);
  reg_write(t, 0x24, 1);
  reg_write(t, 0x20, 1);
  reg_write(t, 0x70, kFeat);
  reg_write(t, 0x30, 0);
  reg_write(t, 0x38, 16);
  reg_write(t, 0x80, 0x10000000);  // outside guest RAM
  reg_write(t, 0x90, static_cast<uint32_t>(fq.avail_addr()));
  reg_write(t, 0xa0, static_cast<uint32_t>(fq.used_addr()));
  reg_write(t, 0x44, 1);
  reg_write(t, 0x70, kLive);
  EXPECT_EQ(reg_read(t, 0x70), kLive | kStatusDeviceNeedsReset);
  EXPECT_FALSE(rng->active());
  EXPECT_EQ(reg_read(t, 0x60), kInterruptConfigChange);
  reg_write(t, 0x50, 0);  // ignored, nothing crashes
  reg_write(t, 0x70, 0);
  EXPECT_EQ(reg_read(t, 0x70), 0u);
  EXPECT_EQ(reg_read(t, 0x60), 0u);
  EXPECT_EQ(mmio_activate(t, {&fq}), kLive);
}

TEST_F(MmioTest, QueueSizeAboveMaximumIsRefusedAtActivation) {
  reg_write(t, 0x70, kAck);
  reg_write(t, 0x70, kDrv);
  reg_write(t, 0x24, 1);
  reg_write(t, 0x20, 1);
  reg_write(t, 0x70, kFeat);
  reg_write(t, 0x38, 0x10010);  // would truncate to 16 in a u16
  reg_write(t, 0x80, static_cast<uint32_t>(fq.desc_addr()));
  reg_write(t, 0x90, static_cast<uint32_t>(fq.avail_addr()));
  reg_write(t, 0xa0, static_cast<uint32_t>(fq.used_addr()));
  reg_write(t, 0x44, 1);
  reg_write(t, 0x70, kLive);
  EXPECT_TRUE(reg_read(t, 0x70) & kStatusDeviceNeedsReset);
}

TEST_F(MmioTest, MalformedChainSetsNeedsResetAndResetRecovers) {
  ASSERT_EQ(mmio_activate(t, {&fq}), kLive);
  uint16_t head = fq.write_chain({fq.writable(4)});
  fq.set_desc(head, Desc{0x2000, 4, static_cast<uint16_t>(kDescFWrite | kDescFNext), head});  // loop
  fq.publish(head);
  reg_write(t, 0x50, 0);
  EXPECT_EQ(reg_read(t, 0x70), kLive | kStatusDeviceNeedsReset);
  EXPECT_TRUE(reg_read(t, 0x60) & kInterruptConfigChange);
  EXPECT_TRUE(rng->needs_reset());
  // Further notifications are ignored until the driver resets.
  fq.add_chain({fq.writable(4)});
  reg_write(t, 0x50, 0);
  EXPECT_TRUE(fq.collect_used().empty());
  // The driver echoing NEEDS_RESET back while adding a bit is not refused for it.
  reg_write(t, 0x70, kLive | kStatusDeviceNeedsReset | kStatusFailed);
  EXPECT_TRUE(reg_read(t, 0x70) & kStatusFailed);

  reg_write(t, 0x70, 0);
  EXPECT_FALSE(rng->needs_reset());
  EXPECT_FALSE(rng->active());
  FakeQueue fresh(mem, alloc, 16);
  ASSERT_EQ(mmio_activate(t, {&fresh}), kLive);
  fresh.add_chain({fresh.writable(4)});
  reg_write(t, 0x50, 0);
  EXPECT_EQ(fresh.collect_used().size(), 1u);
}

TEST_F(MmioTest, IgnoresNarrowAndMisalignedRegisterAccess) {
  std::array<std::byte, 2> two{};
  t.read(0x000, two);
  EXPECT_EQ(two[0], std::byte{0});
  std::array<std::byte, 8> eight{};
  t.read(0x000, eight);
  EXPECT_EQ(eight[0], std::byte{0});
  std::array<std::byte, 4> four{};
  t.read(0x002, four);
  EXPECT_EQ(four[0], std::byte{0});
  uint8_t one = kStatusAcknowledge;
  t.write(0x070, std::as_bytes(std::span(&one, 1)));
  EXPECT_EQ(reg_read(t, 0x070), 0u);
}

TEST_F(MmioTest, RegistersSurviveConcurrentVcpus) {
  ASSERT_EQ(mmio_activate(t, {&fq}), kLive);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      for (int j = 0; j < 2000; ++j) {
        (void)reg_read(t, 0x70);
        (void)reg_read(t, 0x60);
        reg_write(t, 0x64, 1);
        reg_write(t, 0x50, 0);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(reg_read(t, 0x70), kLive);
}

}  // namespace
}  // namespace sm::virtio
