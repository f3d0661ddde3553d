// Test support: the driver side of split virtqueues laid out in a real GuestMemory, so device
// tests exercise the same checked paths a guest does. Header-only (tests include it; nothing in
// the library does).
//
//   auto mem = GuestMemory::create(...);
//   testing::GuestAllocator alloc(mem, 0x1000);
//   testing::FakeQueue fq(mem, alloc, 16);
//   uint16_t head = fq.add_chain({fq.readable(bytes), fq.writable(64)});
//   Queue q = fq.make_queue();              // configured + ready, as a transport would hand over
//   auto chain = q.pop(mem);
#pragma once

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <map>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "devices/virtio/queue.h"
#include "vmm/guest_memory.h"

namespace sm::virtio::testing {

// Bump allocator over guest RAM for rings and buffers.
class GuestAllocator {
 public:
  GuestAllocator(GuestMemory& mem, uint64_t start) : mem_(mem), next_(start) {}
  uint64_t alloc(uint64_t len, uint64_t align = 16) {
    uint64_t at = (next_ + align - 1) / align * align;
    if (!mem_.contains(at, len)) throw std::runtime_error("test guest memory exhausted");
    next_ = at + len;
    return at;
  }

 private:
  GuestMemory& mem_;
  uint64_t next_;
};

// One element of a chain, as the driver describes it.
struct Buf {
  uint64_t addr;
  uint32_t len;
  bool writable;
};

class FakeQueue {
 public:
  FakeQueue(GuestMemory& mem, GuestAllocator& alloc, uint16_t size)
      : mem_(mem), alloc_(alloc), size_(size) {
    desc_ = alloc_.alloc(16ull * size, 16);
    avail_ = alloc_.alloc(6 + 2ull * size, 2);
    used_ = alloc_.alloc(6 + 8ull * size, 4);
    for (uint64_t a = desc_; a < desc_ + 16ull * size; a += 8) mem_.write_obj<uint64_t>(a, 0);
    for (uint64_t a = avail_; a < avail_ + 6 + 2ull * size; a += 2) mem_.write_obj<uint16_t>(a, 0);
    for (uint64_t a = used_; a < used_ + 6 + 8ull * size; a += 2) mem_.write_obj<uint16_t>(a, 0);
    for (int i = size - 1; i >= 0; --i) free_.push_back(static_cast<uint16_t>(i));
  }

  [[nodiscard]] uint16_t size() const { return size_; }
  [[nodiscard]] uint64_t desc_addr() const { return desc_; }
  [[nodiscard]] uint64_t avail_addr() const { return avail_; }
  [[nodiscard]] uint64_t used_addr() const { return used_; }

  // A Queue configured the way a transport would configure it after DRIVER_OK.
  [[nodiscard]] Queue make_queue(uint64_t features = 0, uint16_t max_size = 0) const {
    Queue q(max_size ? max_size : size_);
    q.set_size(size_);
    q.set_desc_table(desc_);
    q.set_avail_ring(avail_);
    q.set_used_ring(used_);
    q.set_features(features);
    q.set_ready(true);
    return q;
  }

  // Buffers in guest RAM: a readable one holding bytes, a writable one of len bytes.
  Buf readable(std::span<const std::byte> bytes) {
    uint64_t a = alloc_.alloc(std::max<uint64_t>(bytes.size(), 1));
    mem_.write(a, bytes);
    return {a, static_cast<uint32_t>(bytes.size()), false};
  }
  Buf readable(const std::string& s) { return readable(std::as_bytes(std::span(s.data(), s.size()))); }
  Buf writable(uint32_t len) {
    uint64_t a = alloc_.alloc(std::max<uint32_t>(len, 1));
    return {a, len, true};
  }

  // Writes descriptors for bufs, linked with NEXT, and publishes the head on the avail ring.
  uint16_t add_chain(std::initializer_list<Buf> bufs) { return add_chain(std::vector<Buf>(bufs)); }
  uint16_t add_chain(const std::vector<Buf>& bufs) {
    uint16_t head = write_chain(bufs);
    publish(head);
    return head;
  }
  // Writes the chain without publishing it (for chains tests then corrupt).
  uint16_t write_chain(const std::vector<Buf>& bufs) {
    if (bufs.empty() || bufs.size() > free_.size()) throw std::runtime_error("fake queue: no free descriptors");
    std::vector<uint16_t> ids;
    for (size_t i = 0; i < bufs.size(); ++i) {
      ids.push_back(free_.back());
      free_.pop_back();
    }
    for (size_t i = 0; i < bufs.size(); ++i) {
      uint16_t flags = bufs[i].writable ? kDescFWrite : 0;
      uint16_t next = 0;
      if (i + 1 < bufs.size()) {
        flags |= kDescFNext;
        next = ids[i + 1];
      }
      set_desc(ids[i], {bufs[i].addr, bufs[i].len, flags, next});
    }
    owned_[ids[0]] = ids;
    return ids[0];
  }
  // A single descriptor pointing at an indirect table holding bufs (NEXT-linked).
  uint16_t add_indirect_chain(const std::vector<Buf>& bufs) {
    uint64_t table = alloc_.alloc(16ull * bufs.size(), 16);
    for (size_t i = 0; i < bufs.size(); ++i) {
      uint16_t flags = bufs[i].writable ? kDescFWrite : 0;
      if (i + 1 < bufs.size()) flags |= kDescFNext;
      mem_.write_obj(table + 16 * i, Desc{bufs[i].addr, bufs[i].len, flags, static_cast<uint16_t>(i + 1)});
    }
    uint16_t head = write_chain({Buf{table, static_cast<uint32_t>(16 * bufs.size()), false}});
    Desc d = desc(head);
    d.flags = kDescFIndirect;
    set_desc(head, d);
    publish(head);
    return head;
  }

  void set_desc(uint16_t i, const Desc& d) { mem_.write_obj(desc_ + 16ull * i, d); }
  [[nodiscard]] Desc desc(uint16_t i) const { return mem_.read_obj<Desc>(desc_ + 16ull * i); }
  // Puts head on the avail ring and bumps avail idx.
  void publish(uint16_t head) {
    uint16_t idx = avail_idx();
    mem_.write_obj<uint16_t>(avail_ + 4 + 2ull * (idx % size_), head);
    set_avail_idx(static_cast<uint16_t>(idx + 1));
  }
  [[nodiscard]] uint16_t avail_idx() const { return mem_.read_obj<uint16_t>(avail_ + 2); }
  void set_avail_idx(uint16_t v) { mem_.write_obj<uint16_t>(avail_ + 2, v); }
  void set_avail_flags(uint16_t v) { mem_.write_obj<uint16_t>(avail_, v); }
  void set_used_event(uint16_t v) { mem_.write_obj<uint16_t>(avail_ + 4 + 2ull * size_, v); }
  [[nodiscard]] uint16_t avail_event() const { return mem_.read_obj<uint16_t>(used_ + 4 + 8ull * size_); }
  [[nodiscard]] uint16_t used_idx() const { return mem_.read_obj<uint16_t>(used_ + 2); }

  // Used elements the device published since the last call; their descriptors become free.
  std::vector<UsedElem> collect_used() {
    std::vector<UsedElem> out;
    uint16_t idx = used_idx();
    while (last_used_ != idx) {
      auto e = mem_.read_obj<UsedElem>(used_ + 4 + 8ull * (last_used_ % size_));
      out.push_back(e);
      ++last_used_;
      auto it = owned_.find(static_cast<uint16_t>(e.id));
      if (it != owned_.end()) {
        for (uint16_t d : it->second) free_.push_back(d);
        owned_.erase(it);
      }
    }
    return out;
  }
  [[nodiscard]] size_t free_descriptors() const { return free_.size(); }

 private:
  GuestMemory& mem_;
  GuestAllocator& alloc_;
  uint16_t size_;
  uint64_t desc_ = 0, avail_ = 0, used_ = 0;
  std::vector<uint16_t> free_;
  std::map<uint16_t, std::vector<uint16_t>> owned_;  // head -> descriptors of its chain
  uint16_t last_used_ = 0;
};

[[nodiscard]] inline std::vector<std::byte> bytes_of(const std::string& s) {
  auto b = std::as_bytes(std::span(s.data(), s.size()));
  return {b.begin(), b.end()};
}

}  // namespace sm::virtio::testing
