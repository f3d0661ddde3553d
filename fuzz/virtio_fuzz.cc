// libFuzzer target: arbitrary bytes become virtqueue rings in guest RAM (see
// src/devices/virtio/fuzz_input.h), walked by a Queue and served by blk, rng, vsock and net.
// Build and run (clang only):
//   CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DSM_FUZZ=ON && cmake --build build-fuzz --target virtio_fuzz
//   build-fuzz/fuzz/virtio_fuzz -max_total_time=60
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "devices/virtio/blk.h"
#include "devices/virtio/fake_net_backend.h"
#include "devices/virtio/fuzz_input.h"
#include "devices/virtio/net.h"
#include "devices/virtio/rng.h"
#include "devices/virtio/vsock.h"
#include "vmm/event_loop.h"

namespace {

struct World {
  sm::GuestMemory mem = [] {
    const sm::GuestMemory::RegionSpec r[] = {{0, sm::virtio::fuzz::kRamSize}};
    return sm::GuestMemory::create(r);
  }();
  std::string dir = [] {
    char d[] = "/dev/shm/sm-virtio-fuzz-XXXXXX";  // tmpfs: FLUSH requests cost nothing
    if (!::mkdtemp(d)) std::abort();
    return std::string(d);
  }();
  std::string disk = [this] {
    std::string p = dir + "/disk";
    FILE* f = std::fopen(p.c_str(), "w");
    static const char zeros[8192] = {};
    std::fwrite(zeros, 1, sizeof zeros, f);
    std::fclose(f);
    return p;
  }();
  sm::EventLoop loop;
  sm::virtio::Blk blk{disk};
  sm::virtio::Rng rng{4096};
  std::shared_ptr<sm::virtio::Vsock> vsock = sm::virtio::Vsock::create(loop, 3, dir + "/v.sock");
  std::shared_ptr<sm::virtio::testing::FakeNetBackend> net_backend =
      std::make_shared<sm::virtio::testing::FakeNetBackend>(64);
  std::shared_ptr<sm::virtio::Net> net = sm::virtio::Net::create(loop, net_backend);
  std::shared_ptr<sm::virtio::VirtioInterrupt> irq = std::make_shared<sm::virtio::VirtioInterrupt>(nullptr);
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* w = [] {
    spdlog::set_level(spdlog::level::err);  // guest errors are the expected outcome here
    auto* world = new World();
    // The disk and the socket stay open; their names can go now (libFuzzer may _Exit).
    std::filesystem::remove_all(world->dir);
    return world;
  }();
  namespace fz = sm::virtio::fuzz;
  std::span<const uint8_t> in(data, size);
  auto l = fz::load(w->mem, in);
  (void)fz::walk_queue(w->mem, l);
  fz::drive_device(w->blk, w->mem, l, w->irq);
  fz::drive_device(w->rng, w->mem, l, w->irq);
  fz::drive_device(*w->vsock, w->mem, l, w->irq);
  // Frames waiting for the guest, of sizes around the edges, so the receive path runs too.
  while (w->net_backend->rx_pending() < 3)
    w->net_backend->queue_rx(sm::virtio::testing::FakeNetBackend::Frame(size % 2 ? 60 : 1514, std::byte{0x42}));
  fz::drive_device(*w->net, w->mem, l, w->irq);
  (void)w->net_backend->take_sent();
  (void)w->loop.run_once(0);  // continuations the net device posted
  return 0;
}
