// virtio-net through the MMIO transport with a fake driver (FakeQueue rings in real guest RAM)
// and a real in-test backend (fake_net_backend.h: queues and eventfds), the EventLoop pumped on
// the test thread.
#include "devices/virtio/net.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "devices/virtio/fake_driver.h"
#include "devices/virtio/fake_net_backend.h"
#include "devices/virtio/fake_queue.h"
#include "devices/virtio/mmio.h"
#include "snapshot/codec.h"
#include "vmm/event_loop.h"

namespace sm::virtio {
namespace {

using testing::Buf;
using testing::FakeNetBackend;
using testing::FakeQueue;
using Bytes = std::vector<std::byte>;

Bytes random_frame(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  Bytes f(n);
  for (auto& b : f) b = std::byte(rng() & 0xff);
  return f;
}

Bytes header_bytes(const NetHeader& h) {
  Bytes out(kNetHdrSize);
  encode_net_header(h, std::span<std::byte, kNetHdrSize>(out.data(), kNetHdrSize));
  return out;
}

Bytes concat(const Bytes& a, const Bytes& b) {
  Bytes out = a;
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

void put_be16(Bytes& b, size_t off, uint16_t v) {
  b[off] = std::byte(v >> 8);
  b[off + 1] = std::byte(v & 0xff);
}
uint16_t get_be16(const Bytes& b, size_t off) {
  return static_cast<uint16_t>((std::to_integer<unsigned>(b[off]) << 8) | std::to_integer<unsigned>(b[off + 1]));
}

class NetTest : public ::testing::Test {
 protected:
  void start(uint64_t features_mask = ~0ull, size_t tx_capacity = 1u << 20, uint16_t queue_size = 64) {
    backend_ = std::make_shared<FakeNetBackend>(tx_capacity);
    NetOptions o;
    o.queue_size = queue_size;
    dev_ = Net::create(loop_, backend_, o);
    rxq_ = std::make_unique<FakeQueue>(mem_, alloc_, queue_size);
    txq_ = std::make_unique<FakeQueue>(mem_, alloc_, queue_size);
    transport_ = std::make_unique<MmioTransport>(mem_, dev_, irq_);
    ASSERT_EQ(testing::mmio_activate(*transport_, {rxq_.get(), txq_.get()}, features_mask), 0xfu);
  }
  // Runs the loop until nothing is ready (callbacks and posted continuations).
  void pump() {
    for (int i = 0; i < 50; ++i) (void)loop_.run_once(0);
  }
  // Publishes header + frame on the TX ring, split at the given offsets of their concatenation.
  void send(const NetHeader& h, const Bytes& frame, std::vector<size_t> cuts = {}) {
    Bytes all = concat(header_bytes(h), frame);
    std::vector<Buf> bufs;
    size_t at = 0;
    cuts.push_back(all.size());
    for (size_t c : cuts) {
      bufs.push_back(txq_->readable(std::span(all).subspan(at, c - at)));
      at = c;
    }
    txq_->add_chain(bufs);
  }
  void send(const Bytes& frame) { send(NetHeader{}, frame); }
  Bytes read_guest(uint64_t addr, size_t len) {
    Bytes out(len);
    mem_.read(addr, out);
    return out;
  }

  EventLoop loop_;  // outlives the device
  GuestMemory mem_ = [] {
    const GuestMemory::RegionSpec r[] = {{0, 0x2000000}};  // 32 MiB: room for 64 KiB frames
    return GuestMemory::create(r);
  }();
  testing::GuestAllocator alloc_{mem_, 0x1000};
  std::shared_ptr<testing::CountingInterrupt> irq_ = std::make_shared<testing::CountingInterrupt>();
  std::shared_ptr<FakeNetBackend> backend_;
  std::shared_ptr<Net> dev_;
  std::unique_ptr<FakeQueue> rxq_, txq_;
  std::unique_ptr<MmioTransport> transport_;
};

// ---------------------------------------------------------------- pieces

TEST(NetHeader, RoundTripsAndMatchesTheWireLayout) {
  NetHeader h{kNetHdrFNeedsCsum, 0, 0x1234, 0x5678, 34, 6, 3};
  Bytes raw = header_bytes(h);
  EXPECT_EQ(raw[0], std::byte{1});
  EXPECT_EQ(raw[2], std::byte{0x34});  // hdr_len, little-endian
  EXPECT_EQ(raw[6], std::byte{34});    // csum_start
  EXPECT_EQ(raw[8], std::byte{6});     // csum_offset
  EXPECT_EQ(raw[10], std::byte{3});    // num_buffers
  EXPECT_EQ(decode_net_header(std::span<const std::byte, kNetHdrSize>(raw.data(), kNetHdrSize)), h);
}

TEST(NetChecksum, RefusesFieldsOutsideTheFrame) {
  Bytes f(60, std::byte{0xab});
  const Bytes orig = f;
  EXPECT_FALSE(complete_checksum(f, 60, 0));
  EXPECT_FALSE(complete_checksum(f, 59, 0));   // the field would end past the frame
  EXPECT_FALSE(complete_checksum(f, 40, 19));
  EXPECT_FALSE(complete_checksum(f, 0xffff, 0xffff));
  EXPECT_EQ(f, orig);
  EXPECT_TRUE(complete_checksum(f, 40, 18));  // the last two bytes
}

// ---------------------------------------------------------------- device

TEST_F(NetTest, OffersTheFeaturesAndConfigSpace) {
  start();
  uint64_t f = dev_->device_features();
  for (uint64_t bit : {kFeatureVersion1, kFeatureIndirectDesc, kFeatureEventIdx, kNetFCsum, kNetFGuestCsum,
                       kNetFMtu, kNetFMac, kNetFMrgRxbuf, kNetFStatus})
    EXPECT_TRUE(f & bit) << bit;
  EXPECT_FALSE(f & (1ull << 11));  // HOST_TSO4: no GSO
  EXPECT_FALSE(f & (1ull << 22));  // CTRL_VQ
  EXPECT_EQ(dev_->device_id(), kDeviceIdNet);
  EXPECT_EQ(testing::reg_read(*transport_, 0x8), kDeviceIdNet);

  std::array<std::byte, kNetConfigSize> cfg{};
  transport_->read(0x100, cfg);  // the config space takes any width
  const std::array<uint8_t, 6> mac{0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(std::to_integer<uint8_t>(cfg[i]), mac[i]);
  uint16_t status, pairs, mtu;
  std::memcpy(&status, cfg.data() + 6, 2);
  std::memcpy(&pairs, cfg.data() + 8, 2);
  std::memcpy(&mtu, cfg.data() + 10, 2);
  EXPECT_EQ(status, kNetSLinkUp);
  EXPECT_EQ(pairs, 1);
  EXPECT_EQ(mtu, 65520);
  // One field on its own, as Linux reads it (virtio_cread16).
  uint16_t mtu2 = 0;
  transport_->read(0x100 + 10, std::as_writable_bytes(std::span(&mtu2, 1)));
  EXPECT_EQ(mtu2, 65520);
  // Read-only: a write changes nothing.
  const uint8_t junk[2] = {1, 2};
  transport_->write(0x100, std::as_bytes(std::span(junk)));
  transport_->read(0x100, cfg);
  EXPECT_EQ(std::to_integer<uint8_t>(cfg[0]), 0x52);
}

TEST_F(NetTest, CreateRefusesBadOptions) {
  auto b = std::make_shared<FakeNetBackend>();
  NetOptions o;
  o.mtu = net::kMaxMtu + 1;
  EXPECT_THROW((void)Net::create(loop_, b, o), Error);
  o = {};
  o.queue_size = 100;
  EXPECT_THROW((void)Net::create(loop_, b, o), Error);
  EXPECT_THROW((void)Net::create(loop_, nullptr, {}), Error);
}

TEST_F(NetTest, TxFrameSplitAcrossDescriptorsArrivesByteExact) {
  start();
  const Bytes f1 = random_frame(1514, 1), f2 = random_frame(60, 2), f3 = random_frame(9000, 3);
  send(NetHeader{}, f1, {5, 12, 20, 700});  // header split in two, frame in three
  send(NetHeader{}, f2, {12});
  send(NetHeader{}, f3, {3, 4000});  // the header's tail shares a descriptor with the frame
  // An indirect chain too.
  Bytes all = concat(header_bytes({}), f2);
  txq_->add_indirect_chain({txq_->readable(std::span(all).first(7)), txq_->readable(std::span(all).subspan(7))});
  transport_->queue_notify(1);
  auto sent = backend_->take_sent();
  ASSERT_EQ(sent.size(), 4u);
  EXPECT_EQ(sent[0], f1);
  EXPECT_EQ(sent[1], f2);
  EXPECT_EQ(sent[2], f3);
  EXPECT_EQ(sent[3], f2);
  auto used = txq_->collect_used();
  ASSERT_EQ(used.size(), 4u);
  for (auto e : used) EXPECT_EQ(e.len, 0u);
  EXPECT_GT(irq_->count, 0);
  auto st = dev_->stats();
  EXPECT_EQ(st.tx_frames, 4u);
  EXPECT_EQ(st.tx_malformed, 0u);
}

// Ethernet + IPv4 (10.0.2.15 -> 10.0.2.3) + a UDP or TCP segment whose checksum field holds the
// pseudo-header sum, as Linux hands it over with CHECKSUM_PARTIAL.
struct PartialFrame {
  Bytes frame;
  uint16_t csum_start, csum_offset;
};
PartialFrame partial(uint8_t proto, const Bytes& l4) {
  Bytes f(14, std::byte{0});
  f[12] = std::byte{0x08};  // IPv4
  Bytes ip(20, std::byte{0});
  ip[0] = std::byte{0x45};
  put_be16(ip, 2, static_cast<uint16_t>(20 + l4.size()));
  ip[8] = std::byte{64};
  ip[9] = std::byte{proto};
  const uint8_t src[4] = {10, 0, 2, 15}, dst[4] = {10, 0, 2, 3};
  for (int i = 0; i < 4; ++i) {
    ip[12 + i] = std::byte{src[i]};
    ip[16 + i] = std::byte{dst[i]};
  }
  f.insert(f.end(), ip.begin(), ip.end());
  f.insert(f.end(), l4.begin(), l4.end());
  uint32_t ps = (10u << 8 | 0) + (2u << 8 | 15) + (10u << 8 | 0) + (2u << 8 | 3) + proto +
                static_cast<uint32_t>(l4.size());
  while (ps >> 16) ps = (ps & 0xffff) + (ps >> 16);
  const uint16_t off = proto == 17 ? 6 : 16;
  put_be16(f, 34 + off, static_cast<uint16_t>(ps));
  return {f, 34, off};
}

// The textbook way, independent of complete_checksum: pseudo header + segment with a zero field.
uint16_t reference_l4_checksum(const Bytes& frame, uint8_t proto, size_t field) {
  Bytes seg(frame.begin() + 34, frame.end());
  seg[field] = seg[field + 1] = std::byte{0};
  Bytes ph = {std::byte{10}, std::byte{0}, std::byte{2}, std::byte{15}, std::byte{10}, std::byte{0},
              std::byte{2},  std::byte{3}, std::byte{0}, std::byte{proto}};
  ph.push_back(std::byte(seg.size() >> 8));
  ph.push_back(std::byte(seg.size() & 0xff));
  Bytes all = concat(ph, seg);
  if (all.size() % 2) all.push_back(std::byte{0});
  uint32_t s = 0;
  for (size_t i = 0; i < all.size(); i += 2) s += get_be16(all, i);
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return static_cast<uint16_t>(~s);
}

TEST_F(NetTest, TxCompletesPartialChecksums) {
  start();
  // UDP 1234 -> 53, "supermachine"; TCP 40000 -> 80 seq 1, PSH|ACK, win 65535, "abc" (odd).
  Bytes udp(8, std::byte{0});
  put_be16(udp, 0, 1234);
  put_be16(udp, 2, 53);
  put_be16(udp, 4, 8 + 12);
  for (char c : std::string("supermachine")) udp.push_back(std::byte(c));
  Bytes tcp(20, std::byte{0});
  put_be16(tcp, 0, 40000);
  put_be16(tcp, 2, 80);
  tcp[7] = std::byte{1};
  tcp[12] = std::byte{0x50};
  tcp[13] = std::byte{0x18};
  put_be16(tcp, 14, 65535);
  for (char c : std::string("abc")) tcp.push_back(std::byte(c));
  auto u = partial(17, udp), t = partial(6, tcp);
  send({kNetHdrFNeedsCsum, 0, 0, 0, u.csum_start, u.csum_offset, 0}, u.frame, {12, 40});
  send({kNetHdrFNeedsCsum, 0, 0, 0, t.csum_start, t.csum_offset, 0}, t.frame, {30});
  transport_->queue_notify(1);
  auto sent = backend_->take_sent();
  ASSERT_EQ(sent.size(), 2u);
  // Known values (computed with a separate script) and the reference computation agree.
  EXPECT_EQ(get_be16(sent[0], 34 + 6), 0x5433);
  EXPECT_EQ(get_be16(sent[0], 34 + 6), reference_l4_checksum(sent[0], 17, 6));
  EXPECT_EQ(get_be16(sent[1], 34 + 16), 0x36c4);
  EXPECT_EQ(get_be16(sent[1], 34 + 16), reference_l4_checksum(sent[1], 6, 16));
  // Nothing else in the frames changed.
  Bytes a = sent[0], b = u.frame;
  a[40] = a[41] = b[40] = b[41] = std::byte{0};
  EXPECT_EQ(a, b);
  EXPECT_EQ(dev_->stats().tx_malformed, 0u);
}

TEST_F(NetTest, MalformedTxFramesAreDroppedAndCountedWhileGoodOnesPass) {
  start();
  const Bytes good = random_frame(100, 7);
  std::vector<Bytes> goods;
  auto good_one = [&](unsigned seed) {
    goods.push_back(random_frame(64, seed));
    send(goods.back());
  };
  // Truncated header: 8 bytes.
  Bytes short_hdr(8, std::byte{0});
  txq_->add_chain({txq_->readable(short_hdr)});
  good_one(10);
  // Oversize.
  send(random_frame(net::kMaxFrameLen + 1, 11));
  good_one(12);
  // Runt (13 bytes) and header only.
  send(random_frame(net::kMinFrameLen - 1, 13));
  send(Bytes{});
  good_one(14);
  // GSO requested (TCPV4), never offered.
  send({0, 1, 54, 1448, 0, 0, 0}, good);
  good_one(15);
  // Bad checksum positions.
  send({kNetHdrFNeedsCsum, 0, 0, 0, 100, 0, 0}, good);  // csum_start == len
  send({kNetHdrFNeedsCsum, 0, 0, 0, 90, 9, 0}, good);   // field ends one past the frame
  good_one(16);
  // The largest legal frame passes.
  goods.push_back(random_frame(net::kMaxFrameLen, 17));
  send(NetHeader{}, goods.back(), {12, 30000});

  transport_->queue_notify(1);
  EXPECT_EQ(backend_->take_sent(), goods);
  EXPECT_EQ(txq_->collect_used().size(), 13u);  // every buffer back to the guest
  auto st = dev_->stats();
  EXPECT_EQ(st.tx_malformed, 7u);
  EXPECT_EQ(st.tx_frames, goods.size());
  EXPECT_EQ(transport_->status(), 0xfu);  // not a device error
}

TEST_F(NetTest, MalformedChainIsADeviceError) {
  start();
  txq_->add_chain({Buf{0x7fff0000000ull, 64, false}});  // outside guest RAM
  transport_->queue_notify(1);
  EXPECT_TRUE(transport_->status() & kStatusDeviceNeedsReset);
  EXPECT_EQ(backend_->sent_count(), 0u);
}

TEST_F(NetTest, RxWithMergeableBuffersSpansThreeChains) {
  start();
  std::vector<Buf> bufs;
  for (int i = 0; i < 4; ++i) {
    // Each chain: 1100 bytes, itself split into two descriptors.
    Buf a = rxq_->writable(600), b = rxq_->writable(500);
    rxq_->add_chain({a, b});
    bufs.push_back(a);
    bufs.push_back(b);
  }
  transport_->queue_notify(0);  // nothing to deliver yet
  EXPECT_TRUE(rxq_->collect_used().empty());
  const Bytes frame = random_frame(3000, 21);
  backend_->queue_rx(frame);
  pump();
  auto used = rxq_->collect_used();
  ASSERT_EQ(used.size(), 3u);
  EXPECT_EQ(used[0].len, 1100u);
  EXPECT_EQ(used[1].len, 1100u);
  EXPECT_EQ(used[2].len, 3012u - 2200u);
  Bytes got;
  for (size_t i = 0; i < 6; ++i) {
    Bytes part = read_guest(bufs[i].addr, bufs[i].len);
    got.insert(got.end(), part.begin(), part.end());
  }
  got.resize(3012);
  auto h = decode_net_header(std::span<const std::byte, kNetHdrSize>(got.data(), kNetHdrSize));
  EXPECT_EQ(h.num_buffers, 3);
  EXPECT_EQ(h.flags, kNetHdrFDataValid);  // GUEST_CSUM negotiated
  EXPECT_EQ(h.gso_type, kNetHdrGsoNone);
  EXPECT_EQ(Bytes(got.begin() + kNetHdrSize, got.end()), frame);
  EXPECT_EQ(backend_->rx_pending(), 0u);
  auto st = dev_->stats();
  EXPECT_EQ(st.rx_frames, 1u);
  EXPECT_EQ(st.rx_bytes, 3000u);
  EXPECT_GT(irq_->count, 0);

  // The fourth chain takes a small frame on its own: num_buffers 1.
  const Bytes small = random_frame(60, 22);
  backend_->queue_rx(small);
  pump();
  used = rxq_->collect_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].len, 72u);
  Bytes g = read_guest(bufs[6].addr, 72);
  EXPECT_EQ(decode_net_header(std::span<const std::byte, kNetHdrSize>(g.data(), kNetHdrSize)).num_buffers, 1);
  EXPECT_EQ(Bytes(g.begin() + kNetHdrSize, g.end()), small);
}

TEST_F(NetTest, RxMergeableFrameLargerThanTheWholeRingIsDropped) {
  start(~0ull, 1u << 20, 4);
  for (int i = 0; i < 4; ++i) rxq_->add_chain({rxq_->writable(100)});
  backend_->queue_rx(random_frame(1000, 1));  // needs 1012 bytes; the ring can hold 400
  const Bytes ok = random_frame(80, 2);
  backend_->queue_rx(ok);
  pump();
  auto used = rxq_->collect_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].len, 92u);
  EXPECT_EQ(dev_->stats().rx_dropped, 1u);
  EXPECT_EQ(backend_->rx_pending(), 0u);
}

TEST_F(NetTest, RxMergeableFrameLargerThanAllMultiDescriptorBuffersIsDropped) {
  // Two-descriptor chains: the 8-entry ring holds only four, so waiting for more never helps.
  start(~0ull, 1u << 20, 8);
  for (int i = 0; i < 4; ++i) rxq_->add_chain({rxq_->writable(50), rxq_->writable(50)});
  backend_->queue_rx(random_frame(1000, 1));  // needs 1012 bytes; the ring can hold 400
  const Bytes ok = random_frame(80, 2);
  backend_->queue_rx(ok);
  pump();
  auto used = rxq_->collect_used();
  ASSERT_EQ(used.size(), 1u) << "a frame that can never fit stalled the receive queue";
  EXPECT_EQ(used[0].len, 92u);
  EXPECT_EQ(dev_->stats().rx_dropped, 1u);
  EXPECT_EQ(backend_->rx_pending(), 0u);
}

TEST_F(NetTest, RxWithoutMergeableBuffersDropsAFrameThatDoesNotFit) {
  start(~(kNetFMrgRxbuf | kNetFGuestCsum));
  Buf b = rxq_->writable(512);
  rxq_->add_chain({b});
  const Bytes big = random_frame(1000, 31), small = random_frame(100, 32);
  backend_->queue_rx(big);
  backend_->queue_rx(small);
  pump();
  auto used = rxq_->collect_used();
  ASSERT_EQ(used.size(), 1u);  // the buffer was kept for the frame that fits
  EXPECT_EQ(used[0].len, 112u);
  Bytes g = read_guest(b.addr, 112);
  auto h = decode_net_header(std::span<const std::byte, kNetHdrSize>(g.data(), kNetHdrSize));
  EXPECT_EQ(h.num_buffers, 1);
  EXPECT_EQ(h.flags, 0);  // no GUEST_CSUM: no DATA_VALID
  EXPECT_EQ(Bytes(g.begin() + kNetHdrSize, g.end()), small);
  auto st = dev_->stats();
  EXPECT_EQ(st.rx_dropped, 1u);
  EXPECT_EQ(st.rx_frames, 1u);
  EXPECT_EQ(backend_->rx_pending(), 0u);
}

TEST_F(NetTest, RxFramesWaitInTheBackendUntilTheGuestPostsBuffers) {
  start();
  std::vector<Bytes> frames;
  for (unsigned i = 0; i < 3; ++i) {
    frames.push_back(random_frame(200 + i, 40 + i));
    backend_->queue_rx(frames.back());
  }
  pump();
  EXPECT_EQ(backend_->rx_pending(), 3u);
  EXPECT_EQ(dev_->stats().rx_dropped, 0u);
  std::vector<Buf> bufs;
  for (int i = 0; i < 3; ++i) {
    bufs.push_back(rxq_->writable(2048));
    rxq_->add_chain({bufs.back()});
  }
  transport_->queue_notify(0);
  auto used = rxq_->collect_used();
  ASSERT_EQ(used.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(used[i].len, kNetHdrSize + frames[i].size());
    Bytes g = read_guest(bufs[i].addr, used[i].len);
    EXPECT_EQ(Bytes(g.begin() + kNetHdrSize, g.end()), frames[i]) << i;
  }
  EXPECT_EQ(backend_->rx_pending(), 0u);
  EXPECT_EQ(dev_->stats().rx_frames, 3u);
}

TEST_F(NetTest, TxBackpressureResumesOnTxReadyWithNothingLostAndOrderKept) {
  start(~0ull, /*tx_capacity=*/2);
  std::vector<Bytes> frames;
  for (unsigned i = 0; i < 5; ++i) {
    frames.push_back(random_frame(100 + i, 50 + i));
    send(frames.back());
  }
  transport_->queue_notify(1);
  EXPECT_EQ(backend_->sent_count(), 2u);
  EXPECT_EQ(txq_->collect_used().size(), 2u);  // the refused one stays on the ring
  EXPECT_EQ(dev_->stats().tx_queue_full, 1u);
  transport_->queue_notify(1);  // a notification while waiting changes nothing
  pump();                       // nor does the loop: tx_ready has not fired
  EXPECT_EQ(backend_->sent_count(), 2u);
  EXPECT_EQ(dev_->stats().tx_queue_full, 1u);

  std::vector<Bytes> got = backend_->take_sent();  // room again: signals tx_ready
  pump();
  EXPECT_EQ(backend_->sent_count(), 2u);
  EXPECT_EQ(dev_->stats().tx_queue_full, 2u);
  auto more = backend_->take_sent();
  got.insert(got.end(), more.begin(), more.end());
  pump();
  more = backend_->take_sent();
  got.insert(got.end(), more.begin(), more.end());
  EXPECT_EQ(got, frames);
  EXPECT_EQ(txq_->collect_used().size(), 3u);
  EXPECT_EQ(dev_->stats().tx_frames, 5u);
  pump();  // an idle tx_ready wakeup is harmless
  EXPECT_EQ(backend_->sent_count(), 0u);
}

TEST_F(NetTest, WorkPerWakeupIsBoundedAndContinuedOnTheLoop) {
  start(~0ull, 1u << 20, 512);
  const int n = Net::kFramesPerWakeup + 44;
  for (int i = 0; i < n; ++i) send(random_frame(60, static_cast<unsigned>(i)));
  transport_->queue_notify(1);
  EXPECT_EQ(backend_->sent_count(), static_cast<size_t>(Net::kFramesPerWakeup));
  pump();
  EXPECT_EQ(backend_->sent_count(), static_cast<size_t>(n));

  for (int i = 0; i < n; ++i) rxq_->add_chain({rxq_->writable(128)});
  for (int i = 0; i < n; ++i) backend_->queue_rx(random_frame(60, static_cast<unsigned>(i)));
  transport_->queue_notify(0);
  EXPECT_EQ(rxq_->collect_used().size(), static_cast<size_t>(Net::kFramesPerWakeup));
  pump();
  EXPECT_EQ(rxq_->collect_used().size(), 44u);
  EXPECT_EQ(backend_->rx_pending(), 0u);
}

TEST_F(NetTest, ResetAndMachineStopLeaveTheLoop) {
  start();
  testing::reg_write(*transport_, 0x70, 0);  // driver reset
  EXPECT_FALSE(dev_->active());
  backend_->queue_rx(random_frame(60, 1));
  pump();  // the fd is no longer watched: nothing happens, nothing breaks
  EXPECT_EQ(backend_->rx_pending(), 1u);
  ASSERT_EQ(testing::mmio_activate(*transport_, {rxq_.get(), txq_.get()}), 0xfu);
  rxq_->add_chain({rxq_->writable(256)});
  pump();  // re-armed: the eventfd still pending fires and the waiting frame goes in
  EXPECT_EQ(rxq_->collect_used().size(), 1u);
  dev_->on_machine_stopped();
  dev_->on_machine_stopped();  // harmless twice
  EXPECT_EQ(backend_->shutdowns(), 2);  // the backend closes its ports (idempotent there)
  backend_->queue_rx(random_frame(60, 2));
  rxq_->add_chain({rxq_->writable(256)});
  pump();
  transport_->queue_notify(0);
  EXPECT_TRUE(rxq_->collect_used().empty());
}

TEST_F(NetTest, SaveRestoreRoundTripMidTraffic) {
  start(~0ull, /*tx_capacity=*/1);
  std::vector<Bytes> frames;
  for (unsigned i = 0; i < 3; ++i) {
    frames.push_back(random_frame(80 + i, 60 + i));
    send(frames.back());
  }
  transport_->queue_notify(1);  // one out, two wait for the (full) backend
  auto first = backend_->take_sent();
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(txq_->collect_used().size(), 1u);
  std::vector<Buf> bufs;
  for (int i = 0; i < 2; ++i) {
    bufs.push_back(rxq_->writable(1024));
    rxq_->add_chain({bufs.back()});
  }
  const Bytes rx1 = random_frame(300, 70);
  backend_->queue_rx(rx1);
  // Capture while the backend's tx_ready would fire (take_sent signalled it) but has not been
  // handled, and rx1 is queued: none of that survives, the rings do.
  snapshot::Encoder e;
  save(e, transport_->save_state());
  auto bytes = e.take();
  transport_.reset();
  dev_.reset();
  backend_.reset();

  snapshot::Decoder d(bytes, "virtio-mmio");
  auto state = load_mmio_transport_state(d);
  d.finish();
  backend_ = std::make_shared<FakeNetBackend>();
  NetOptions o;
  o.queue_size = 64;
  dev_ = Net::create(loop_, backend_, o);
  auto irq = std::make_shared<testing::CountingInterrupt>();
  transport_ = std::make_unique<MmioTransport>(mem_, dev_, irq, state);
  EXPECT_TRUE(dev_->active());
  EXPECT_EQ(transport_->save_state(), state);
  const Bytes rx2 = random_frame(500, 71);
  backend_->queue_rx(rx2);
  pump();  // the restore's pass over both queues, and the new backend's rx_ready
  auto sent = backend_->take_sent();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0], frames[1]);
  EXPECT_EQ(sent[1], frames[2]);
  EXPECT_EQ(txq_->collect_used().size(), 2u);
  auto used = rxq_->collect_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].len, kNetHdrSize + rx2.size());
  Bytes g = read_guest(bufs[0].addr, used[0].len);
  EXPECT_EQ(Bytes(g.begin() + kNetHdrSize, g.end()), rx2);
  EXPECT_GT(irq->count, 0);
  EXPECT_EQ(transport_->status(), 0xfu);
  // And traffic goes on over the same rings.
  send(frames[0]);
  transport_->queue_notify(1);
  EXPECT_EQ(backend_->take_sent(), std::vector<Bytes>{frames[0]});
}

}  // namespace
}  // namespace sm::virtio
