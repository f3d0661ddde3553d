#include "devices/virtio/vsock.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <random>
#include <thread>

#include "devices/virtio/fake_driver.h"
#include "devices/virtio/fake_queue.h"
#include "devices/virtio/mmio.h"
#include "snapshot/codec.h"

namespace sm::virtio {
namespace {

using namespace std::chrono_literals;
using testing::Buf;
using testing::FakeQueue;
using testing::GuestAllocator;

constexpr uint64_t kGuestCid = 3;

// ---------------------------------------------------------------- header parsing

TEST(VsockHeader, RoundTripsAndMatchesTheWireLayout) {
  VsockHeader h{0x1122334455667788ull, 2, 0xaabbccdd, 5000, 77, kVsockTypeStream, kVsockOpRw, 3, 65536, 99};
  std::array<std::byte, kVsockHeaderSize> raw{};
  encode_vsock_header(h, raw);
  EXPECT_EQ(raw[0], std::byte{0x88});   // src_cid, little-endian
  EXPECT_EQ(raw[8], std::byte{2});      // dst_cid
  EXPECT_EQ(raw[16], std::byte{0xdd});  // src_port
  EXPECT_EQ(raw[24], std::byte{77});    // len
  EXPECT_EQ(raw[28], std::byte{1});     // type
  EXPECT_EQ(raw[30], std::byte{5});     // op
  EXPECT_EQ(raw[32], std::byte{3});     // flags
  EXPECT_EQ(raw[38], std::byte{1});     // buf_alloc = 0x10000
  EXPECT_EQ(raw[40], std::byte{99});    // fwd_cnt
  auto back = decode_vsock_header(raw);
  EXPECT_EQ(back.src_cid, h.src_cid);
  EXPECT_EQ(back.dst_port, h.dst_port);
  EXPECT_EQ(back.len, h.len);
  EXPECT_EQ(back.op, h.op);
  EXPECT_EQ(back.buf_alloc, h.buf_alloc);
  EXPECT_EQ(back.fwd_cnt, h.fwd_cnt);
}

TEST(VsockHeader, DecodeRejectsTruncatedInput) {
  std::array<std::byte, kVsockHeaderSize + 1> raw{};
  EXPECT_THROW((void)decode_vsock_header(std::span(raw).first(43)), GuestError);
  EXPECT_THROW((void)decode_vsock_header(std::span(raw)), GuestError);
  EXPECT_THROW((void)decode_vsock_header({}), GuestError);
}

TEST(VsockHeader, ChecksTypeOpLengthAndAddresses) {
  auto good = [] {
    VsockHeader h;
    h.src_cid = kGuestCid;
    h.dst_cid = kVsockHostCid;
    h.type = kVsockTypeStream;
    h.op = kVsockOpRw;
    h.len = 100;
    return h;
  };
  EXPECT_FALSE(check_vsock_header(good(), kGuestCid, 100));
  auto h = good();
  h.type = 2;  // SEQPACKET, not offered
  EXPECT_TRUE(check_vsock_header(h, kGuestCid, 100));
  h = good();
  h.op = 0;
  EXPECT_TRUE(check_vsock_header(h, kGuestCid, 100));
  h.op = 8;
  EXPECT_TRUE(check_vsock_header(h, kGuestCid, 100));
  h = good();
  EXPECT_TRUE(check_vsock_header(h, kGuestCid, 99));  // len beyond the buffer
  h.len = kMaxPacketPayload + 1;
  EXPECT_TRUE(check_vsock_header(h, kGuestCid, 1u << 20));  // oversize
  h = good();
  h.op = kVsockOpRequest;  // control ops carry no payload
  EXPECT_TRUE(check_vsock_header(h, kGuestCid, 100));
  h.len = 0;
  EXPECT_FALSE(check_vsock_header(h, kGuestCid, 0));
  h.src_cid = 7;  // spoofed source
  EXPECT_TRUE(check_vsock_header(h, kGuestCid, 0));
  h = good();
  h.dst_cid = 1;
  EXPECT_TRUE(check_vsock_header(h, kGuestCid, 100));
}

// ---------------------------------------------------------------- device with a fake guest

struct Packet {
  VsockHeader h;
  std::vector<std::byte> payload;
};

std::vector<std::byte> random_bytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> out(n);
  for (auto& b : out) b = std::byte(rng() & 0xff);
  return out;
}

UniqueFd unix_connect(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw sys_error("connect " + path);
  return fd;
}

UniqueFd unix_listen(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw sys_error("bind " + path);
  if (::listen(fd.get(), 8) != 0) throw sys_error("listen");
  return fd;
}

bool write_all(int fd, std::span<const std::byte> data);
bool write_str(int fd, const std::string& s) { return write_all(fd, std::as_bytes(std::span(s))); }

bool write_all(int fd, std::span<const std::byte> data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data = data.subspan(static_cast<size_t>(n));
  }
  return true;
}

std::vector<std::byte> read_to_eof(int fd) {
  std::vector<std::byte> out;
  std::array<std::byte, 65536> buf;
  for (;;) {
    ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n <= 0) return out;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
  }
}

class VsockTest : public ::testing::Test {
 protected:
  static constexpr uint16_t kQueueSize = 64;
  static constexpr uint32_t kRxBufSize = 4096;

  void SetUp() override {
    char tmpl[] = "/tmp/sm-vsock-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/v.sock";
    dev_ = Vsock::create(loop_, kGuestCid, path_, kQueueSize);
    t_ = std::make_unique<MmioTransport>(mem_, dev_, irq_);
    ASSERT_EQ(testing::mmio_activate(*t_, {&rxq_, &txq_, &evq_}), 0xfu);
    tx_hdr_ = alloc_.alloc(kVsockHeaderSize);
    tx_payload_ = alloc_.alloc(kMaxPacketPayload);
    for (int i = 0; i < 32; ++i) rx_pool_.push_back(alloc_.alloc(kRxBufSize));
  }
  void TearDown() override {
    t_.reset();
    dev_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Posts n rx buffers (from the pool) and notifies the rx queue.
  void post_rx(size_t n) {
    for (size_t i = 0; i < n && !rx_pool_.empty(); ++i) {
      uint64_t a = rx_pool_.back();
      rx_pool_.pop_back();
      uint16_t head = rxq_.add_chain({Buf{a, kRxBufSize, true}});
      rx_owner_[head] = a;
    }
    t_->queue_notify(0);
  }

  VsockHeader hdr(uint16_t op, uint32_t src_port, uint32_t dst_port, uint32_t len = 0, uint32_t flags = 0) {
    VsockHeader h;
    h.src_cid = kGuestCid;
    h.dst_cid = kVsockHostCid;
    h.src_port = src_port;
    h.dst_port = dst_port;
    h.len = len;
    h.type = kVsockTypeStream;
    h.op = op;
    h.flags = flags;
    h.buf_alloc = guest_buf_alloc_;
    h.fwd_cnt = guest_fwd_cnt_;
    return h;
  }

  // The guest transmits one packet (header and payload in separate descriptors, as Linux does).
  void send(const VsockHeader& h, std::span<const std::byte> payload = {}) {
    std::array<std::byte, kVsockHeaderSize> raw{};
    encode_vsock_header(h, raw);
    mem_.write(tx_hdr_, raw);
    mem_.write(tx_payload_, payload);
    if (payload.empty()) {
      txq_.add_chain({Buf{tx_hdr_, kVsockHeaderSize, false}});
    } else {
      txq_.add_chain({Buf{tx_hdr_, kVsockHeaderSize, false},
                      Buf{tx_payload_, static_cast<uint32_t>(payload.size()), false}});
    }
    t_->queue_notify(1);
    ASSERT_EQ(txq_.collect_used().size(), 1u);
  }

  // Packets the device put on the rx queue since the last call; their buffers are reposted.
  std::vector<Packet> received(bool repost = true) {
    std::vector<Packet> out;
    size_t freed = 0;
    for (auto e : rxq_.collect_used()) {
      uint64_t a = rx_owner_.at(static_cast<uint16_t>(e.id));
      rx_owner_.erase(static_cast<uint16_t>(e.id));
      rx_pool_.push_back(a);
      ++freed;
      EXPECT_GE(e.len, kVsockHeaderSize);
      std::array<std::byte, kVsockHeaderSize> raw{};
      mem_.read(a, raw);
      Packet p{decode_vsock_header(raw), {}};
      EXPECT_EQ(e.len, kVsockHeaderSize + p.h.len);
      EXPECT_EQ(p.h.src_cid, kVsockHostCid);
      EXPECT_EQ(p.h.dst_cid, kGuestCid);
      p.payload.resize(p.h.len);
      mem_.read(a + kVsockHeaderSize, p.payload);
      out.push_back(std::move(p));
    }
    if (repost && freed) post_rx(freed);
    return out;
  }

  // Runs the event loop and collects packets until one with op arrives (or 5 s pass).
  std::optional<Packet> wait_for(uint16_t op) {
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      for (auto& p : received()) {
        if (p.h.op == op) return p;
        backlog_.push_back(std::move(p));
      }
      loop_.run_once(10);
    }
    return std::nullopt;
  }
  void pump(int rounds = 5) {
    for (int i = 0; i < rounds; ++i) loop_.run_once(5);
  }

  // Reads exactly n bytes from a host socket while running the event loop.
  std::vector<std::byte> host_read(int fd, size_t n) {
    std::vector<std::byte> out;
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
      pump(1);
      std::array<std::byte, 4096> buf;
      ssize_t r = ::recv(fd, buf.data(), std::min(buf.size(), n - out.size()), MSG_DONTWAIT);
      if (r > 0) out.insert(out.end(), buf.begin(), buf.begin() + r);
      if (r == 0) break;
    }
    return out;
  }
  // True when the host socket sees EOF within 5 s of running the loop.
  bool host_sees_eof(int fd) {
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      pump(1);
      std::array<std::byte, 64> buf;
      ssize_t r = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
      if (r == 0 || (r < 0 && errno == ECONNRESET)) return true;
    }
    return false;
  }

  // A host program connects to the VMM's socket and the guest accepts on guest_port.
  // Returns the host socket (after "OK") and the host-side port the guest sees.
  std::pair<UniqueFd, uint32_t> host_connect(uint32_t guest_port) {
    UniqueFd fd = unix_connect(path_);
    std::string line = fmt::format("CONNECT {}\n", guest_port);
    EXPECT_TRUE(write_all(fd.get(), std::as_bytes(std::span(line))));
    auto req = wait_for(kVsockOpRequest);
    EXPECT_TRUE(req);
    if (!req) return {UniqueFd(), 0};
    EXPECT_EQ(req->h.dst_port, guest_port);
    EXPECT_GE(req->h.src_port, 1u << 30);
    EXPECT_EQ(req->h.buf_alloc, kConnBufAlloc);
    send(hdr(kVsockOpResponse, guest_port, req->h.src_port));
    std::string ok = fmt::format("OK {}\n", req->h.src_port);
    auto got = host_read(fd.get(), ok.size());
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(got.data()), got.size()), ok);
    return {std::move(fd), req->h.src_port};
  }

  GuestMemory mem_ = [] {
    const GuestMemory::RegionSpec r[] = {{0, 0x1000000}};
    return GuestMemory::create(r);
  }();
  GuestAllocator alloc_{mem_, 0x1000};
  FakeQueue rxq_{mem_, alloc_, kQueueSize};
  FakeQueue txq_{mem_, alloc_, kQueueSize};
  FakeQueue evq_{mem_, alloc_, 8};
  std::shared_ptr<testing::CountingInterrupt> irq_ = std::make_shared<testing::CountingInterrupt>();
  EventLoop loop_;
  std::string dir_, path_;
  std::shared_ptr<Vsock> dev_;
  std::unique_ptr<MmioTransport> t_;
  uint64_t tx_hdr_ = 0, tx_payload_ = 0;
  std::vector<uint64_t> rx_pool_;
  std::map<uint16_t, uint64_t> rx_owner_;
  std::deque<Packet> backlog_;
  uint32_t guest_buf_alloc_ = kConnBufAlloc;
  uint32_t guest_fwd_cnt_ = 0;
};

TEST_F(VsockTest, AdvertisesGuestCid) {
  uint64_t cid = 0;
  t_->read(0x100, std::as_writable_bytes(std::span(&cid, 1)));
  EXPECT_EQ(cid, kGuestCid);
  EXPECT_EQ(testing::reg_read(*t_, 0x008), kDeviceIdVsock);
  EXPECT_EQ(dev_->queue_max_sizes().size(), 3u);
}

TEST_F(VsockTest, RefusesAnExistingPathAndReservedCids) {
  EXPECT_THROW((void)Vsock::create(loop_, kGuestCid, path_), Error);
  EXPECT_THROW((void)Vsock::create(loop_, 2, dir_ + "/other.sock"), Error);
  EXPECT_THROW((void)Vsock::create(loop_, kGuestCid, dir_ + "/" + std::string(120, 'x')), Error);
}

TEST_F(VsockTest, HostToGuestConnectAndExchange) {
  post_rx(8);
  auto [fd, host_port] = host_connect(5000);
  ASSERT_TRUE(fd);
  EXPECT_EQ(dev_->connection_count(), 1u);
  // Host -> guest.
  std::string hello = "hello guest";
  ASSERT_TRUE(write_all(fd.get(), std::as_bytes(std::span(hello))));
  auto rw = wait_for(kVsockOpRw);
  ASSERT_TRUE(rw);
  EXPECT_EQ(rw->h.src_port, host_port);
  EXPECT_EQ(rw->h.dst_port, 5000u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(rw->payload.data()), rw->payload.size()), hello);
  // Guest -> host.
  std::string reply = "hello host";
  send(hdr(kVsockOpRw, 5000, host_port, static_cast<uint32_t>(reply.size())), std::as_bytes(std::span(reply)));
  auto got = host_read(fd.get(), reply.size());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(got.data()), got.size()), reply);
  // The host closes: the guest hears SHUTDOWN with both flags, answers RST, all is gone.
  fd.reset();
  auto sd = wait_for(kVsockOpShutdown);
  ASSERT_TRUE(sd);
  EXPECT_EQ(sd->h.flags, kVsockShutdownRcv | kVsockShutdownSend);
  send(hdr(kVsockOpRst, 5000, host_port));
  EXPECT_EQ(dev_->connection_count(), 0u);
  EXPECT_FALSE(dev_->needs_reset());
}

TEST_F(VsockTest, DataAfterTheConnectLineWaitsForTheGuest) {
  post_rx(8);
  UniqueFd fd = unix_connect(path_);
  std::string early = "CONNECT 77\r\nearly bytes";
  ASSERT_TRUE(write_all(fd.get(), std::as_bytes(std::span(early))));
  auto req = wait_for(kVsockOpRequest);
  ASSERT_TRUE(req);
  send(hdr(kVsockOpResponse, 77, req->h.src_port));
  auto rw = wait_for(kVsockOpRw);
  ASSERT_TRUE(rw);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(rw->payload.data()), rw->payload.size()), "early bytes");
}

TEST_F(VsockTest, GuestRefusalClosesTheHostSocketWithoutOk) {
  post_rx(8);
  UniqueFd fd = unix_connect(path_);
  ASSERT_TRUE(write_str(fd.get(), "CONNECT 9\n"));
  auto req = wait_for(kVsockOpRequest);
  ASSERT_TRUE(req);
  send(hdr(kVsockOpRst, 9, req->h.src_port));
  EXPECT_TRUE(host_sees_eof(fd.get()));
  EXPECT_EQ(dev_->connection_count(), 0u);
}

TEST_F(VsockTest, BadConnectLinesAreClosed) {
  post_rx(8);
  for (std::string bad : std::vector<std::string>{"HELLO 5\n", "CONNECT\n", "CONNECT -1\n", "CONNECT 99999999999\n", "CONNECT 5x\n",
                          std::string(100, 'A')}) {
    UniqueFd fd = unix_connect(path_);
    ASSERT_TRUE(write_all(fd.get(), std::as_bytes(std::span(bad))));
    EXPECT_TRUE(host_sees_eof(fd.get())) << bad;
  }
  EXPECT_EQ(dev_->connection_count(), 0u);
  EXPECT_TRUE(received().empty());  // the guest never heard of them
}

TEST_F(VsockTest, SilentHostConnectionTimesOut) {
  UniqueFd fd = unix_connect(path_);
  pump();
  EXPECT_EQ(dev_->connection_count(), 1u);
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(host_sees_eof(fd.get()));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 4s);
  EXPECT_EQ(dev_->connection_count(), 0u);
}

TEST_F(VsockTest, GuestToHostConnectsToThePortSocket) {
  post_rx(8);
  UniqueFd listener = unix_listen(path_ + "_6000");
  send(hdr(kVsockOpRequest, 1234, 6000));
  auto resp = wait_for(kVsockOpResponse);
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->h.src_port, 6000u);
  EXPECT_EQ(resp->h.dst_port, 1234u);
  UniqueFd conn(::accept(listener.get(), nullptr, nullptr));
  ASSERT_TRUE(conn);
  std::string msg = "from the guest";
  send(hdr(kVsockOpRw, 1234, 6000, static_cast<uint32_t>(msg.size())), std::as_bytes(std::span(msg)));
  auto got = host_read(conn.get(), msg.size());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(got.data()), got.size()), msg);
  // Guest closes: SHUTDOWN both -> the host sees EOF, the guest gets RST.
  send(hdr(kVsockOpShutdown, 1234, 6000, 0, kVsockShutdownRcv | kVsockShutdownSend));
  EXPECT_TRUE(host_sees_eof(conn.get()));
  EXPECT_TRUE(wait_for(kVsockOpRst));
  EXPECT_EQ(dev_->connection_count(), 0u);
}

TEST_F(VsockTest, GuestToMissingHostPortIsReset) {
  post_rx(8);
  send(hdr(kVsockOpRequest, 1234, 6001));
  auto rst = wait_for(kVsockOpRst);
  ASSERT_TRUE(rst);
  EXPECT_EQ(rst->h.src_port, 6001u);
  EXPECT_EQ(rst->h.dst_port, 1234u);
  EXPECT_EQ(dev_->connection_count(), 0u);
}

TEST_F(VsockTest, MalformedPacketsAreAnsweredWithRstNotACrash) {
  post_rx(16);
  UniqueFd listener = unix_listen(path_ + "_6000");
  send(hdr(kVsockOpRequest, 1, 6000));
  ASSERT_TRUE(wait_for(kVsockOpResponse));
  EXPECT_EQ(dev_->connection_count(), 1u);
  // RW whose len claims more than the buffer holds: the connection is reset.
  std::string small = "abc";
  send(hdr(kVsockOpRw, 1, 6000, 1000), std::as_bytes(std::span(small)));
  EXPECT_TRUE(wait_for(kVsockOpRst));
  EXPECT_EQ(dev_->connection_count(), 0u);

  auto bad_type = hdr(kVsockOpRequest, 2, 6000);
  bad_type.type = 2;
  send(bad_type);
  EXPECT_TRUE(wait_for(kVsockOpRst));
  send(hdr(99, 3, 6000));  // unknown op
  EXPECT_TRUE(wait_for(kVsockOpRst));
  send(hdr(kVsockOpRw, 4, 6000, 3), std::as_bytes(std::span(small)));  // no such connection
  EXPECT_TRUE(wait_for(kVsockOpRst));
  auto spoofed = hdr(kVsockOpRequest, 5, 6000);
  spoofed.src_cid = 42;
  send(spoofed);
  EXPECT_TRUE(wait_for(kVsockOpRst));
  std::vector<std::byte> huge(kMaxPacketPayload);
  auto oversize = hdr(kVsockOpRw, 6, 6000, kMaxPacketPayload + 1);
  send(oversize, huge);
  EXPECT_TRUE(wait_for(kVsockOpRst));
  // A RST for an unknown connection gets no answer.
  send(hdr(kVsockOpRst, 7, 6000));
  pump();
  EXPECT_TRUE(received().empty());
  // A tx buffer too short for a header is dropped.
  txq_.add_chain({Buf{tx_hdr_, 10, false}});
  t_->queue_notify(1);
  EXPECT_EQ(txq_.collect_used().size(), 1u);
  EXPECT_FALSE(dev_->needs_reset());
  EXPECT_EQ(dev_->connection_count(), 0u);
}

TEST_F(VsockTest, MalformedDescriptorChainNeedsReset) {
  txq_.add_chain({Buf{0xfffffff000ull, 44, false}});
  t_->queue_notify(1);
  EXPECT_TRUE(dev_->needs_reset());
  EXPECT_TRUE(t_->status() & kStatusDeviceNeedsReset);
}

TEST_F(VsockTest, RespectsTheGuestsCredit) {
  post_rx(16);
  guest_buf_alloc_ = 4096;
  auto [fd, host_port] = host_connect(5000);
  ASSERT_TRUE(fd);
  auto data = random_bytes(10000, 1);
  ASSERT_TRUE(write_all(fd.get(), data));
  std::vector<std::byte> got;
  for (int i = 0; i < 50; ++i) {
    pump(1);
    for (auto& p : received())
      if (p.h.op == kVsockOpRw) got.insert(got.end(), p.payload.begin(), p.payload.end());
  }
  EXPECT_EQ(got.size(), 4096u);  // not a byte more than the guest has room for
  // The guest reads it and says so; the rest follows.
  guest_fwd_cnt_ = 4096;
  guest_buf_alloc_ = 1 << 20;
  send(hdr(kVsockOpCreditUpdate, 5000, host_port));
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (got.size() < data.size() && std::chrono::steady_clock::now() < deadline) {
    pump(1);
    for (auto& p : received())
      if (p.h.op == kVsockOpRw) got.insert(got.end(), p.payload.begin(), p.payload.end());
  }
  EXPECT_EQ(got, data);
}

TEST_F(VsockTest, AnswersCreditRequests) {
  post_rx(8);
  auto [fd, host_port] = host_connect(5000);
  ASSERT_TRUE(fd);
  send(hdr(kVsockOpCreditRequest, 5000, host_port));
  auto upd = wait_for(kVsockOpCreditUpdate);
  ASSERT_TRUE(upd);
  EXPECT_EQ(upd->h.buf_alloc, kConnBufAlloc);
  EXPECT_EQ(upd->h.fwd_cnt, 0u);
}

TEST_F(VsockTest, GuestExceedingOurCreditIsReset) {
  post_rx(8);
  UniqueFd listener = unix_listen(path_ + "_6000");
  send(hdr(kVsockOpRequest, 1, 6000));
  ASSERT_TRUE(wait_for(kVsockOpResponse));
  UniqueFd conn(::accept(listener.get(), nullptr, nullptr));
  // The host never reads: its socket buffer fills, then our kConnBufAlloc, then one more packet.
  auto chunk = random_bytes(kMaxPacketPayload, 2);
  bool reset = false;
  for (int i = 0; i < 200 && !reset; ++i) {
    send(hdr(kVsockOpRw, 1, 6000, kMaxPacketPayload), chunk);
    for (auto& p : received()) reset |= p.h.op == kVsockOpRst;
  }
  EXPECT_TRUE(reset);
  EXPECT_EQ(dev_->connection_count(), 0u);
}

TEST_F(VsockTest, HostVanishingWithBufferedDataResetsTheGuest) {
  post_rx(8);
  UniqueFd listener = unix_listen(path_ + "_6000");
  send(hdr(kVsockOpRequest, 1, 6000));
  ASSERT_TRUE(wait_for(kVsockOpResponse));
  UniqueFd conn(::accept(listener.get(), nullptr, nullptr));
  send(hdr(kVsockOpRequest, 2, 6000));  // a bystander that must survive
  ASSERT_TRUE(wait_for(kVsockOpResponse));
  UniqueFd other(::accept(listener.get(), nullptr, nullptr));
  // Fill the host socket (a Unix socket takes about 208 KiB) so the device keeps some itself.
  auto chunk = random_bytes(kMaxPacketPayload, 7);
  for (int i = 0; i < 4; ++i) send(hdr(kVsockOpRw, 1, 6000, kMaxPacketPayload), chunk);
  // The host goes away; before the event loop notices, the guest sends more.
  conn.reset();
  send(hdr(kVsockOpRw, 1, 6000, 100), std::span(chunk).first(100));
  auto rst = wait_for(kVsockOpRst);
  ASSERT_TRUE(rst);
  EXPECT_EQ(rst->h.dst_port, 1u);
  EXPECT_EQ(dev_->connection_count(), 1u);
  EXPECT_FALSE(dev_->needs_reset());
}

TEST_F(VsockTest, NoRxBuffersMeansTheHostIsNotRead) {
  post_rx(1);
  auto [fd, host_port] = host_connect(5000);
  ASSERT_TRUE(fd);
  // Take the one buffer back out of circulation: the device has nowhere to put data.
  auto data = random_bytes(3000, 3);
  ASSERT_TRUE(write_all(fd.get(), data));
  pump();
  auto first = received(false);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].payload, data);
  auto more = random_bytes(100000, 4);
  ASSERT_TRUE(write_all(fd.get(), std::span(more).first(50000)));
  pump(20);
  EXPECT_TRUE(received(false).empty());
  // Buffers come back: everything arrives, in order.
  post_rx(32);
  std::vector<std::byte> got;
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (got.size() < 50000 && std::chrono::steady_clock::now() < deadline) {
    pump(1);
    for (auto& p : received())
      if (p.h.op == kVsockOpRw) got.insert(got.end(), p.payload.begin(), p.payload.end());
  }
  EXPECT_EQ(got, std::vector<std::byte>(more.begin(), more.begin() + 50000));
}

TEST_F(VsockTest, DeviceResetClosesHostConnections) {
  post_rx(8);
  auto [fd, host_port] = host_connect(5000);
  ASSERT_TRUE(fd);
  testing::reg_write(*t_, 0x70, 0);
  EXPECT_EQ(dev_->connection_count(), 0u);
  EXPECT_TRUE(host_sees_eof(fd.get()));
}

TEST_F(VsockTest, MachineStopClosesConnectionsAndTheListener) {
  post_rx(8);
  auto [fd, host_port] = host_connect(5000);
  ASSERT_TRUE(fd);
  dev_->on_machine_stopped();
  EXPECT_EQ(dev_->connection_count(), 0u);
  EXPECT_TRUE(host_sees_eof(fd.get()));
  EXPECT_FALSE(std::filesystem::exists(path_));  // new clients fail at once, not hang
  dev_->on_machine_stopped();                     // and again (the destructor does) is harmless
}

TEST_F(VsockTest, TransportResetEvent) {
  auto ev = evq_.writable(4);
  mem_.write_obj<uint32_t>(ev.addr, 0xffffffff);
  evq_.add_chain({ev});
  t_->queue_notify(2);
  EXPECT_TRUE(evq_.collect_used().empty());  // nothing to report yet
  dev_->send_transport_reset();
  auto used = evq_.collect_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].len, 4u);
  EXPECT_EQ(mem_.read_obj<uint32_t>(ev.addr), kVsockEventTransportReset);
}

// ---------------------------------------------------------------- snapshots

MmioTransportState round_trip(const MmioTransportState& s) {
  snapshot::Encoder e;
  save(e, s);
  auto bytes = e.take();
  snapshot::Decoder d(bytes, "virtio-mmio vsock");
  auto out = load_mmio_transport_state(d);
  d.finish();
  return out;
}

// What the machine does: capture the transport, let the old device go (its host connections
// end), build a fresh device from the configuration and restore the transport state into it,
// then send TRANSPORT_RESET before any vCPU runs.
struct VsockSnapshotTest : VsockTest {
  void restore_clone(uint64_t cid = kGuestCid) {
    const MmioTransportState saved = round_trip(t_->save_state());
    t_.reset();
    dev_.reset();
    irq_ = std::make_shared<testing::CountingInterrupt>();
    dev_ = Vsock::create(loop_, cid, path_, kQueueSize);
    t_ = std::make_unique<MmioTransport>(mem_, dev_, irq_, saved);
  }
};

TEST_F(VsockSnapshotTest, RestoredCloneSendsTransportResetAndServesNewConnections) {
  post_rx(8);
  auto [old_fd, old_port] = host_connect(5000);
  ASSERT_TRUE(old_fd);
  // The guest driver keeps event buffers posted (Linux fills the whole event queue at probe).
  auto ev = evq_.writable(4);
  mem_.write_obj<uint32_t>(ev.addr, 0xffffffff);
  evq_.add_chain({ev});
  t_->queue_notify(2);
  ASSERT_TRUE(evq_.collect_used().empty());

  restore_clone();
  EXPECT_TRUE(host_sees_eof(old_fd.get()));  // the old device's host side is gone
  EXPECT_TRUE(dev_->active());
  EXPECT_EQ(dev_->connection_count(), 0u);
  EXPECT_EQ(irq_->count, 0);

  dev_->send_transport_reset();
  auto used = evq_.collect_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].len, 4u);
  EXPECT_EQ(mem_.read_obj<uint32_t>(ev.addr), kVsockEventTransportReset);
  EXPECT_EQ(irq_->count, 1);
  EXPECT_TRUE(testing::reg_read(*t_, 0x060) & kInterruptUsedBuffer);
  dev_->send_transport_reset();  // a second one waits for the next event buffer
  EXPECT_TRUE(evq_.collect_used().empty());

  // The restored rx and tx queues carry on where the old device left them: a new host
  // connection is set up through the same rings.
  auto [fd, port] = host_connect(5001);
  ASSERT_TRUE(fd);
  EXPECT_EQ(dev_->connection_count(), 1u);
  send(hdr(kVsockOpRw, 5001, port, 3), testing::bytes_of("abc"));
  auto got = host_read(fd.get(), 3);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(got.data()), got.size()), "abc");
}

TEST_F(VsockSnapshotTest, TransportResetWaitsForAnEventBuffer) {
  restore_clone();
  dev_->send_transport_reset();  // the driver left no event buffer
  EXPECT_TRUE(evq_.collect_used().empty());
  EXPECT_EQ(irq_->count, 0);
  auto ev = evq_.writable(4);
  evq_.add_chain({ev});
  t_->queue_notify(2);
  auto used = evq_.collect_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(mem_.read_obj<uint32_t>(ev.addr), kVsockEventTransportReset);
  EXPECT_EQ(irq_->count, 1);
}

TEST_F(VsockSnapshotTest, DriverResetDropsAPendingTransportReset) {
  restore_clone();
  dev_->send_transport_reset();
  FakeQueue rx2(mem_, alloc_, kQueueSize), tx2(mem_, alloc_, kQueueSize), ev2(mem_, alloc_, 8);
  ASSERT_EQ(testing::mmio_activate(*t_, {&rx2, &tx2, &ev2}), 0xfu);  // a new driver: reset first
  ev2.add_chain({ev2.writable(4)});
  t_->queue_notify(2);
  EXPECT_TRUE(ev2.collect_used().empty());
}

TEST_F(VsockSnapshotTest, GuestCidComesFromTheConfigurationNotTheSnapshot) {
  restore_clone(7);
  EXPECT_EQ(dev_->guest_cid(), 7u);
  uint64_t cid = 0;
  t_->read(0x100, std::as_writable_bytes(std::span(&cid, 1)));
  EXPECT_EQ(cid, 7u);
}

TEST_F(VsockSnapshotTest, AnInactiveDeviceGetsNoTransportReset) {
  testing::reg_write(*t_, 0x70, 0);  // the driver let go of the device
  restore_clone();
  EXPECT_FALSE(dev_->active());
  dev_->send_transport_reset();
  FakeQueue rx2(mem_, alloc_, kQueueSize), tx2(mem_, alloc_, kQueueSize), ev2(mem_, alloc_, 8);
  ASSERT_EQ(testing::mmio_activate(*t_, {&rx2, &tx2, &ev2}), 0xfu);
  ev2.add_chain({ev2.writable(4)});
  t_->queue_notify(2);
  EXPECT_TRUE(ev2.collect_used().empty());  // the new driver starts clean
}

TEST_F(VsockTest, OneMebibyteEachWayHostInitiated) {
  post_rx(32);
  guest_buf_alloc_ = 64 * 1024;  // small, so credit updates matter
  auto data = random_bytes(1 << 20, 5);
  std::vector<std::byte> echoed;
  std::atomic<bool> host_done{false};
  std::atomic<uint32_t> port{0};
  std::thread host([&] {
    UniqueFd fd = unix_connect(path_);
    write_str(fd.get(), "CONNECT 5000\n");
    std::string ok;
    char ch;
    while (::recv(fd.get(), &ch, 1, 0) == 1 && ch != '\n') ok += ch;
    port = static_cast<uint32_t>(std::stoul(ok.substr(3)));
    std::thread reader([&] { echoed = read_to_eof(fd.get()); });
    write_all(fd.get(), data);
    ::shutdown(fd.get(), SHUT_WR);
    reader.join();
    host_done = true;
  });

  // The guest: accept, echo, close when the host is done.
  std::deque<std::byte> pending;
  uint32_t host_port = 0, dev_buf_alloc = 0, dev_fwd_cnt = 0, tx_cnt = 0, last_fwd_sent = 0;
  uint32_t rx_bytes = 0;
  bool host_shut = false, sent_shutdown = false, got_rst = false;
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (!(host_done && got_rst) && std::chrono::steady_clock::now() < deadline) {
    loop_.run_once(1);
    for (auto& p : received()) {
      dev_buf_alloc = p.h.buf_alloc;
      dev_fwd_cnt = p.h.fwd_cnt;
      switch (p.h.op) {
        case kVsockOpRequest:
          host_port = p.h.src_port;
          send(hdr(kVsockOpResponse, 5000, host_port));
          break;
        case kVsockOpRw:
          rx_bytes += p.h.len;
          // Never more than we advertised beyond what we consumed.
          ASSERT_LE(rx_bytes - guest_fwd_cnt_, guest_buf_alloc_);
          pending.insert(pending.end(), p.payload.begin(), p.payload.end());
          guest_fwd_cnt_ += p.h.len;  // consumed at once (copied to pending)
          break;
        case kVsockOpShutdown: host_shut = true; break;
        case kVsockOpRst: got_rst = true; break;
        default: break;
      }
    }
    if (!host_port) continue;
    if (guest_fwd_cnt_ - last_fwd_sent >= 16 * 1024) {
      send(hdr(kVsockOpCreditUpdate, 5000, host_port));
      last_fwd_sent = guest_fwd_cnt_;
    }
    while (!pending.empty()) {
      uint32_t credit = dev_buf_alloc - (tx_cnt - dev_fwd_cnt);
      uint32_t n = std::min<uint32_t>({credit, kMaxPacketPayload, static_cast<uint32_t>(pending.size())});
      if (n == 0) break;
      std::vector<std::byte> chunk(pending.begin(), pending.begin() + n);
      pending.erase(pending.begin(), pending.begin() + n);
      send(hdr(kVsockOpRw, 5000, host_port, n), chunk);
      last_fwd_sent = guest_fwd_cnt_;
      tx_cnt += n;
    }
    if (host_shut && pending.empty() && !sent_shutdown) {
      send(hdr(kVsockOpShutdown, 5000, host_port, 0, kVsockShutdownSend));
      sent_shutdown = true;
    }
  }
  host.join();
  EXPECT_TRUE(got_rst);
  EXPECT_EQ(port.load(), host_port);
  ASSERT_EQ(echoed.size(), data.size());
  EXPECT_TRUE(echoed == data);
  EXPECT_EQ(dev_->connection_count(), 0u);
}

TEST_F(VsockTest, OneMebibyteEachWayGuestInitiated) {
  post_rx(32);
  guest_buf_alloc_ = 64 * 1024;
  UniqueFd listener = unix_listen(path_ + "_7000");
  std::thread host([&] {  // a host echo server
    UniqueFd c(::accept(listener.get(), nullptr, nullptr));
    std::array<std::byte, 8192> buf;
    for (;;) {
      ssize_t n = ::recv(c.get(), buf.data(), buf.size(), 0);
      if (n <= 0) break;
      if (!write_all(c.get(), std::span(buf).first(static_cast<size_t>(n)))) break;
    }
    ::shutdown(c.get(), SHUT_WR);
    // Keep the socket until the device closes it.
    (void)read_to_eof(c.get());
  });

  auto data = random_bytes(1 << 20, 6);
  send(hdr(kVsockOpRequest, 4321, 7000));
  std::vector<std::byte> got;
  uint32_t dev_buf_alloc = 0, dev_fwd_cnt = 0, tx_cnt = 0, last_fwd_sent = 0;
  size_t sent = 0;
  bool connected = false, sent_shutdown = false, host_shut = false, got_rst = false;
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (!got_rst && std::chrono::steady_clock::now() < deadline) {
    loop_.run_once(1);
    for (auto& p : received()) {
      dev_buf_alloc = p.h.buf_alloc;
      dev_fwd_cnt = p.h.fwd_cnt;
      switch (p.h.op) {
        case kVsockOpResponse: connected = true; break;
        case kVsockOpRw:
          ASSERT_LE(got.size() + p.h.len - guest_fwd_cnt_, guest_buf_alloc_);
          got.insert(got.end(), p.payload.begin(), p.payload.end());
          guest_fwd_cnt_ += p.h.len;
          break;
        case kVsockOpShutdown: host_shut = true; break;
        case kVsockOpRst: got_rst = true; break;
        default: break;
      }
    }
    if (!connected) continue;
    if (guest_fwd_cnt_ - last_fwd_sent >= 16 * 1024) {
      send(hdr(kVsockOpCreditUpdate, 4321, 7000));
      last_fwd_sent = guest_fwd_cnt_;
    }
    while (sent < data.size()) {
      uint32_t credit = dev_buf_alloc - (tx_cnt - dev_fwd_cnt);
      uint32_t n = std::min<uint32_t>({credit, kMaxPacketPayload, static_cast<uint32_t>(data.size() - sent)});
      if (n == 0) break;
      send(hdr(kVsockOpRw, 4321, 7000, n), std::span(data).subspan(sent, n));
      last_fwd_sent = guest_fwd_cnt_;
      sent += n;
      tx_cnt += n;
    }
    if (sent == data.size() && !sent_shutdown) {
      send(hdr(kVsockOpShutdown, 4321, 7000, 0, kVsockShutdownSend));
      sent_shutdown = true;
    }
  }
  host.join();
  EXPECT_TRUE(host_shut);
  EXPECT_TRUE(got_rst);
  ASSERT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data);
  EXPECT_EQ(dev_->connection_count(), 0u);
}

}  // namespace
}  // namespace sm::virtio
