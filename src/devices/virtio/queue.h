// Split virtqueues (virtio 1.2 §2.7) as the device side sees them.
//
// Everything in the rings is guest-controlled and hostile until proven otherwise. A Queue reads
// the driver's rings through GuestMemory's checked accessors only, and pop() validates the WHOLE
// descriptor chain before handing it to a device: loops, bad next indices, nested or oversized
// indirect tables, addresses/lengths outside guest RAM, total lengths that overflow, and a
// device-writable descriptor before a device-readable one all raise sm::GuestError. A device that
// gets a DescriptorChain may therefore read and write its segments without further checks.
//
// Threading: a Queue is not thread-safe. It belongs to one VirtioDevice and is only touched with
// that device's mutex held (see device.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/error.h"
#include "vmm/guest_memory.h"

namespace sm::snapshot {
class Encoder;
class Decoder;
}  // namespace sm::snapshot

namespace sm::virtio {

// Feature bits that concern queues (virtio 1.2 §6).
inline constexpr uint64_t kFeatureIndirectDesc = 1ull << 28;  // VIRTIO_F_INDIRECT_DESC
inline constexpr uint64_t kFeatureEventIdx = 1ull << 29;      // VIRTIO_F_EVENT_IDX
inline constexpr uint64_t kFeatureVersion1 = 1ull << 32;      // VIRTIO_F_VERSION_1

// Ring layouts (virtio 1.2 §2.7.5, §2.7.6, §2.7.8), all little-endian.
inline constexpr uint16_t kDescFNext = 1;      // VIRTQ_DESC_F_NEXT
inline constexpr uint16_t kDescFWrite = 2;     // VIRTQ_DESC_F_WRITE
inline constexpr uint16_t kDescFIndirect = 4;  // VIRTQ_DESC_F_INDIRECT
inline constexpr uint16_t kAvailFNoInterrupt = 1;  // VIRTQ_AVAIL_F_NO_INTERRUPT
inline constexpr uint16_t kUsedFNoNotify = 1;      // VIRTQ_USED_F_NO_NOTIFY

struct Desc {  // struct virtq_desc
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Desc) == 16);

struct UsedElem {  // struct virtq_used_elem
  uint32_t id;
  uint32_t len;
};
static_assert(sizeof(UsedElem) == 8);

// Largest queue size a split queue may have (virtio 1.2 §2.7).
inline constexpr uint16_t kMaxQueueSize = 32768;

// One validated descriptor chain, popped from a Queue. Its segments are host views into guest
// RAM (valid while the GuestMemory lives; the guest may change their contents concurrently,
// never their location). Move-only: one chain is returned to the guest exactly once, with
// Queue::push_used(chain.head(), len).
//
// read()/write() copy across segment boundaries and keep a cursor each, so a device can parse a
// header, then a payload, without caring how the driver split them into descriptors.
class DescriptorChain {
 public:
  DescriptorChain(DescriptorChain&&) noexcept = default;
  DescriptorChain& operator=(DescriptorChain&&) noexcept = default;
  DescriptorChain(const DescriptorChain&) = delete;
  DescriptorChain& operator=(const DescriptorChain&) = delete;

  // Index of the head descriptor, what push_used() gives back to the driver.
  [[nodiscard]] uint16_t head() const { return head_; }
  // Number of descriptors in the chain (an indirect descriptor counts as its table's entries).
  [[nodiscard]] size_t descriptor_count() const { return descriptor_count_; }

  // The device-readable segments, in chain order, then the device-writable ones.
  [[nodiscard]] std::span<const std::span<std::byte>> readable() const { return readable_; }
  [[nodiscard]] std::span<const std::span<std::byte>> writable() const { return writable_; }
  [[nodiscard]] uint64_t readable_len() const { return readable_len_; }
  [[nodiscard]] uint64_t writable_len() const { return writable_len_; }

  // Copies up to out.size() bytes from the readable segments at the read cursor; returns the
  // number copied (less than out.size() only when the readable part is exhausted).
  size_t read(std::span<std::byte> out);
  // Advances the read cursor by up to n bytes; returns how far it moved.
  size_t skip_readable(uint64_t n);
  [[nodiscard]] uint64_t readable_remaining() const { return readable_len_ - read_pos_; }
  // The readable bytes from the cursor on, as segments (no copy); does not move the cursor.
  [[nodiscard]] std::vector<std::span<const std::byte>> readable_rest() const;

  // Copies up to in.size() bytes into the writable segments at the write cursor; returns the
  // number copied (less than in.size() only when the writable part is full).
  size_t write(std::span<const std::byte> in);
  // Advances the write cursor by up to n bytes (the skipped bytes keep whatever they held).
  size_t skip_writable(uint64_t n);
  [[nodiscard]] uint64_t writable_remaining() const { return writable_len_ - write_pos_; }
  // The writable space from the cursor on, at most max bytes, as segments (no copy); does not
  // move the cursor. Used to scatter-read (readv/preadv) straight into guest buffers.
  [[nodiscard]] std::vector<std::span<std::byte>> writable_rest(uint64_t max = UINT64_MAX) const;
  // Total bytes written so far (the write cursor): what a device normally reports as used len.
  [[nodiscard]] uint64_t bytes_written() const { return write_pos_; }

 private:
  friend class Queue;
  DescriptorChain() = default;

  uint16_t head_ = 0;
  size_t descriptor_count_ = 0;
  std::vector<std::span<std::byte>> readable_;
  std::vector<std::span<std::byte>> writable_;
  uint64_t readable_len_ = 0;
  uint64_t writable_len_ = 0;
  uint64_t read_pos_ = 0;   // bytes consumed from readable_
  size_t read_seg_ = 0;     // the cursor as (segment, offset in it)
  uint64_t read_off_ = 0;
  uint64_t write_pos_ = 0;  // bytes produced into writable_
  size_t write_seg_ = 0;
  uint64_t write_off_ = 0;
};

// Everything a Queue holds, for snapshots: the driver's configuration, the negotiated features
// and the device's ring indices. The rings themselves are in guest memory, saved with it.
struct QueueState {
  uint16_t max_size = 0;
  uint16_t size = 0;
  uint64_t desc_table = 0;
  uint64_t avail_ring = 0;
  uint64_t used_ring = 0;
  bool ready = false;
  bool event_idx = false;
  bool indirect = false;
  uint16_t next_avail = 0;
  uint16_t next_used = 0;
  uint16_t signalled_used = 0;
  bool signalled_used_valid = false;

  bool operator==(const QueueState&) const = default;
};

// Snapshot encoding. load_queue_state throws snapshot::SnapshotError for a truncated state or one
// no Queue could hold (see Queue(const QueueState&)); it does not call Decoder::finish().
void save(snapshot::Encoder& e, const QueueState& s);
[[nodiscard]] QueueState load_queue_state(snapshot::Decoder& d);
// Encoded size of one QueueState (for Decoder::count's min_element_bytes).
inline constexpr size_t kQueueStateBytes = 2 + 2 + 3 * 8 + 3 + 3 * 2 + 1;

// The device side of one split virtqueue. The transport fills in the driver's configuration
// (size, ring addresses, ready) and the negotiated features; the device pops chains and pushes
// used elements. Copyable: it holds only the configuration and the device's ring indices.
class Queue {
 public:
  explicit Queue(uint16_t max_size);
  // Restore: a queue exactly as saved. Throws snapshot::SnapshotError unless max_size is a power
  // of two <= kMaxQueueSize and size <= max_size (a transport may hold a size the driver has not
  // made valid yet). The ring addresses are checked against guest memory at use, as always; the
  // device checks a ready queue whole when it restores (VirtioDevice::restore).
  explicit Queue(const QueueState& state);
  [[nodiscard]] QueueState save_state() const;

  // --- configuration, written by the transport before activation (virtio 1.2 §4.2.3.2) ---
  [[nodiscard]] uint16_t max_size() const { return max_size_; }
  [[nodiscard]] uint16_t size() const { return size_; }
  void set_size(uint16_t size) { size_ = size; }
  [[nodiscard]] uint64_t desc_table() const { return desc_table_; }
  [[nodiscard]] uint64_t avail_ring() const { return avail_ring_; }
  [[nodiscard]] uint64_t used_ring() const { return used_ring_; }
  void set_desc_table(uint64_t gpa) { desc_table_ = gpa; }
  void set_avail_ring(uint64_t gpa) { avail_ring_ = gpa; }
  void set_used_ring(uint64_t gpa) { used_ring_ = gpa; }
  [[nodiscard]] bool ready() const { return ready_; }
  void set_ready(bool ready) { ready_ = ready; }
  // Applies the negotiated VIRTIO_F_EVENT_IDX / VIRTIO_F_INDIRECT_DESC bits.
  void set_features(uint64_t negotiated);

  // True when the configuration can be used: size a power of two in [1, max_size], rings
  // aligned (desc 16, avail 2, used 4) and wholly inside guest RAM. Checked at activation.
  [[nodiscard]] bool is_valid(const GuestMemory& mem) const;
  // Throws GuestError with the reason when !is_valid().
  void validate(const GuestMemory& mem) const;

  // --- device side ---
  // Pops the next available chain, validating all of it. nullopt when the ring is empty (with
  // EVENT_IDX, also re-arms avail_event so the driver notifies for the next buffer). Throws
  // GuestError for a malformed chain, an out-of-range head, or an avail idx more than size
  // ahead of the last one seen; the chain is consumed either way.
  [[nodiscard]] std::optional<DescriptorChain> pop(GuestMemory& mem);
  // Gives back the most recently popped chain (the device found nothing to put in it).
  void undo_pop();
  // Puts (head, len) on the used ring and publishes the new used idx.
  void push_used(GuestMemory& mem, uint16_t head, uint32_t len);
  // Whether the driver wants an interrupt for the used buffers pushed since the last call that
  // returned true: VIRTIO_F_EVENT_IDX's used_event when negotiated, else the avail ring's
  // NO_INTERRUPT flag (virtio 1.2 §2.7.7, §2.7.10). Call after a batch of push_used().
  [[nodiscard]] bool needs_notification(GuestMemory& mem);

  // Back to the just-constructed state (driver reset).
  void reset();

  // Ring state, for snapshots and tests.
  [[nodiscard]] uint16_t next_avail() const { return next_avail_; }
  [[nodiscard]] uint16_t next_used() const { return next_used_; }

 private:
  [[nodiscard]] uint16_t read_avail_idx(const GuestMemory& mem) const;
  void walk(GuestMemory& mem, DescriptorChain& chain, uint16_t head) const;

  uint16_t max_size_;
  uint16_t size_;
  uint64_t desc_table_ = 0;
  uint64_t avail_ring_ = 0;
  uint64_t used_ring_ = 0;
  bool ready_ = false;
  bool event_idx_ = false;
  bool indirect_ = false;

  uint16_t next_avail_ = 0;       // next avail ring slot to consume
  uint16_t next_used_ = 0;        // next used ring slot to fill (== the used idx we published)
  uint16_t signalled_used_ = 0;   // used idx at the last notification (EVENT_IDX)
  bool signalled_used_valid_ = false;
};

}  // namespace sm::virtio
