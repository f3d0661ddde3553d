#include "devices/virtio/blk.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "devices/virtio/fake_driver.h"
#include "devices/virtio/fake_queue.h"
#include "devices/virtio/mmio.h"

namespace sm::virtio {
namespace {

using testing::Buf;
using testing::CountingInterrupt;
using testing::FakeQueue;
using testing::GuestAllocator;

constexpr uint64_t kSectors = 64;

struct RequestHeader {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
};

class TempDisk {
 public:
  TempDisk() {
    char tmpl[] = "/tmp/sm-blk-test-XXXXXX";
    int fd = ::mkstemp(tmpl);
    if (fd < 0) throw sys_error("mkstemp");
    path_ = tmpl;
    std::vector<uint8_t> data(kSectors * 512);
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i / 512 + i % 7);
    if (::write(fd, data.data(), data.size()) != static_cast<ssize_t>(data.size())) throw sys_error("write");
    ::close(fd);
  }
  ~TempDisk() { ::unlink(path_.c_str()); }
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] std::vector<uint8_t> read(uint64_t off, size_t len) const {
    std::vector<uint8_t> out(len);
    int fd = ::open(path_.c_str(), O_RDONLY);
    EXPECT_EQ(::pread(fd, out.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
    ::close(fd);
    return out;
  }
  static uint8_t expected(uint64_t off) { return static_cast<uint8_t>(off / 512 + off % 7); }

 private:
  std::string path_;
};

struct BlkTest : ::testing::Test {
  TempDisk disk;
  GuestMemory mem = [] {
    const GuestMemory::RegionSpec r[] = {{0, 0x400000}};
    return GuestMemory::create(r);
  }();
  GuestAllocator alloc{mem, 0x1000};
  FakeQueue fq{mem, alloc, 16};
  std::shared_ptr<CountingInterrupt> irq = std::make_shared<CountingInterrupt>();
  std::shared_ptr<Blk> blk;
  std::unique_ptr<MmioTransport> t;

  void start(BlkOptions opts = {}) {
    opts.queue_size = 16;
    if (opts.seg_max > 14) opts.seg_max = 14;
    blk = std::make_shared<Blk>(disk.path(), opts);
    t = std::make_unique<MmioTransport>(mem, blk, irq);
    ASSERT_EQ(testing::mmio_activate(*t, {&fq}), 0xfu);
  }
  Buf header(uint32_t type, uint64_t sector) {
    RequestHeader h{type, 0, sector};
    return fq.readable(std::as_bytes(std::span(&h, 1)));
  }
  // Submits the chain, returns (status byte, used len).
  std::pair<uint8_t, uint32_t> run(std::vector<Buf> bufs, uint64_t status_addr) {
    mem.write_obj<uint8_t>(status_addr, 0xee);
    fq.add_chain(bufs);
    t->queue_notify(0);
    auto used = fq.collect_used();
    EXPECT_EQ(used.size(), 1u);
    return {mem.read_obj<uint8_t>(status_addr), used.empty() ? ~0u : used[0].len};
  }
};

TEST_F(BlkTest, ReadsSectors) {
  start();
  Buf data = fq.writable(1024);
  Buf status = fq.writable(1);
  auto [st, len] = run({header(kBlkTIn, 2), data, status}, status.addr);
  EXPECT_EQ(st, kBlkSOk);
  EXPECT_EQ(len, 1025u);
  for (uint64_t i = 0; i < 1024; ++i) ASSERT_EQ(mem.read_obj<uint8_t>(data.addr + i), TempDisk::expected(1024 + i)) << i;
  EXPECT_GE(irq->count, 1);
}

TEST_F(BlkTest, ReadsAcrossSegmentsAndIndirectTables) {
  start();
  Buf a = fq.writable(512), b = fq.writable(1024), status = fq.writable(1);
  mem.write_obj<uint8_t>(status.addr, 0xee);
  fq.add_indirect_chain({header(kBlkTIn, 10), a, b, status});
  t->queue_notify(0);
  ASSERT_EQ(fq.collect_used().size(), 1u);
  EXPECT_EQ(mem.read_obj<uint8_t>(status.addr), kBlkSOk);
  EXPECT_EQ(mem.read_obj<uint8_t>(a.addr + 5), TempDisk::expected(10 * 512 + 5));
  EXPECT_EQ(mem.read_obj<uint8_t>(b.addr + 1000), TempDisk::expected(11 * 512 + 1000));
}

TEST_F(BlkTest, WritesSectorsWithTheHeaderAndDataInOneDescriptor) {
  start();
  std::vector<std::byte> req(16 + 1024);
  RequestHeader h{kBlkTOut, 0, 4};
  std::memcpy(req.data(), &h, sizeof h);
  for (size_t i = 0; i < 1024; ++i) req[16 + i] = std::byte{0xab};
  Buf status = fq.writable(1);
  auto [st, len] = run({fq.readable(req), status}, status.addr);
  EXPECT_EQ(st, kBlkSOk);
  EXPECT_EQ(len, 1u);
  auto back = disk.read(4 * 512, 1024);
  for (auto v : back) ASSERT_EQ(v, 0xab);
  EXPECT_EQ(disk.read(6 * 512, 1)[0], TempDisk::expected(6 * 512));  // neighbours untouched
}

TEST_F(BlkTest, FlushAndGetId) {
  start({.serial = "disk-serial-1"});
  Buf status = fq.writable(1);
  EXPECT_EQ(run({header(kBlkTFlush, 0), status}, status.addr).first, kBlkSOk);
  Buf id = fq.writable(20);
  Buf status2 = fq.writable(1);
  EXPECT_EQ(run({header(kBlkTGetId, 0), id, status2}, status2.addr).first, kBlkSOk);
  std::array<char, 20> got{};
  mem.read(id.addr, std::as_writable_bytes(std::span(got)));
  EXPECT_EQ(std::string(got.data()), "disk-serial-1");
  EXPECT_EQ(got[19], 0);
}

TEST_F(BlkTest, DefaultSerialIsStable) {
  std::string first;
  {
    Blk a(disk.path());
    first = a.serial();
    EXPECT_EQ(a.capacity_sectors(), kSectors);
  }
  Blk b(disk.path(), {.read_only = true});  // after a: a read-write disk is locked while open
  EXPECT_FALSE(first.empty());
  EXPECT_LE(first.size(), 20u);
  EXPECT_EQ(first, b.serial());
}

TEST_F(BlkTest, RequestsBeyondTheDiskFail) {
  start();
  auto try_read = [&](uint64_t sector, uint32_t len) {
    Buf data = fq.writable(len), status = fq.writable(1);
    return run({header(kBlkTIn, sector), data, status}, status.addr).first;
  };
  EXPECT_EQ(try_read(kSectors - 1, 512), kBlkSOk);
  EXPECT_EQ(try_read(kSectors - 1, 1024), kBlkSIoErr);
  EXPECT_EQ(try_read(kSectors, 512), kBlkSIoErr);
  EXPECT_EQ(try_read(~0ull, 512), kBlkSIoErr);
  EXPECT_EQ(try_read(~0ull / 512, 512), kBlkSIoErr);
  EXPECT_EQ(try_read(0, 100), kBlkSIoErr);  // not a multiple of 512
  Buf status = fq.writable(1);
  std::vector<std::byte> payload(512);
  EXPECT_EQ(run({header(kBlkTOut, kSectors), fq.readable(payload), status}, status.addr).first, kBlkSIoErr);
}

TEST_F(BlkTest, ReadOnlyDisksRefuseWrites) {
  start({.read_only = true});
  EXPECT_TRUE(blk->device_features() & kBlkFRo);
  EXPECT_TRUE(blk->acked_features() & kBlkFRo);
  std::vector<std::byte> payload(512, std::byte{0x11});
  Buf status = fq.writable(1);
  EXPECT_EQ(run({header(kBlkTOut, 0), fq.readable(payload), status}, status.addr).first, kBlkSIoErr);
  EXPECT_EQ(disk.read(0, 1)[0], TempDisk::expected(0));
  Buf data = fq.writable(512), status2 = fq.writable(1);
  EXPECT_EQ(run({header(kBlkTIn, 0), data, status2}, status2.addr).first, kBlkSOk);
}

TEST_F(BlkTest, UnsupportedAndMalformedRequests) {
  start();
  Buf status = fq.writable(1);
  EXPECT_EQ(run({header(11 /* DISCARD */, 0), status}, status.addr).first, kBlkSUnsupp);
  // Truncated header.
  std::array<std::byte, 8> half{};
  Buf status2 = fq.writable(1);
  EXPECT_EQ(run({fq.readable(half), status2}, status2.addr).first, kBlkSIoErr);
  // No writable byte for the status: returned with len 0, the device keeps working.
  fq.add_chain({header(kBlkTFlush, 0)});
  t->queue_notify(0);
  auto used = fq.collect_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].len, 0u);
  EXPECT_FALSE(blk->needs_reset());
}

TEST_F(BlkTest, EnforcesSegmentLimits) {
  start({.seg_max = 2, .size_max = 1024});
  Buf a = fq.writable(512), b = fq.writable(512), c = fq.writable(512), status = fq.writable(1);
  EXPECT_EQ(run({header(kBlkTIn, 0), a, b, c, status}, status.addr).first, kBlkSIoErr);  // 3 > seg_max
  Buf big = fq.writable(2048), status2 = fq.writable(1);
  EXPECT_EQ(run({header(kBlkTIn, 0), big, status2}, status2.addr).first, kBlkSIoErr);  // > size_max
  Buf ok = fq.writable(1024), status3 = fq.writable(1);
  EXPECT_EQ(run({header(kBlkTIn, 0), ok, status3}, status3.addr).first, kBlkSOk);
}

TEST_F(BlkTest, AdvertisesConfiguration) {
  start({.seg_max = 3, .size_max = 4096});
  uint64_t cap = 0;
  t->read(0x100, std::as_writable_bytes(std::span(&cap, 1)));
  EXPECT_EQ(cap, kSectors);
  EXPECT_EQ(testing::reg_read(*t, 0x108), 4096u);
  EXPECT_EQ(testing::reg_read(*t, 0x10c), 3u);
  uint8_t byte = 0xff;
  t->read(0x100 + 0x200, std::as_writable_bytes(std::span(&byte, 1)));
  EXPECT_EQ(byte, 0);  // past the config: zeros
  EXPECT_TRUE(blk->acked_features() & kBlkFFlush);
}

TEST_F(BlkTest, MalformedChainNeedsReset) {
  start();
  fq.add_chain({Buf{0x7fffffff0ull, 16, false}, fq.writable(1)});
  t->queue_notify(0);
  EXPECT_TRUE(blk->needs_reset());
  EXPECT_TRUE(t->status() & kStatusDeviceNeedsReset);
}

TEST(Blk, OpenErrorsAreClear) {
  try {
    Blk b("/nonexistent/disk.img");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/disk.img"), std::string::npos);
  }
  EXPECT_THROW(Blk("/tmp"), Error);
  TempDisk d;
  EXPECT_THROW(Blk(d.path(), {.serial = std::string(21, 'x')}), Error);
}

TEST(Blk, ReadWriteDisksAreExclusiveReadOnlyOnesShared) {
  TempDisk d;
  auto in_use = [&](BlkOptions o) {
    try {
      Blk b(d.path(), o);
      return std::string();
    } catch (const Error& e) {
      return std::string(e.what());
    }
  };
  {
    Blk writer(d.path());
    EXPECT_NE(in_use({}).find("in use by another VM"), std::string::npos);
    EXPECT_NE(in_use({.read_only = true}).find("in use by another VM that writes to it"), std::string::npos);
  }
  {
    Blk reader1(d.path(), {.read_only = true});
    Blk reader2(d.path(), {.read_only = true});
    EXPECT_NE(in_use({}).find("add :ro"), std::string::npos);
  }
  EXPECT_EQ(in_use({}), "");  // both released with their devices
}

}  // namespace
}  // namespace sm::virtio
