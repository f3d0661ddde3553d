// Randomized inputs through the same harness as the libFuzzer target (fuzz/virtio_fuzz.cc), so
// every CI run throws a few thousand hostile ring layouts at the queue and the devices.
#include "devices/virtio/fuzz_input.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <cstdio>
#include <random>

#include "devices/virtio/blk.h"
#include "devices/virtio/rng.h"
#include "devices/virtio/vsock.h"
#include "vmm/event_loop.h"

namespace sm::virtio {
namespace {

GuestMemory fuzz_ram() {
  const GuestMemory::RegionSpec r[] = {{0, fuzz::kRamSize}};
  return GuestMemory::create(r);
}

// Mostly-plausible rings: small descriptor indices, addresses inside or just outside RAM,
// lengths around the interesting edges, so the walk gets past the first check often.
std::vector<uint8_t> plausible_input(std::mt19937& rng) {
  std::vector<uint8_t> in(2 + 0x4000);
  in[0] = static_cast<uint8_t>(rng() % 6);
  in[1] = static_cast<uint8_t>(rng());
  uint16_t size = static_cast<uint16_t>(1u << (in[0] % 9));
  auto put = [&](size_t off, const void* p, size_t n) { std::memcpy(in.data() + 2 + off, p, n); };
  const uint64_t addrs[] = {0x4000, 0x8000, 0xfff0, 0x10000, 0xfffffffffffffff0ull, fuzz::kDesc, 0x3000};
  const uint32_t lens[] = {0, 1, 16, 44, 512, 0x1000, 0x10000, 0xffffffff, 32, 48};
  for (uint16_t i = 0; i < size; ++i) {
    Desc d{};
    d.addr = addrs[rng() % std::size(addrs)] + (rng() % 4 == 0 ? rng() % 64 : 0);
    d.len = lens[rng() % std::size(lens)];
    d.flags = static_cast<uint16_t>(rng() % 8);
    d.next = static_cast<uint16_t>(rng() % (size + 2));
    put(fuzz::kDesc + 16ull * i, &d, sizeof d);
  }
  // An indirect table at 0x3000 for descriptors that point there.
  for (int i = 0; i < 8; ++i) {
    Desc d{addrs[rng() % 4], lens[rng() % 6], static_cast<uint16_t>(rng() % 8), static_cast<uint16_t>(rng() % 10)};
    put(0x3000 + 16ull * i, &d, sizeof d);
  }
  uint16_t avail_idx = static_cast<uint16_t>(rng() % (size + 3));
  put(fuzz::kAvail + 2, &avail_idx, 2);
  for (uint16_t i = 0; i < size; ++i) {
    uint16_t head = static_cast<uint16_t>(rng() % (size + 1));
    put(fuzz::kAvail + 4 + 2ull * i, &head, 2);
  }
  return in;
}

TEST(VirtioFuzz, QueueWalkSurvivesHostileRings) {
  auto mem = fuzz_ram();
  std::mt19937 rng(12345);
  fuzz::WalkStats total;
  for (int i = 0; i < 10000; ++i) {
    auto in = plausible_input(rng);
    auto l = fuzz::load(mem, in);
    fuzz::WalkStats st;
    ASSERT_NO_THROW(st = fuzz::walk_queue(mem, l)) << "iteration " << i;
    total.chains += st.chains;
    total.errors += st.errors;
  }
  // The generator must reach both outcomes often, or the test proves little.
  EXPECT_GT(total.chains, 500);
  EXPECT_GT(total.errors, 5000);
  std::printf("hostile rings: %d chains accepted, %d rejected\n", total.chains, total.errors);
  // And plain noise.
  for (int i = 0; i < 500; ++i) {
    std::vector<uint8_t> in(rng() % 0x3100);
    for (auto& b : in) b = static_cast<uint8_t>(rng());
    auto l = fuzz::load(mem, in);
    ASSERT_NO_THROW(fuzz::walk_queue(mem, l)) << "noise " << i;
  }
}

TEST(VirtioFuzz, DevicesSurviveHostileRings) {
  auto mem = fuzz_ram();
  char dir[] = "/tmp/sm-fuzz-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string disk = std::string(dir) + "/disk";
  {
    std::vector<char> zeros(8192);
    FILE* f = std::fopen(disk.c_str(), "w");
    std::fwrite(zeros.data(), 1, zeros.size(), f);
    std::fclose(f);
  }
  EventLoop loop;
  Blk blk(disk, {.queue_size = 256, .seg_max = 254});
  Rng rng_dev(4096);
  auto vsock = Vsock::create(loop, 3, std::string(dir) + "/v.sock");
  auto irq = std::make_shared<VirtioInterrupt>(nullptr);
  std::mt19937 rng(777);
  for (int i = 0; i < 3000; ++i) {
    auto in = plausible_input(rng);
    auto l = fuzz::load(mem, in);
    ASSERT_NO_THROW(fuzz::drive_device(blk, mem, l, irq)) << i;
    ASSERT_NO_THROW(fuzz::drive_device(rng_dev, mem, l, irq)) << i;
    ASSERT_NO_THROW(fuzz::drive_device(*vsock, mem, l, irq)) << i;
  }
  vsock.reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sm::virtio
