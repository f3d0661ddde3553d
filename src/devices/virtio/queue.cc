#include "devices/virtio/queue.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "snapshot/codec.h"

namespace sm::virtio {

// Ring fields are little-endian (virtio 1.2 §2.4); read_obj/write_obj copy host-endian.
static_assert(std::endian::native == std::endian::little, "virtio rings assume a little-endian host");

namespace {

// Offsets inside the rings (virtio 1.2 §2.7.6, §2.7.8).
constexpr uint64_t kRingIdxOffset = 2;
constexpr uint64_t kRingEntriesOffset = 4;

[[nodiscard]] uint64_t desc_table_bytes(uint16_t size) { return 16ull * size; }
[[nodiscard]] uint64_t avail_ring_bytes(uint16_t size) { return 6 + 2ull * size; }
[[nodiscard]] uint64_t used_ring_bytes(uint16_t size) { return 6 + 8ull * size; }

// vring_need_event from the spec (§2.7.10): notify when new_idx passed event since old.
[[nodiscard]] bool need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

// Copies between a flat buffer and segments starting at cursor (seg, off); advances it.
template <class Seg, class Fn>
size_t walk_segments(std::span<const Seg> segs, size_t& seg, uint64_t& off, uint64_t n, Fn&& fn) {
  size_t done = 0;
  while (done < n && seg < segs.size()) {
    const auto& s = segs[seg];
    uint64_t take = std::min<uint64_t>(s.size() - off, n - done);
    fn(s.data() + off, done, take);
    done += take;
    off += take;
    if (off == s.size()) {
      ++seg;
      off = 0;
    }
  }
  return done;
}

}  // namespace

// ---------------------------------------------------------------- DescriptorChain

size_t DescriptorChain::read(std::span<std::byte> out) {
  size_t n = walk_segments<std::span<std::byte>>(
      readable_, read_seg_, read_off_, out.size(),
      [&](std::byte* src, size_t at, uint64_t len) { std::memcpy(out.data() + at, src, len); });
  read_pos_ += n;
  return n;
}

size_t DescriptorChain::skip_readable(uint64_t n) {
  size_t done = walk_segments<std::span<std::byte>>(readable_, read_seg_, read_off_, n,
                                                    [](std::byte*, size_t, uint64_t) {});
  read_pos_ += done;
  return done;
}

std::vector<std::span<const std::byte>> DescriptorChain::readable_rest() const {
  std::vector<std::span<const std::byte>> out;
  for (size_t i = read_seg_; i < readable_.size(); ++i) {
    auto s = readable_[i];
    if (i == read_seg_) s = s.subspan(read_off_);
    if (!s.empty()) out.push_back(s);
  }
  return out;
}

size_t DescriptorChain::write(std::span<const std::byte> in) {
  size_t n = walk_segments<std::span<std::byte>>(
      writable_, write_seg_, write_off_, in.size(),
      [&](std::byte* dst, size_t at, uint64_t len) { std::memcpy(dst, in.data() + at, len); });
  write_pos_ += n;
  return n;
}

size_t DescriptorChain::skip_writable(uint64_t n) {
  size_t done = walk_segments<std::span<std::byte>>(writable_, write_seg_, write_off_, n,
                                                    [](std::byte*, size_t, uint64_t) {});
  write_pos_ += done;
  return done;
}

std::vector<std::span<std::byte>> DescriptorChain::writable_rest(uint64_t max) const {
  std::vector<std::span<std::byte>> out;
  for (size_t i = write_seg_; i < writable_.size() && max > 0; ++i) {
    auto s = writable_[i];
    if (i == write_seg_) s = s.subspan(write_off_);
    if (s.size() > max) s = s.first(max);
    max -= s.size();
    if (!s.empty()) out.push_back(s);
  }
  return out;
}

// ---------------------------------------------------------------- Queue

Queue::Queue(uint16_t max_size) : max_size_(max_size), size_(max_size) {
  if (max_size == 0 || max_size > kMaxQueueSize || !std::has_single_bit(max_size))
    throw Error(fmt::format("virtqueue: maximum size {} is not a power of two in [1, {}]", max_size,
                            kMaxQueueSize));
}

namespace {

std::optional<std::string> check_queue_state(const QueueState& s) {
  if (s.max_size == 0 || s.max_size > kMaxQueueSize || !std::has_single_bit(s.max_size))
    return fmt::format("virtqueue maximum size {} is not a power of two in [1, {}]", s.max_size, kMaxQueueSize);
  if (s.size > s.max_size) return fmt::format("virtqueue size {} exceeds its maximum {}", s.size, s.max_size);
  return std::nullopt;
}

}  // namespace

void save(snapshot::Encoder& e, const QueueState& s) {
  e.u16(s.max_size);
  e.u16(s.size);
  e.u64(s.desc_table);
  e.u64(s.avail_ring);
  e.u64(s.used_ring);
  e.boolean(s.ready);
  e.boolean(s.event_idx);
  e.boolean(s.indirect);
  e.u16(s.next_avail);
  e.u16(s.next_used);
  e.u16(s.signalled_used);
  e.boolean(s.signalled_used_valid);
}

QueueState load_queue_state(snapshot::Decoder& d) {
  QueueState s;
  s.max_size = d.u16();
  s.size = d.u16();
  s.desc_table = d.u64();
  s.avail_ring = d.u64();
  s.used_ring = d.u64();
  s.ready = d.boolean();
  s.event_idx = d.boolean();
  s.indirect = d.boolean();
  s.next_avail = d.u16();
  s.next_used = d.u16();
  s.signalled_used = d.u16();
  s.signalled_used_valid = d.boolean();
  if (auto why = check_queue_state(s)) d.fail(*why);
  return s;
}

Queue::Queue(const QueueState& s)
    : max_size_(s.max_size),
      size_(s.size),
      desc_table_(s.desc_table),
      avail_ring_(s.avail_ring),
      used_ring_(s.used_ring),
      ready_(s.ready),
      event_idx_(s.event_idx),
      indirect_(s.indirect),
      next_avail_(s.next_avail),
      next_used_(s.next_used),
      signalled_used_(s.signalled_used),
      signalled_used_valid_(s.signalled_used_valid) {
  if (auto why = check_queue_state(s)) throw snapshot::SnapshotError(*why);
}

QueueState Queue::save_state() const {
  return QueueState{max_size_,  size_,       desc_table_, avail_ring_,     used_ring_,
                    ready_,     event_idx_,  indirect_,   next_avail_,     next_used_,
                    signalled_used_, signalled_used_valid_};
}

void Queue::set_features(uint64_t negotiated) {
  event_idx_ = (negotiated & kFeatureEventIdx) != 0;
  indirect_ = (negotiated & kFeatureIndirectDesc) != 0;
}

void Queue::validate(const GuestMemory& mem) const {
  if (size_ == 0 || size_ > max_size_ || !std::has_single_bit(size_))
    throw GuestError(fmt::format("queue size {} is not a power of two in [1, {}]", size_, max_size_));
  if (desc_table_ % 16 || avail_ring_ % 2 || used_ring_ % 4)
    throw GuestError(fmt::format("queue rings misaligned (desc {:#x}, avail {:#x}, used {:#x})",
                                 desc_table_, avail_ring_, used_ring_));
  if (!mem.contains(desc_table_, desc_table_bytes(size_)))
    throw GuestError(fmt::format("descriptor table {:#x} is outside guest RAM", desc_table_));
  if (!mem.contains(avail_ring_, avail_ring_bytes(size_)))
    throw GuestError(fmt::format("available ring {:#x} is outside guest RAM", avail_ring_));
  if (!mem.contains(used_ring_, used_ring_bytes(size_)))
    throw GuestError(fmt::format("used ring {:#x} is outside guest RAM", used_ring_));
}

bool Queue::is_valid(const GuestMemory& mem) const {
  try {
    validate(mem);
    return true;
  } catch (const GuestError&) {
    return false;
  }
}

void Queue::reset() {
  Queue fresh(max_size_);
  *this = fresh;
}

uint16_t Queue::read_avail_idx(const GuestMemory& mem) const {
  return mem.read_obj<uint16_t>(avail_ring_ + kRingIdxOffset);
}

std::optional<DescriptorChain> Queue::pop(GuestMemory& mem) {
  if (!ready_) return std::nullopt;
  uint16_t avail_idx = read_avail_idx(mem);
  if (avail_idx == next_avail_) {
    if (!event_idx_) return std::nullopt;
    // Ask for a notification when the driver adds the next buffer, then look again: the driver
    // may have added one before it could see the new avail_event (virtio 1.2 §2.7.10).
    mem.write_obj<uint16_t>(used_ring_ + kRingEntriesOffset + 8ull * size_, next_avail_);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    avail_idx = read_avail_idx(mem);
    if (avail_idx == next_avail_) return std::nullopt;
  }
  uint16_t pending = static_cast<uint16_t>(avail_idx - next_avail_);
  if (pending > size_)
    throw GuestError(fmt::format("available idx {} is {} entries ahead of {} in a queue of {}",
                                 avail_idx, pending, next_avail_, size_));
  // The ring entries were written before the idx (§2.7.13): read them only after it.
  std::atomic_thread_fence(std::memory_order_acquire);
  uint16_t head =
      mem.read_obj<uint16_t>(avail_ring_ + kRingEntriesOffset + 2ull * (next_avail_ % size_));
  ++next_avail_;  // consumed even when invalid: the driver must reset us anyway
  DescriptorChain chain;
  walk(mem, chain, head);
  return chain;
}

void Queue::walk(GuestMemory& mem, DescriptorChain& chain, uint16_t head) const {
  if (head >= size_)
    throw GuestError(fmt::format("descriptor chain head {} is outside a queue of {}", head, size_));
  chain.head_ = head;
  uint64_t table = desc_table_;
  uint32_t table_len = size_;
  bool in_indirect = false;
  bool seen_writable = false;
  size_t count = 0;
  uint16_t idx = head;
  for (;;) {
    Desc d = mem.read_obj<Desc>(table + 16ull * idx);
    if (d.flags & kDescFIndirect) {
      // §2.7.5.3: one table per chain, no nesting, the indirect descriptor is the last.
      if (!indirect_)
        throw GuestError("indirect descriptor used without VIRTIO_F_INDIRECT_DESC");
      if (in_indirect) throw GuestError("nested indirect descriptor table");
      if (d.flags & kDescFNext) throw GuestError("indirect descriptor with the NEXT flag");
      if (d.len == 0 || d.len % 16)
        throw GuestError(fmt::format("indirect table length {} is not a multiple of 16", d.len));
      uint32_t entries = d.len / 16;
      if (entries > size_)
        throw GuestError(fmt::format("indirect table of {} entries is longer than the queue ({})",
                                     entries, size_));
      if (!mem.contains(d.addr, d.len))
        throw GuestError(fmt::format("indirect table {:#x}+{:#x} is outside guest RAM", d.addr, d.len));
      table = d.addr;
      table_len = entries;
      in_indirect = true;
      idx = 0;
      continue;
    }
    // §2.7.5.3.1: a chain is never longer than the queue; a longer walk is a loop.
    if (++count > size_)
      throw GuestError(fmt::format("descriptor chain from head {} is longer than the queue ({}): a loop?",
                                   head, size_));
    bool writable = (d.flags & kDescFWrite) != 0;
    // §2.7.4.2: device-writable elements come after all device-readable ones.
    if (!writable && seen_writable)
      throw GuestError(fmt::format("descriptor chain from head {} has a readable element after a writable one", head));
    seen_writable |= writable;
    if (d.len > 0) {
      if (chain.readable_len_ + chain.writable_len_ + d.len > UINT32_MAX)
        throw GuestError(fmt::format("descriptor chain from head {} is longer than 4 GiB", head));
      auto seg = mem.span(d.addr, d.len);  // throws GuestError outside RAM
      if (writable) {
        chain.writable_.push_back(seg);
        chain.writable_len_ += d.len;
      } else {
        chain.readable_.push_back(seg);
        chain.readable_len_ += d.len;
      }
    }
    if (!(d.flags & kDescFNext)) break;
    if (d.next >= table_len)
      throw GuestError(fmt::format("descriptor next index {} is outside its table of {}", d.next, table_len));
    idx = d.next;
  }
  chain.descriptor_count_ = count;
}

void Queue::undo_pop() { --next_avail_; }

void Queue::push_used(GuestMemory& mem, uint16_t head, uint32_t len) {
  uint64_t slot = used_ring_ + kRingEntriesOffset + 8ull * (next_used_ % size_);
  mem.write_obj(slot, UsedElem{head, len});
  // The element must be visible before the idx that publishes it (§2.7.14).
  std::atomic_thread_fence(std::memory_order_release);
  ++next_used_;
  mem.write_obj<uint16_t>(used_ring_ + kRingIdxOffset, next_used_);
}

bool Queue::needs_notification(GuestMemory& mem) {
  // The used idx store must be visible before we read the driver's suppression state, or we
  // could miss a driver that just re-enabled interrupts (§2.7.10).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (event_idx_) {
    uint16_t used_event = mem.read_obj<uint16_t>(avail_ring_ + kRingEntriesOffset + 2ull * size_);
    bool need = !signalled_used_valid_ || need_event(used_event, next_used_, signalled_used_);
    signalled_used_ = next_used_;
    signalled_used_valid_ = true;
    return need;
  }
  uint16_t flags = mem.read_obj<uint16_t>(avail_ring_);
  return (flags & kAvailFNoInterrupt) == 0;
}

}  // namespace sm::virtio
