#include "devices/virtio/rng.h"

#include <gtest/gtest.h>

#include <memory>

#include "devices/virtio/fake_driver.h"
#include "devices/virtio/fake_queue.h"
#include "devices/virtio/mmio.h"

namespace sm::virtio {
namespace {

using testing::FakeQueue;
using testing::GuestAllocator;

TEST(Rng, FillsWritableBuffersUpToTheCap) {
  const GuestMemory::RegionSpec r[] = {{0, 0x100000}};
  auto mem = GuestMemory::create(r);
  GuestAllocator alloc(mem, 0x1000);
  FakeQueue fq(mem, alloc, 16);
  auto irq = std::make_shared<testing::CountingInterrupt>();
  auto rng = std::make_shared<Rng>(4096, 16);
  MmioTransport t(mem, rng, irq);
  ASSERT_EQ(testing::mmio_activate(t, {&fq}), 0xfu);
  EXPECT_EQ(testing::reg_read(t, 0x008), kDeviceIdEntropy);

  auto a = fq.writable(1000), b = fq.writable(1000);
  fq.add_chain({a, b});
  auto big = fq.writable(10000);
  fq.add_chain({big});
  fq.add_chain({fq.readable(std::string("no writable part"))});
  t.queue_notify(0);
  auto used = fq.collect_used();
  ASSERT_EQ(used.size(), 3u);
  EXPECT_EQ(used[0].len, 2000u);
  EXPECT_EQ(used[1].len, 4096u);  // capped
  EXPECT_EQ(used[2].len, 0u);
  int zeros = 0;
  for (uint64_t i = 0; i < 1000; ++i) zeros += mem.read_obj<uint8_t>(b.addr + i) == 0;
  EXPECT_LT(zeros, 50);  // random, not left untouched
  EXPECT_EQ(mem.read_obj<uint64_t>(big.addr + 4096), 0u);  // nothing past the cap
  EXPECT_EQ(irq->count, 1);
}

}  // namespace
}  // namespace sm::virtio
