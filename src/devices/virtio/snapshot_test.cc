// One typed suite that runs every virtio device through its snapshot life cycle over the MMIO
// transport, as the machine does it (crosvm's generated suite does the same for its devices):
// live -> pause (a request published but its notification not yet handled) -> save -> encode ->
// the old device goes away -> decode -> restore into a fresh device of the same configuration
// -> resume. A device joins by adding a Case below.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "devices/virtio/blk.h"
#include "devices/virtio/fake_driver.h"
#include "devices/virtio/fake_net_backend.h"
#include "devices/virtio/fake_queue.h"
#include "devices/virtio/mmio.h"
#include "devices/virtio/net.h"
#include "devices/virtio/rng.h"
#include "devices/virtio/vsock.h"
#include "snapshot/codec.h"
#include "vmm/event_loop.h"

namespace sm::virtio {
namespace {

using testing::Buf;
using testing::FakeQueue;

constexpr uint16_t kQueueSize = 16;

// A request for the device's request queue: the chain, and the used length it must come back
// with.
struct Request {
  std::vector<Buf> bufs;
  uint32_t used_len;
};

struct RngCase {
  static constexpr uint16_t kRequestQueue = 0;
  std::shared_ptr<VirtioDevice> make() { return std::make_shared<Rng>(64, kQueueSize); }
  Request request(FakeQueue& fq) { return {{fq.writable(24)}, 24}; }
};

struct BlkCase {
  static constexpr uint16_t kRequestQueue = 0;
  BlkCase() {
    char tmpl[] = "/tmp/sm-snapshot-blk-XXXXXX";
    int fd = ::mkstemp(tmpl);
    if (fd < 0) throw sys_error("mkstemp");
    path = tmpl;
    if (::ftruncate(fd, 64 * 512) != 0) throw sys_error("ftruncate");
    ::close(fd);
  }
  ~BlkCase() { ::unlink(path.c_str()); }
  std::shared_ptr<VirtioDevice> make() {
    BlkOptions o;
    o.queue_size = kQueueSize;
    o.seg_max = kQueueSize - 2;
    return std::make_shared<Blk>(path, o);  // takes the image's lock: one at a time
  }
  Request request(FakeQueue& fq) {
    struct {
      uint32_t type, reserved;
      uint64_t sector;
    } h{kBlkTIn, 0, 3};
    return {{fq.readable(std::as_bytes(std::span(&h, 1))), fq.writable(512), fq.writable(1)}, 513};
  }
  std::string path;
};

struct VsockCase {
  static constexpr uint16_t kRequestQueue = 1;  // tx
  VsockCase() {
    char tmpl[] = "/tmp/sm-snapshot-vsock-XXXXXX";
    if (!::mkdtemp(tmpl)) throw sys_error("mkdtemp");
    dir = tmpl;
  }
  ~VsockCase() { std::filesystem::remove_all(dir); }
  std::shared_ptr<VirtioDevice> make() { return Vsock::create(loop, 3, dir + "/v.sock", kQueueSize); }
  Request request(FakeQueue& fq) {
    // A RST for no connection: consumed, answered with nothing.
    VsockHeader h;
    h.src_cid = 3;
    h.dst_cid = kVsockHostCid;
    h.src_port = 1000;
    h.dst_port = 2000;
    h.type = kVsockTypeStream;
    h.op = kVsockOpRst;
    std::array<std::byte, kVsockHeaderSize> raw{};
    encode_vsock_header(h, raw);
    return {{fq.readable(raw)}, 0};
  }
  EventLoop loop;
  std::string dir;
};

struct NetCase {
  static constexpr uint16_t kRequestQueue = 1;  // transmitq
  std::shared_ptr<VirtioDevice> make() {
    NetOptions o;
    o.queue_size = kQueueSize;
    return Net::create(loop, std::make_shared<testing::FakeNetBackend>(), o);  // a fresh backend
  }
  Request request(FakeQueue& fq) {
    std::array<std::byte, kNetHdrSize + 60> frame{};  // header (no flags) + a 60-byte frame
    return {{fq.readable(frame)}, 0};
  }
  EventLoop loop;
};

template <class Case>
class VirtioSnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    device_ = c_.make();
    for (uint16_t max : device_->queue_max_sizes())
      queues_.push_back(std::make_unique<FakeQueue>(mem_, alloc_, std::min(max, kQueueSize)));
    transport_ = std::make_unique<MmioTransport>(mem_, device_, irq_);
    std::vector<FakeQueue*> qs;
    for (auto& q : queues_) qs.push_back(q.get());
    ASSERT_EQ(testing::mmio_activate(*transport_, qs), 0xfu);
  }

  FakeQueue& request_queue() { return *queues_[Case::kRequestQueue]; }
  // Publishes one request; returns the used length it must complete with.
  uint32_t publish() {
    Request r = c_.request(request_queue());
    request_queue().add_chain(r.bufs);
    return r.used_len;
  }
  // The used lengths of the requests completed since the last call.
  std::vector<uint32_t> completed() {
    std::vector<uint32_t> out;
    for (auto e : request_queue().collect_used()) out.push_back(e.len);
    return out;
  }

  static MmioTransportState round_trip(const MmioTransportState& s) {
    snapshot::Encoder e;
    save(e, s);
    auto bytes = e.take();
    snapshot::Decoder d(bytes, "virtio-mmio");
    auto out = load_mmio_transport_state(d);
    d.finish();
    return out;
  }

  Case c_;
  GuestMemory mem_ = [] {
    const GuestMemory::RegionSpec r[] = {{0, 0x400000}};
    return GuestMemory::create(r);
  }();
  testing::GuestAllocator alloc_{mem_, 0x1000};
  std::vector<std::unique_ptr<FakeQueue>> queues_;
  std::shared_ptr<testing::CountingInterrupt> irq_ = std::make_shared<testing::CountingInterrupt>();
  std::shared_ptr<VirtioDevice> device_;
  std::unique_ptr<MmioTransport> transport_;
};

using Cases = ::testing::Types<RngCase, BlkCase, VsockCase, NetCase>;
struct CaseNames {
  template <class T>
  static std::string GetName(int) {
    if (std::is_same_v<T, RngCase>) return "Rng";
    if (std::is_same_v<T, BlkCase>) return "Blk";
    if (std::is_same_v<T, NetCase>) return "Net";
    return "Vsock";
  }
};
TYPED_TEST_SUITE(VirtioSnapshotTest, Cases, CaseNames);

TYPED_TEST(VirtioSnapshotTest, PauseSnapshotRestoreResume) {
  // Live: one request done.
  uint32_t len = this->publish();
  this->transport_->queue_notify(TypeParam::kRequestQueue);
  EXPECT_EQ(this->completed(), std::vector<uint32_t>{len});

  // Paused with a request published whose notification the I/O thread has not handled yet
  // (its ioeventfd does not survive the snapshot).
  const uint32_t in_flight = this->publish();
  const MmioTransportState saved = this->round_trip(this->transport_->save_state());
  this->transport_.reset();
  this->device_.reset();

  // Restored into a fresh device, with no driver involvement.
  this->device_ = this->c_.make();
  auto irq = std::make_shared<testing::CountingInterrupt>();
  this->transport_ = std::make_unique<MmioTransport>(this->mem_, this->device_, irq, saved);
  EXPECT_TRUE(this->device_->active());
  EXPECT_EQ(this->transport_->save_state(), saved);
  EXPECT_EQ(irq->count, 0);
  EXPECT_TRUE(this->completed().empty());

  // Resumed: the machine notifies every queue once, so the in-flight request completes; then
  // the device serves new requests on the same rings.
  for (uint16_t q = 0; q < this->transport_->num_queues(); ++q) this->transport_->queue_notify(q);
  EXPECT_EQ(this->completed(), std::vector<uint32_t>{in_flight});
  len = this->publish();
  this->transport_->queue_notify(TypeParam::kRequestQueue);
  EXPECT_EQ(this->completed(), std::vector<uint32_t>{len});
  EXPECT_EQ(this->transport_->status(), 0xfu);

  // And a second snapshot of the restored device restores as well.
  const MmioTransportState again = this->round_trip(this->transport_->save_state());
  this->transport_.reset();
  this->device_.reset();
  this->device_ = this->c_.make();
  this->transport_ = std::make_unique<MmioTransport>(this->mem_, this->device_, irq, again);
  len = this->publish();
  this->transport_->queue_notify(TypeParam::kRequestQueue);
  EXPECT_EQ(this->completed(), std::vector<uint32_t>{len});
}

TYPED_TEST(VirtioSnapshotTest, EveryTruncationIsRefused) {
  (void)this->publish();
  this->transport_->queue_notify(TypeParam::kRequestQueue);
  snapshot::Encoder e;
  save(e, this->transport_->save_state());
  const auto bytes = e.take();
  for (size_t n = 0; n < bytes.size(); ++n) {
    snapshot::Decoder d{std::span(bytes).first(n), "virtio-mmio"};
    EXPECT_THROW((void)load_mmio_transport_state(d), snapshot::SnapshotError) << n;
  }
}

}  // namespace
}  // namespace sm::virtio
