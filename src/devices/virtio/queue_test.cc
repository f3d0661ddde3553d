#include "devices/virtio/queue.h"

#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <string>

#include "devices/virtio/fake_queue.h"
#include "snapshot/codec.h"

namespace sm::virtio {
namespace {

using testing::Buf;
using testing::FakeQueue;
using testing::GuestAllocator;

constexpr uint64_t kRam = 0x100000;  // 1 MiB of guest RAM at 0

struct QueueTest : ::testing::Test {
  GuestMemory mem = [] {
    const GuestMemory::RegionSpec r[] = {{0, kRam}};
    return GuestMemory::create(r);
  }();
  GuestAllocator alloc{mem, 0x1000};
  FakeQueue fq{mem, alloc, 16};
};

std::string to_string(std::span<const std::byte> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

TEST_F(QueueTest, PopsChainsInOrderWithReadableThenWritableSegments) {
  Queue q = fq.make_queue();
  uint16_t h1 = fq.add_chain({fq.readable(std::string("hello ")), fq.readable(std::string("world")), fq.writable(8)});
  uint16_t h2 = fq.add_chain({fq.writable(4)});
  auto c1 = q.pop(mem);
  ASSERT_TRUE(c1);
  EXPECT_EQ(c1->head(), h1);
  EXPECT_EQ(c1->descriptor_count(), 3u);
  EXPECT_EQ(c1->readable_len(), 11u);
  EXPECT_EQ(c1->writable_len(), 8u);
  std::array<std::byte, 11> buf{};
  EXPECT_EQ(c1->read(buf), 11u);  // copies across the segment boundary
  EXPECT_EQ(to_string(buf), "hello world");
  EXPECT_EQ(c1->read(buf), 0u);
  const std::string out = "0123456789";
  EXPECT_EQ(c1->write(std::as_bytes(std::span(out))), 8u);  // truncated to the writable space
  EXPECT_EQ(c1->bytes_written(), 8u);
  EXPECT_EQ(to_string(c1->writable()[0]), "01234567");
  auto c2 = q.pop(mem);
  ASSERT_TRUE(c2);
  EXPECT_EQ(c2->head(), h2);
  EXPECT_FALSE(q.pop(mem));

  q.push_used(mem, c1->head(), 8);
  q.push_used(mem, c2->head(), 0);
  auto used = fq.collect_used();
  ASSERT_EQ(used.size(), 2u);
  EXPECT_EQ(used[0].id, h1);
  EXPECT_EQ(used[0].len, 8u);
  EXPECT_EQ(used[1].id, h2);
}

TEST_F(QueueTest, CursorsAndSegmentViews) {
  Queue q = fq.make_queue();
  fq.add_chain({fq.readable(std::string("abc")), fq.readable(std::string("defg")), fq.writable(3), fq.writable(5)});
  auto c = q.pop(mem);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->skip_readable(2), 2u);
  auto rest = c->readable_rest();
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(to_string(rest[0]), "c");
  EXPECT_EQ(to_string(rest[1]), "defg");
  EXPECT_EQ(c->readable_remaining(), 5u);
  EXPECT_EQ(c->skip_writable(4), 4u);
  auto w = c->writable_rest(3);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].size(), 3u);
  EXPECT_EQ(c->writable_remaining(), 4u);
  EXPECT_EQ(c->skip_writable(100), 4u);
  EXPECT_TRUE(c->writable_rest().empty());
}

TEST_F(QueueTest, IndirectTablesWhenNegotiated) {
  Queue q = fq.make_queue(kFeatureIndirectDesc);
  fq.add_indirect_chain({fq.readable(std::string("hdr")), fq.writable(10), fq.writable(20)});
  auto c = q.pop(mem);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->readable_len(), 3u);
  EXPECT_EQ(c->writable_len(), 30u);
  EXPECT_EQ(c->descriptor_count(), 3u);

  Queue plain = fq.make_queue();  // same rings, no indirect negotiated: the same chain is invalid
  EXPECT_THROW((void)plain.pop(mem), GuestError);
}

TEST_F(QueueTest, RejectsLoops) {
  Queue q = fq.make_queue();
  uint16_t head = fq.write_chain({fq.readable(std::string("a")), fq.readable(std::string("b"))});
  Desc second = fq.desc(fq.desc(head).next);
  second.flags |= kDescFNext;
  second.next = head;  // b -> a -> b -> ...
  fq.set_desc(fq.desc(head).next, second);
  fq.publish(head);
  EXPECT_THROW((void)q.pop(mem), GuestError);
}

TEST_F(QueueTest, RejectsSelfLoop) {
  Queue q = fq.make_queue();
  uint16_t head = fq.write_chain({fq.readable(std::string("a"))});
  fq.set_desc(head, Desc{fq.desc(head).addr, 1, kDescFNext, head});
  fq.publish(head);
  EXPECT_THROW((void)q.pop(mem), GuestError);
}

TEST_F(QueueTest, RejectsNextIndexOutOfRange) {
  Queue q = fq.make_queue();
  uint16_t head = fq.write_chain({fq.readable(std::string("a"))});
  fq.set_desc(head, Desc{fq.desc(head).addr, 1, kDescFNext, 16});
  fq.publish(head);
  EXPECT_THROW((void)q.pop(mem), GuestError);
}

TEST_F(QueueTest, RejectsHeadOutOfRange) {
  Queue q = fq.make_queue();
  fq.publish(16);
  EXPECT_THROW((void)q.pop(mem), GuestError);
}

TEST_F(QueueTest, RejectsAddressesOutsideRam) {
  Queue q = fq.make_queue();
  fq.add_chain({Buf{kRam - 4, 8, false}});               // straddles the end of RAM
  fq.add_chain({Buf{0xffff'ffff'ffff'fff0ull, 0x20, true}});  // wraps around 2^64
  fq.add_chain({Buf{kRam, 1, true}});                     // just past the end
  EXPECT_THROW((void)q.pop(mem), GuestError);
  EXPECT_THROW((void)q.pop(mem), GuestError);
  EXPECT_THROW((void)q.pop(mem), GuestError);
  EXPECT_FALSE(q.pop(mem));  // each bad chain was consumed, the queue is empty now
}

TEST_F(QueueTest, RejectsOversizeLengths) {
  Queue q = fq.make_queue();
  fq.add_chain({Buf{0x1000, 0xffffffff, true}});
  EXPECT_THROW((void)q.pop(mem), GuestError);
}

TEST_F(QueueTest, RejectsTotalLengthOver4GiB) {
  // Several in-RAM segments that alias each other, adding up to more than a u32 can report.
  const GuestMemory::RegionSpec r[] = {{0, 0x100000}, {0x100000000ull, 0x80000000ull}};
  auto big = GuestMemory::create(r);
  GuestAllocator a(big, 0x1000);
  FakeQueue f(big, a, 8);
  Queue q = f.make_queue();
  f.add_chain({Buf{0x100000000ull, 0x80000000u, false}, Buf{0x100000000ull, 0x80000000u, false},
               Buf{0x100000000ull, 0x10, false}});
  EXPECT_THROW((void)q.pop(big), GuestError);
}

TEST_F(QueueTest, RejectsReadableAfterWritable) {
  Queue q = fq.make_queue();
  fq.add_chain({fq.writable(4), fq.readable(std::string("late"))});
  EXPECT_THROW((void)q.pop(mem), GuestError);
}

TEST_F(QueueTest, RejectsNestedIndirectTables) {
  Queue q = fq.make_queue(kFeatureIndirectDesc);
  uint64_t inner = alloc.alloc(16);
  mem.write_obj(inner, Desc{0x2000, 4, 0, 0});
  uint64_t outer = alloc.alloc(16);
  mem.write_obj(outer, Desc{inner, 16, kDescFIndirect, 0});
  uint16_t head = fq.write_chain({Buf{outer, 16, false}});
  fq.set_desc(head, Desc{outer, 16, kDescFIndirect, 0});
  fq.publish(head);
  EXPECT_THROW((void)q.pop(mem), GuestError);
}

TEST_F(QueueTest, RejectsIndirectTablesThatAreTooLongOrMalformed) {
  Queue q = fq.make_queue(kFeatureIndirectDesc);
  auto indirect = [&](uint64_t addr, uint32_t len, uint16_t flags) {
    uint16_t head = fq.write_chain({Buf{addr, len, false}});
    fq.set_desc(head, Desc{addr, len, flags, 0});
    fq.publish(head);
  };
  uint64_t table = alloc.alloc(16 * 17);
  for (int i = 0; i < 17; ++i)
    mem.write_obj(table + 16 * i, Desc{0x2000, 1, static_cast<uint16_t>(i < 16 ? kDescFNext : 0),
                                       static_cast<uint16_t>(i + 1)});
  indirect(table, 16 * 17, kDescFIndirect);                 // 17 entries > queue size 16
  indirect(table, 24, kDescFIndirect);                      // not a multiple of 16
  indirect(table, 0, kDescFIndirect);                       // empty
  indirect(kRam - 16, 32, kDescFIndirect);                  // table outside RAM
  indirect(table, 32, kDescFIndirect | kDescFNext);         // INDIRECT with NEXT
  for (int i = 0; i < 5; ++i) EXPECT_THROW((void)q.pop(mem), GuestError) << i;

  // A loop inside the table, and a next index past the table's end.
  uint64_t looped = alloc.alloc(32);
  mem.write_obj(looped, Desc{0x2000, 1, kDescFNext, 1});
  mem.write_obj(looped + 16, Desc{0x2000, 1, kDescFNext, 0});
  indirect(looped, 32, kDescFIndirect);
  EXPECT_THROW((void)q.pop(mem), GuestError);
  uint64_t past = alloc.alloc(32);
  mem.write_obj(past, Desc{0x2000, 1, kDescFNext, 2});
  mem.write_obj(past + 16, Desc{0x2000, 1, 0, 0});
  indirect(past, 32, kDescFIndirect);
  EXPECT_THROW((void)q.pop(mem), GuestError);
}

TEST_F(QueueTest, RejectsAvailIdxTooFarAhead) {
  Queue q = fq.make_queue();
  fq.set_avail_idx(17);
  EXPECT_THROW((void)q.pop(mem), GuestError);
}

TEST_F(QueueTest, HandlesIndexWrapAround) {
  Queue q = fq.make_queue();
  for (int i = 0; i < 70000; ++i) {  // past the 16-bit wrap of both indices
    fq.add_chain({Buf{0x2000, 4, false}});
    auto c = q.pop(mem);
    ASSERT_TRUE(c) << i;
    q.push_used(mem, c->head(), 0);
    ASSERT_EQ(fq.collect_used().size(), 1u);
  }
  EXPECT_EQ(q.next_avail(), static_cast<uint16_t>(70000));
  EXPECT_EQ(fq.used_idx(), static_cast<uint16_t>(70000));
}

TEST_F(QueueTest, UndoPopGivesTheChainBack) {
  Queue q = fq.make_queue();
  uint16_t h = fq.add_chain({fq.writable(4)});
  auto c = q.pop(mem);
  ASSERT_TRUE(c);
  q.undo_pop();
  auto again = q.pop(mem);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->head(), h);
}

TEST_F(QueueTest, NotificationHonoursNoInterruptFlag) {
  Queue q = fq.make_queue();
  fq.add_chain({fq.writable(4)});
  auto c = q.pop(mem);
  q.push_used(mem, c->head(), 0);
  EXPECT_TRUE(q.needs_notification(mem));
  fq.set_avail_flags(kAvailFNoInterrupt);
  EXPECT_FALSE(q.needs_notification(mem));
}

TEST_F(QueueTest, NotificationHonoursUsedEvent) {
  Queue q = fq.make_queue(kFeatureEventIdx);
  for (int i = 0; i < 4; ++i) fq.add_chain({fq.writable(4)});
  fq.set_used_event(2);  // the driver wants an interrupt once the used idx passes 2
  auto push_one = [&] {
    auto c = q.pop(mem);
    ASSERT_TRUE(c);
    q.push_used(mem, c->head(), 0);
  };
  push_one();                               // used idx 1
  EXPECT_TRUE(q.needs_notification(mem));   // first notification always goes out
  push_one();                               // used idx 2: event 2 not yet passed
  EXPECT_FALSE(q.needs_notification(mem));
  push_one();                               // used idx 3: crossed 2 -> 3
  EXPECT_TRUE(q.needs_notification(mem));
  push_one();
  EXPECT_FALSE(q.needs_notification(mem));  // used_event still 2, already signalled
  fq.set_avail_flags(kAvailFNoInterrupt);   // ignored with EVENT_IDX
  EXPECT_FALSE(q.needs_notification(mem));
}

TEST_F(QueueTest, EventIdxRearmsAvailEventWhenEmpty) {
  Queue q = fq.make_queue(kFeatureEventIdx);
  fq.add_chain({fq.writable(4)});
  fq.add_chain({fq.writable(4)});
  ASSERT_TRUE(q.pop(mem));
  ASSERT_TRUE(q.pop(mem));
  EXPECT_FALSE(q.pop(mem));
  EXPECT_EQ(fq.avail_event(), 2u);  // "notify me when you add entry 2"
}

TEST_F(QueueTest, ValidatesConfiguration) {
  Queue q = fq.make_queue();
  EXPECT_TRUE(q.is_valid(mem));
  Queue bad_size = q;
  bad_size.set_size(12);
  EXPECT_FALSE(bad_size.is_valid(mem));
  bad_size.set_size(32);  // above max
  EXPECT_FALSE(bad_size.is_valid(mem));
  bad_size.set_size(0);
  EXPECT_FALSE(bad_size.is_valid(mem));
  Queue misaligned = q;
  misaligned.set_desc_table(q.desc_table() + 8);
  EXPECT_THROW(misaligned.validate(mem), GuestError);
  Queue outside = q;
  outside.set_used_ring(kRam - 8);
  EXPECT_THROW(outside.validate(mem), GuestError);
  EXPECT_THROW(Queue(0), Error);
  EXPECT_THROW(Queue(100), Error);
}

// ---------------------------------------------------------------- snapshots

std::vector<std::byte> encode(const QueueState& s) {
  snapshot::Encoder e;
  save(e, s);
  return e.take();
}

QueueState decode(std::span<const std::byte> data) {
  snapshot::Decoder d(data, "queue");
  QueueState s = load_queue_state(d);
  d.finish();
  return s;
}

// Mid-stream (one chain consumed and used, two published, EVENT_IDX bookkeeping under way), the
// restored queue pops the same next chain, pushes to the same used slot and makes the same
// notification decision as the original.
TEST_F(QueueTest, SnapshotRoundTripPopsTheNextChain) {
  Queue q = fq.make_queue(kFeatureEventIdx | kFeatureIndirectDesc, 64);
  fq.add_chain({fq.writable(4)});
  auto c = q.pop(mem);
  ASSERT_TRUE(c);
  q.push_used(mem, c->head(), 4);
  fq.set_used_event(0);
  EXPECT_TRUE(q.needs_notification(mem));
  uint16_t h2 = fq.add_chain({fq.readable(std::string("second")), fq.writable(2)});
  uint16_t h3 = fq.add_indirect_chain({fq.writable(3)});

  const QueueState saved = q.save_state();
  EXPECT_EQ(saved.max_size, 64);
  EXPECT_EQ(saved.size, 16);
  EXPECT_EQ(saved.next_avail, 1);
  EXPECT_EQ(saved.next_used, 1);
  EXPECT_TRUE(saved.event_idx && saved.indirect && saved.ready && saved.signalled_used_valid);
  Queue restored(decode(encode(saved)));
  EXPECT_EQ(restored.save_state(), saved);

  auto c2 = restored.pop(mem);
  ASSERT_TRUE(c2);
  EXPECT_EQ(c2->head(), h2);
  std::array<std::byte, 6> buf{};
  EXPECT_EQ(c2->read(buf), 6u);
  EXPECT_EQ(to_string(buf), "second");
  restored.push_used(mem, c2->head(), 2);
  fq.set_used_event(0);  // the driver has seen used idx 1 only: no new interrupt wanted yet...
  EXPECT_FALSE(restored.needs_notification(mem));
  auto c3 = restored.pop(mem);  // indirect still negotiated
  ASSERT_TRUE(c3);
  EXPECT_EQ(c3->head(), h3);
  EXPECT_EQ(c3->writable_len(), 3u);
  restored.push_used(mem, c3->head(), 3);
  fq.set_used_event(2);  // ...until it asks for one past idx 2
  EXPECT_TRUE(restored.needs_notification(mem));
  auto used = fq.collect_used();
  ASSERT_EQ(used.size(), 3u);
  EXPECT_EQ(used[1].id, h2);
  EXPECT_EQ(used[2].id, h3);
  EXPECT_FALSE(restored.pop(mem));
  EXPECT_EQ(fq.avail_event(), 3);  // re-armed where the original would have
}

TEST_F(QueueTest, SnapshotRefusesImpossibleQueues) {
  QueueState s = fq.make_queue().save_state();
  EXPECT_NO_THROW(Queue{s});
  for (uint16_t bad_max : {0, 3, 48}) {
    QueueState b = s;
    b.max_size = bad_max;
    b.size = 0;
    EXPECT_THROW(Queue{b}, snapshot::SnapshotError) << bad_max;
    EXPECT_THROW((void)decode(encode(b)), snapshot::SnapshotError) << bad_max;
  }
  QueueState big = s;
  big.max_size = 32768;
  big.size = 32768;
  EXPECT_NO_THROW(Queue{big});
  QueueState over = s;
  over.size = 32;  // above max_size 16
  EXPECT_THROW(Queue{over}, snapshot::SnapshotError);
  QueueState unset = s;
  unset.size = 0;  // a transport may hold this before the driver sets QueueNum
  unset.ready = false;
  EXPECT_NO_THROW(Queue{unset});

  const auto good = encode(s);
  EXPECT_EQ(good.size(), kQueueStateBytes);
  for (size_t n = 0; n < good.size(); ++n)
    EXPECT_THROW((void)decode(std::span(good).first(n)), snapshot::SnapshotError) << n;
  auto bad_bool = good;
  bad_bool[28] = std::byte{0xff};  // ready
  EXPECT_THROW((void)decode(bad_bool), snapshot::SnapshotError);
}

}  // namespace
}  // namespace sm::virtio
