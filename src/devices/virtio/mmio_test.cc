#include "devices/virtio/mmio.h"

#include <gtest/gtest.h>

#include <array>
#include <memory>
#include <thread>

#include "devices/virtio/fake_driver.h"
#include "devices/virtio/fake_queue.h"
#include "devices/virtio/rng.h"
#include "snapshot/codec.h"

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

// ---------------------------------------------------------------- snapshots

std::vector<std::byte> encode(const MmioTransportState& s) {
  snapshot::Encoder e;
  save(e, s);
  return e.take();
}

MmioTransportState decode(std::span<const std::byte> data) {
  snapshot::Decoder d(data, "virtio-mmio slot 0");
  MmioTransportState s = load_mmio_transport_state(d);
  d.finish();
  return s;
}

// Every register the driver can read, for comparing two transports.
std::vector<uint32_t> visible_registers(MmioTransport& t) {
  std::vector<uint32_t> out;
  for (uint64_t off : {0x008, 0x010, 0x034, 0x038, 0x044, 0x060, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4})
    out.push_back(reg_read(t, off));
  return out;
}

TEST_F(MmioTest, SnapshotOfALiveDeviceResumesWithoutTheDriver) {
  ASSERT_EQ(mmio_activate(t, {&fq}), kLive);
  fq.add_chain({fq.writable(16)});
  reg_write(t, 0x50, 0);
  ASSERT_EQ(fq.collect_used().size(), 1u);
  ASSERT_EQ(reg_read(t, 0x060), kInterruptUsedBuffer);  // not acked: must survive
  reg_write(t, 0x014, 1);                               // DeviceFeaturesSel left at 1
  uint16_t pending = fq.add_chain({fq.writable(8)});    // published, not yet notified

  const MmioTransportState saved = t.save_state();
  EXPECT_EQ(saved.device_id, kDeviceIdEntropy);
  EXPECT_TRUE(saved.device.active);
  ASSERT_EQ(saved.device.queues.size(), 1u);
  EXPECT_EQ(saved.device.queues[0].next_avail, 1);
  EXPECT_EQ(saved.queues[0].next_avail, 0);  // the transport's copy holds configuration only
  const MmioTransportState decoded = decode(encode(saved));
  EXPECT_EQ(decoded, saved);

  auto rng2 = std::make_shared<Rng>(64, 16);
  auto irq2 = std::make_shared<CountingInterrupt>();
  MmioTransport t2(mem, rng2, irq2, decoded);
  EXPECT_TRUE(rng2->active());
  EXPECT_EQ(rng2->acked_features(), rng->acked_features());
  EXPECT_EQ(irq2->count, 0);
  EXPECT_EQ(t2.save_state(), saved);
  EXPECT_EQ(visible_registers(t2), visible_registers(t));
  EXPECT_EQ(reg_read(t2, 0x010), 1u);  // the selected feature word

  fq.set_used_event(1);  // EVENT_IDX: the driver has seen used idx 1 and wants to hear of the next
  reg_write(t2, 0x50, 0);
  auto used = fq.collect_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, pending);
  EXPECT_EQ(used[0].len, 8u);
  EXPECT_EQ(fq.used_idx(), 2);  // continued the used ring, not restarted it
  EXPECT_EQ(irq2->count, 1);
  reg_write(t2, 0x064, kInterruptUsedBuffer);
  EXPECT_EQ(reg_read(t2, 0x060), 0u);
  // And the driver can still reset and re-initialize the restored device.
  FakeQueue fresh(mem, alloc, 8);
  ASSERT_EQ(mmio_activate(t2, {&fresh}), kLive);
  fresh.add_chain({fresh.writable(4)});
  t2.queue_notify(0);
  EXPECT_EQ(fresh.collect_used().size(), 1u);
}

TEST_F(MmioTest, SnapshotMidHandshakeLetsTheDriverFinish) {
  reg_write(t, 0x70, kAck);
  reg_write(t, 0x70, kDrv);
  reg_write(t, 0x24, 1);
  reg_write(t, 0x20, 1);
  reg_write(t, 0x70, kFeat);
  reg_write(t, 0x30, 0);
  reg_write(t, 0x38, fq.size());
  reg_write(t, 0x80, static_cast<uint32_t>(fq.desc_addr()));
  const MmioTransportState saved = t.save_state();
  EXPECT_FALSE(saved.device.active);

  auto rng2 = std::make_shared<Rng>(64, 16);
  MmioTransport t2(mem, rng2, irq, decode(encode(saved)));
  EXPECT_FALSE(rng2->active());
  EXPECT_EQ(reg_read(t2, 0x70), kFeat);
  EXPECT_EQ(reg_read(t2, 0x80), static_cast<uint32_t>(fq.desc_addr()));
  reg_write(t2, 0x90, static_cast<uint32_t>(fq.avail_addr()));
  reg_write(t2, 0xa0, static_cast<uint32_t>(fq.used_addr()));
  reg_write(t2, 0x44, 1);
  reg_write(t2, 0x70, kLive);
  EXPECT_EQ(reg_read(t2, 0x70), kLive);
  fq.add_chain({fq.writable(4)});
  reg_write(t2, 0x50, 0);
  EXPECT_EQ(fq.collect_used().size(), 1u);
}

TEST_F(MmioTest, SnapshotOfABrokenDeviceStaysBroken) {
  ASSERT_EQ(mmio_activate(t, {&fq}), kLive);
  uint16_t head = fq.write_chain({fq.writable(4)});
  fq.set_desc(head, Desc{0x2000, 4, static_cast<uint16_t>(kDescFWrite | kDescFNext), head});  // loop
  fq.publish(head);
  reg_write(t, 0x50, 0);
  ASSERT_TRUE(rng->needs_reset());
  const auto saved = t.save_state();
  EXPECT_TRUE(saved.device.needs_reset);

  auto rng2 = std::make_shared<Rng>(64, 16);
  MmioTransport t2(mem, rng2, irq, decode(encode(saved)));
  EXPECT_TRUE(rng2->needs_reset());
  EXPECT_EQ(reg_read(t2, 0x70), kLive | kStatusDeviceNeedsReset);
  EXPECT_TRUE(reg_read(t2, 0x60) & kInterruptConfigChange);
  fq.add_chain({fq.writable(4)});
  reg_write(t2, 0x50, 0);
  EXPECT_TRUE(fq.collect_used().empty());  // ignored until the driver resets
  reg_write(t2, 0x70, 0);
  EXPECT_FALSE(rng2->needs_reset());
}

TEST_F(MmioTest, SnapshotRefusesAnotherDevice) {
  ASSERT_EQ(mmio_activate(t, {&fq}), kLive);
  auto saved = t.save_state();
  saved.device_id = kDeviceIdBlock;
  try {
    MmioTransport t2(mem, std::make_shared<Rng>(64, 16), irq, saved);
    FAIL() << "restored a block device's state into an entropy device";
  } catch (const snapshot::SnapshotError& e) {
    EXPECT_NE(std::string(e.what()).find("2 (block)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("4 (entropy)"), std::string::npos) << e.what();
  }
  // Same id, other configuration: a different queue size, or more queues.
  saved.device_id = kDeviceIdEntropy;
  EXPECT_THROW(MmioTransport(mem, std::make_shared<Rng>(64, 32), irq, saved), snapshot::SnapshotError);
  auto more = saved;
  more.queues.push_back(more.queues[0]);
  more.device.queues.push_back(more.device.queues[0]);
  EXPECT_THROW(MmioTransport(mem, std::make_shared<Rng>(64, 16), irq, more), snapshot::SnapshotError);
  // A device already in use cannot be restored into.
  EXPECT_THROW(MmioTransport(mem, rng, irq, saved), Error);
  // Features the device does not offer.
  auto features = saved;
  features.driver_features |= 1ull << 40;
  features.device.features = features.driver_features;
  EXPECT_THROW(MmioTransport(mem, std::make_shared<Rng>(64, 16), irq, features), snapshot::SnapshotError);
  // A live queue whose rings are not in guest RAM.
  auto outside = saved;
  outside.device.queues[0].desc_table = 0x10000000;
  EXPECT_THROW(MmioTransport(mem, std::make_shared<Rng>(64, 16), irq, outside), snapshot::SnapshotError);
  auto zero = saved;
  zero.device.queues[0].size = 0;
  EXPECT_THROW(MmioTransport(mem, std::make_shared<Rng>(64, 16), irq, zero), snapshot::SnapshotError);
}

TEST_F(MmioTest, SnapshotEncodingRefusesTruncatedAndInconsistentStates) {
  ASSERT_EQ(mmio_activate(t, {&fq}), kLive);
  const auto saved = t.save_state();
  const auto good = encode(saved);
  for (size_t n = 0; n < good.size(); ++n)
    EXPECT_THROW((void)decode(std::span(good).first(n)), snapshot::SnapshotError) << n;
  auto longer = good;
  longer.push_back(std::byte{0});
  EXPECT_THROW((void)decode(longer), snapshot::SnapshotError);

  auto expect_refused = [&](auto mutate, const char* what) {
    MmioTransportState s = saved;
    mutate(s);
    EXPECT_THROW((void)decode(encode(s)), snapshot::SnapshotError) << what;
  };
  expect_refused([](auto& s) { s.status = kStatusAcknowledge | kStatusFeaturesOk; }, "a skipped step");
  expect_refused([](auto& s) { s.status |= kStatusDeviceNeedsReset; }, "a derived bit");
  expect_refused([](auto& s) { s.interrupt_status = 4; }, "unknown interrupt bits");
  expect_refused([](auto& s) { s.device.active = false; }, "DRIVER_OK without a live device");
  expect_refused([](auto& s) { s.status = kFeat; }, "a live device without DRIVER_OK");
  expect_refused([](auto& s) { s.device.features = 0; }, "device features differ from the driver's");
  expect_refused([](auto& s) { s.device.queues.clear(); }, "device queues missing");
  expect_refused([](auto& s) { s.queues[0].max_size = 12; }, "a maximum size not a power of two");
  expect_refused(
      [](auto& s) {
        s.config_broken = true;
        s.device = {};
        s.status = kFeat;
      },
      "a refused DRIVER_OK without DRIVER_OK");

  // A queue count beyond the cap fails before anything is allocated.
  auto many = good;
  constexpr size_t kQueueCountAt = 4 * 4 + 8 + 4 + 4 + 1 + 4;  // after interrupt_status
  uint32_t n = 1000000;
  std::memcpy(many.data() + kQueueCountAt, &n, 4);
  EXPECT_THROW((void)decode(many), snapshot::SnapshotError);
}

}  // namespace
}  // namespace sm::virtio
