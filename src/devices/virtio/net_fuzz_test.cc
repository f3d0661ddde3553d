// Randomized hostile input for virtio-net: (1) arbitrary rings through the shared fuzz harness
// (fuzz_input.h), with the net features (MRG_RXBUF, CSUM, GUEST_CSUM) negotiated or not, rx
// frames waiting and a backend that keeps refusing; (2) well-formed chains whose virtio-net
// headers and lengths are random. The only acceptable outcomes are a frame sent, a frame
// dropped and counted, or DEVICE_NEEDS_RESET for a malformed chain; never a crash, an exception
// or a frame outside [kMinFrameLen, kMaxFrameLen] reaching the backend.
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <vector>

#include "devices/virtio/fake_net_backend.h"
#include "devices/virtio/fake_queue.h"
#include "devices/virtio/fuzz_input.h"
#include "devices/virtio/net.h"
#include "vmm/event_loop.h"

namespace sm::virtio {
namespace {

using testing::FakeNetBackend;

std::vector<uint8_t> random_rings(std::mt19937& rng) {
  // Like fuzz_test.cc's plausible_input, smaller: descriptors into RAM with edge lengths.
  std::vector<uint8_t> in(2 + 0x4100);  // rings, tables, and 256 bytes of buffer contents at 0x4000
  in[0] = static_cast<uint8_t>(rng() % 6);
  in[1] = static_cast<uint8_t>(rng());
  const uint16_t size = static_cast<uint16_t>(1u << (in[0] % 9));
  auto put = [&](size_t off, const void* p, size_t n) { std::memcpy(in.data() + 2 + off, p, n); };
  const uint64_t addrs[] = {0x4000, 0x8000, 0xfff0, 0x10000, fuzz::kDesc, 0x3000, 0x6000};
  const uint32_t lens[] = {0, 1, 11, 12, 13, 26, 60, 512, 0x1000, 0x8000, 0xffffffff};
  for (uint16_t i = 0; i < size; ++i) {
    Desc d{};
    d.addr = addrs[rng() % std::size(addrs)] + (rng() % 4 == 0 ? rng() % 64 : 0);
    d.len = lens[rng() % std::size(lens)];
    d.flags = static_cast<uint16_t>(rng() % 8);
    d.next = static_cast<uint16_t>(rng() % (size + 2));
    put(fuzz::kDesc + 16ull * i, &d, sizeof d);
  }
  for (int i = 0; i < 8; ++i) {
    Desc d{addrs[rng() % 4], lens[rng() % 8], static_cast<uint16_t>(rng() % 8), static_cast<uint16_t>(rng() % 10)};
    put(0x3000 + 16ull * i, &d, sizeof d);
  }
  // Random bytes where buffers point, so TX headers are hostile too.
  for (size_t off = 0x4000; off < 0x4000 + 256; ++off) in[2 + off] = static_cast<uint8_t>(rng());
  uint16_t avail_idx = static_cast<uint16_t>(rng() % (size + 3));
  put(fuzz::kAvail + 2, &avail_idx, 2);
  for (uint16_t i = 0; i < size; ++i) {
    uint16_t head = static_cast<uint16_t>(rng() % (size + 1));
    put(fuzz::kAvail + 4 + 2ull * i, &head, 2);
  }
  return in;
}

TEST(NetFuzz, SurvivesHostileRings) {
  const GuestMemory::RegionSpec r[] = {{0, fuzz::kRamSize}};
  auto mem = GuestMemory::create(r);
  EventLoop loop;
  auto backend = std::make_shared<FakeNetBackend>(/*tx_capacity=*/3);
  NetOptions o;
  auto net = Net::create(loop, backend, o);
  auto irq = std::make_shared<VirtioInterrupt>(nullptr);
  std::mt19937 rng(4242);
  const size_t rx_sizes[] = {14, 60, 1514, 9000, net::kMaxFrameLen};
  for (int i = 0; i < 3000; ++i) {
    auto in = random_rings(rng);
    auto l = fuzz::load(mem, in);
    const uint64_t net_features = rng() & (kNetFMrgRxbuf | kNetFCsum | kNetFGuestCsum);
    while (backend->rx_pending() < 4) backend->queue_rx(FakeNetBackend::Frame(rx_sizes[rng() % 5], std::byte{0x42}));
    ASSERT_NO_THROW({
      std::lock_guard lock(net->mutex());
      net->reset();
      std::vector<Queue> qs;
      for (int q = 0; q < 2; ++q) qs.push_back(fuzz::make_queue(l));
      net->activate(mem, net->device_features() & (kFeatureVersion1 | l.features | net_features), std::move(qs),
                    irq);
      net->notify_queue(1);
      net->notify_queue(0);
      net->notify_queue(1);
    }) << i;
    ASSERT_NO_THROW((void)loop.run_once(0)) << i;  // eventfds and continuations, device still active
    {
      std::lock_guard lock(net->mutex());
      net->reset();
    }
    for (const auto& f : backend->take_sent()) {
      ASSERT_GE(f.size(), net::kMinFrameLen);
      ASSERT_LE(f.size(), net::kMaxFrameLen);
    }
  }
  auto st = net->stats();
  std::printf("net hostile rings: %llu sent, %llu malformed, %llu delivered, %llu queue full\n",
              static_cast<unsigned long long>(st.tx_frames), static_cast<unsigned long long>(st.tx_malformed),
              static_cast<unsigned long long>(st.rx_frames), static_cast<unsigned long long>(st.tx_queue_full));
  // The generator must reach the interesting paths, or the test proves little.
  EXPECT_GT(st.tx_frames, 30u);
  EXPECT_GT(st.tx_malformed, 50u);
  EXPECT_GT(st.rx_frames, 10u);  // most frames are too big for 64 KiB of hostile buffers
}

TEST(NetFuzz, RandomHeadersOnWellFormedChains) {
  const GuestMemory::RegionSpec r[] = {{0, 0x1000000}};
  auto mem = GuestMemory::create(r);
  EventLoop loop;
  auto backend = std::make_shared<FakeNetBackend>();
  NetOptions o;
  o.queue_size = 128;  // 64 chains of up to two descriptors
  auto net = Net::create(loop, backend, o);
  auto irq = std::make_shared<VirtioInterrupt>(nullptr);
  std::mt19937 rng(99);
  uint64_t chains = 0;
  for (int round = 0; round < 40; ++round) {
    testing::GuestAllocator alloc(mem, 0x1000);
    testing::FakeQueue rxq(mem, alloc, 128), txq(mem, alloc, 128);
    {
      std::lock_guard lock(net->mutex());
      net->reset();
      std::vector<Queue> qs;
      qs.push_back(rxq.make_queue(net->device_features()));
      qs.push_back(txq.make_queue(net->device_features()));
      net->activate(mem, net->device_features(), std::move(qs), irq);
    }
    for (int i = 0; i < 64; ++i) {
      // A header of random bytes, often with plausible flags / gso / csum fields.
      std::vector<std::byte> hdr(kNetHdrSize);
      for (auto& b : hdr) b = std::byte(rng() & 0xff);
      if (rng() % 2) hdr[1] = std::byte{0};                      // gso NONE
      if (rng() % 2) hdr[0] = std::byte{kNetHdrFNeedsCsum};
      const size_t len = rng() % 3 == 0 ? rng() % 40 : rng() % 2000;
      std::vector<std::byte> frame(len);
      for (auto& b : frame) b = std::byte(rng() & 0xff);
      std::vector<testing::Buf> bufs;
      const size_t hcut = rng() % (kNetHdrSize + 1);
      bufs.push_back(txq.readable(std::span(hdr).first(hcut)));
      if (hcut < kNetHdrSize || !frame.empty()) {
        std::vector<std::byte> rest(hdr.begin() + static_cast<ptrdiff_t>(hcut), hdr.end());
        rest.insert(rest.end(), frame.begin(), frame.end());
        if (rng() % 4 == 0) rest.resize(rng() % (rest.size() + 1));  // truncated
        if (!rest.empty()) bufs.push_back(txq.readable(rest));
      }
      txq.add_chain(bufs);
      ++chains;
    }
    {
      std::lock_guard lock(net->mutex());
      net->notify_queue(1);
    }
    EXPECT_EQ(txq.collect_used().size(), 64u) << "every chain goes back, round " << round;
    EXPECT_FALSE(net->needs_reset());
    for (const auto& f : backend->take_sent()) {
      ASSERT_GE(f.size(), net::kMinFrameLen);
      ASSERT_LE(f.size(), net::kMaxFrameLen);
    }
  }
  auto st = net->stats();
  EXPECT_EQ(st.tx_frames + st.tx_malformed, chains);
  EXPECT_GT(st.tx_frames, 100u);
  EXPECT_GT(st.tx_malformed, 100u);
  std::lock_guard lock(net->mutex());
  net->reset();
}

}  // namespace
}  // namespace sm::virtio
