#include "devices/virtio/blk.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>

#include <spdlog/spdlog.h>

namespace sm::virtio {

namespace {

// struct virtio_blk_outhdr (virtio 1.2 §5.2.6): type, reserved, sector.
struct BlkRequestHeader {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
};
static_assert(sizeof(BlkRequestHeader) == 16);

// Moves exactly the bytes of segs between fd at offset and guest memory; false on a short
// transfer (EOF) or an error (errno is logged by the caller).
template <class Seg>
bool transfer(int fd, std::vector<Seg> segs, uint64_t offset, bool to_file) {
  std::vector<iovec> iov;
  iov.reserve(segs.size());
  for (auto& s : segs)
    iov.push_back({const_cast<void*>(static_cast<const void*>(s.data())), s.size()});
  size_t first = 0;
  while (first < iov.size()) {
    int cnt = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
    ssize_t n = to_file ? ::pwritev(fd, &iov[first], cnt, static_cast<off_t>(offset))
                        : ::preadv(fd, &iov[first], cnt, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) {
      errno = EIO;  // the file shrank under us
      return false;
    }
    offset += static_cast<uint64_t>(n);
    size_t left = static_cast<size_t>(n);
    while (left > 0 && first < iov.size()) {
      if (left >= iov[first].iov_len) {
        left -= iov[first].iov_len;
        ++first;
      } else {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
        iov[first].iov_len -= left;
        left = 0;
      }
    }
    while (first < iov.size() && iov[first].iov_len == 0) ++first;
  }
  return true;
}

template <class T>
void put(std::vector<std::byte>& buf, size_t off, T v) {
  std::memcpy(buf.data() + off, &v, sizeof v);
}

}  // namespace

Blk::Blk(const std::string& path, BlkOptions options) : path_(path), options_(std::move(options)) {
  if (options_.serial.size() > kBlkIdBytes)
    throw Error(fmt::format("virtio-blk {}: serial '{}' is longer than {} bytes", path, options_.serial,
                            kBlkIdBytes));
  if (options_.seg_max == 0 || options_.size_max < kSectorSize)
    throw Error(fmt::format("virtio-blk {}: seg_max must be >= 1 and size_max >= 512", path));
  fd_.reset(::open(path.c_str(), (options_.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
  if (!fd_) {
    throw sys_error(fmt::format("opening disk image {}{}", path,
                                options_.read_only ? "" : " read-write (add :ro for a read-only disk)"));
  }
  // Another VM writing the same image would corrupt it, or what this one reads: a read-write disk
  // takes an exclusive lock, a read-only one a shared lock (as QEMU does), for the device's
  // lifetime. flock locks belong to this open file description, so they also hold within one
  // process and go with the fd.
  if (::flock(fd_.get(), (options_.read_only ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      throw Error(fmt::format("disk image {} is in use by another VM{}", path,
                              options_.read_only ? " that writes to it"
                                                 : " (a read-write disk must be used by one VM "
                                                   "only; add :ro to share it read-only)"));
    throw sys_error(fmt::format("locking disk image {}", path));
  }
  struct stat st {};
  if (::fstat(fd_.get(), &st) != 0) throw sys_error(fmt::format("stat {}", path));
  uint64_t bytes = 0;
  if (S_ISBLK(st.st_mode)) {
    if (::ioctl(fd_.get(), BLKGETSIZE64, &bytes) != 0) throw sys_error(fmt::format("sizing block device {}", path));
  } else if (S_ISREG(st.st_mode)) {
    bytes = static_cast<uint64_t>(st.st_size);
  } else {
    throw Error(fmt::format("disk image {} is neither a regular file nor a block device", path));
  }
  if (bytes % kSectorSize)
    spdlog::warn("virtio-blk {}: size {} is not a multiple of 512; the last {} bytes are not visible",
                 path, bytes, bytes % kSectorSize);
  capacity_ = bytes / kSectorSize;
  if (options_.serial.empty()) {
    options_.serial = fmt::format("sm{:x}.{:x}", static_cast<uint64_t>(st.st_dev),
                                  static_cast<uint64_t>(st.st_ino));
    if (options_.serial.size() > kBlkIdBytes) options_.serial.resize(kBlkIdBytes);
  }
  // struct virtio_blk_config (virtio 1.2 §5.2.4) up to blk_size.
  config_.assign(24, std::byte{0});
  put<uint64_t>(config_, 0, capacity_);
  put<uint32_t>(config_, 8, options_.size_max);
  put<uint32_t>(config_, 12, options_.seg_max);
  put<uint32_t>(config_, 20, static_cast<uint32_t>(kSectorSize));
}

uint64_t Blk::device_features() const {
  uint64_t f = kFeatureVersion1 | kFeatureIndirectDesc | kFeatureEventIdx | kBlkFSizeMax | kBlkFSegMax |
               kBlkFFlush;
  if (options_.read_only) f |= kBlkFRo;
  return f;
}

std::span<const std::byte> Blk::config_bytes() const { return config_; }

void Blk::process_queue(uint16_t q) {
  if (q != 0) return;
  Queue& queue = queues_[0];
  bool pushed = false;
  while (auto chain = queue.pop(*mem_)) {
    uint32_t len = handle(*chain);
    queue.push_used(*mem_, chain->head(), len);
    pushed = true;
  }
  if (pushed) signal_used(0);
}

uint32_t Blk::handle(DescriptorChain& chain) {
  // Layout (§5.2.6): header (readable), data (readable for OUT, writable for IN/GET_ID), and a
  // status byte, the last writable byte.
  if (chain.writable_len() == 0) {
    spdlog::debug("virtio-blk: request without a status byte; dropped");
    return 0;
  }
  const uint64_t data_writable = chain.writable_len() - 1;
  auto finish = [&](uint8_t status) -> uint32_t {
    chain.skip_writable(data_writable - std::min(data_writable, chain.bytes_written()));
    std::byte b{status};
    (void)chain.write({&b, 1});
    return static_cast<uint32_t>(chain.bytes_written());
  };

  BlkRequestHeader hdr{};
  if (chain.read(std::as_writable_bytes(std::span(&hdr, 1))) != sizeof hdr) {
    spdlog::debug("virtio-blk: request header shorter than 16 bytes");
    return finish(kBlkSIoErr);
  }

  // Advertised limits (seg_max data segments plus header and status; size_max per segment).
  if (chain.descriptor_count() > size_t{options_.seg_max} + 2) return finish(kBlkSIoErr);
  for (auto segs : {chain.readable(), chain.writable()})
    for (auto s : segs)
      if (s.size() > options_.size_max) return finish(kBlkSIoErr);

  auto in_range = [&](uint64_t len) {
    return len % kSectorSize == 0 && hdr.sector <= capacity_ && len / kSectorSize <= capacity_ - hdr.sector;
  };

  switch (hdr.type) {
    case kBlkTIn: {
      if (!in_range(data_writable)) return finish(kBlkSIoErr);
      if (!transfer(fd_.get(), chain.writable_rest(data_writable), hdr.sector * kSectorSize, false)) {
        spdlog::warn("virtio-blk {}: read at sector {}: {}", path_, hdr.sector, std::strerror(errno));
        return finish(kBlkSIoErr);
      }
      chain.skip_writable(data_writable);
      return finish(kBlkSOk);
    }
    case kBlkTOut: {
      uint64_t len = chain.readable_remaining();
      if (options_.read_only || !in_range(len)) return finish(kBlkSIoErr);
      if (!transfer(fd_.get(), chain.readable_rest(), hdr.sector * kSectorSize, true)) {
        spdlog::warn("virtio-blk {}: write at sector {}: {}", path_, hdr.sector, std::strerror(errno));
        return finish(kBlkSIoErr);
      }
      return finish(kBlkSOk);
    }
    case kBlkTFlush:
      if (!options_.read_only && ::fdatasync(fd_.get()) != 0) {
        spdlog::warn("virtio-blk {}: flush: {}", path_, std::strerror(errno));
        return finish(kBlkSIoErr);
      }
      return finish(kBlkSOk);
    case kBlkTGetId: {
      std::array<std::byte, kBlkIdBytes> id{};
      std::memcpy(id.data(), options_.serial.data(), options_.serial.size());
      (void)chain.write(std::span(id).first(std::min<uint64_t>(id.size(), data_writable)));
      return finish(kBlkSOk);
    }
    default:
      return finish(kBlkSUnsupp);
  }
}

}  // namespace sm::virtio
