// Shared by the randomized unit test (fuzz_test.cc) and the libFuzzer target (fuzz/): turns an
// arbitrary byte string into guest RAM holding rings and descriptors, then lets a queue and the
// devices loose on it. The only acceptable outcomes are a chain, an empty queue, or GuestError
// / DEVICE_NEEDS_RESET; a crash, a sanitizer report or a segment outside RAM is a bug.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <vector>

#include "devices/virtio/device.h"
#include "devices/virtio/queue.h"
#include "vmm/guest_memory.h"

namespace sm::virtio::fuzz {

inline constexpr uint64_t kRamSize = 0x10000;  // 64 KiB at gpa 0
// The avail ring first and the descriptor table right after it, so short fuzz inputs reach
// both; the used ring (device-written) and buffers lie beyond.
inline constexpr uint64_t kAvail = 0x0000, kDesc = 0x400, kUsed = 0x2000;

struct Layout {
  uint16_t size;
  uint64_t features;
};

// Copies input into RAM (after a 2-byte prefix that picks the queue size and features) and
// returns the queue configuration it describes.
inline Layout load(GuestMemory& mem, std::span<const uint8_t> in) {
  Layout l{16, 0};
  if (in.size() >= 2) {
    l.size = static_cast<uint16_t>(1u << (in[0] % 9));  // 1 .. 256
    if (in[1] & 1) l.features |= kFeatureIndirectDesc;
    if (in[1] & 2) l.features |= kFeatureEventIdx;
    in = in.subspan(2);
  }
  auto ram = mem.span(0, kRamSize);
  std::memset(ram.data(), 0, ram.size());
  std::memcpy(ram.data(), in.data(), std::min<size_t>(in.size(), ram.size()));
  return l;
}

inline Queue make_queue(const Layout& l) {
  Queue q(256);
  q.set_size(l.size);
  q.set_desc_table(kDesc);
  q.set_avail_ring(kAvail);
  q.set_used_ring(kUsed);
  q.set_features(l.features);
  q.set_ready(true);
  return q;
}

struct WalkStats {
  int chains = 0;
  int errors = 0;
};

// Pops everything the rings offer; checks every segment lies inside RAM.
inline WalkStats walk_queue(GuestMemory& mem, const Layout& l) {
  WalkStats st;
  Queue q = make_queue(l);
  auto ram = mem.span(0, kRamSize);
  for (int i = 0; i < 512; ++i) {
    std::optional<DescriptorChain> c;
    try {
      c = q.pop(mem);
    } catch (const GuestError&) {
      ++st.errors;  // a device stops here too (DEVICE_NEEDS_RESET)
      return st;
    }
    if (!c) return st;
    ++st.chains;
    for (auto segs : {c->readable(), c->writable()})
      for (auto s : segs)
        if (s.data() < ram.data() || s.data() + s.size() > ram.data() + ram.size())
          throw std::logic_error("segment outside guest RAM");
    std::vector<std::byte> buf(c->readable_len());
    (void)c->read(buf);
    std::vector<std::byte> out(std::min<uint64_t>(c->writable_len(), 4096), std::byte{0x5a});
    (void)c->write(out);
    q.push_used(mem, c->head(), static_cast<uint32_t>(c->bytes_written()));
    (void)q.needs_notification(mem);
  }
  return st;
}

// Activates dev over the layout (every queue on the same rings) and notifies each queue.
inline void drive_device(VirtioDevice& dev, GuestMemory& mem, const Layout& l,
                         std::shared_ptr<VirtioInterrupt> irq) {
  std::lock_guard lock(dev.mutex());
  dev.reset();
  std::vector<Queue> qs;
  for (size_t i = 0; i < dev.queue_max_sizes().size(); ++i) qs.push_back(make_queue(l));
  dev.activate(mem, dev.device_features() & (kFeatureVersion1 | l.features), std::move(qs), std::move(irq));
  for (uint16_t i = 0; i < dev.queue_max_sizes().size(); ++i) dev.notify_queue(i);
  dev.reset();
}

}  // namespace sm::virtio::fuzz
