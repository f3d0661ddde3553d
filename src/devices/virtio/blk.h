// virtio-blk (virtio 1.2 §5.2) backed by a host file or block device.
//
// One request queue. Requests: IN (read), OUT (write), FLUSH (fdatasync), GET_ID (the serial,
// 20 bytes, NUL-padded). Anything else gets VIRTIO_BLK_S_UNSUPP. A request past the end of the
// disk, a data length that is not a multiple of 512, a write to a read-only disk, too many data
// segments (> seg_max) or a segment longer than size_max, and a header shorter than 16 bytes
// get VIRTIO_BLK_S_IOERR. A chain with no writable byte for the status is returned with len 0
// (there is nowhere to report the error). Data moves with preadv/pwritev straight between the
// file and guest buffers, synchronously on the notifying thread (the event loop's, with
// ioeventfd), holding the device mutex.
//
// Snapshots: nothing beyond the configuration (path, options) and what VirtioDevice saves (the
// queues, through the transport). Requests complete before the device mutex is released, so none
// is ever in flight at a snapshot. The machine checks that the disk is the same one itself.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "devices/virtio/device.h"

namespace sm::virtio {

// Feature bits (virtio 1.2 §5.2.3).
inline constexpr uint64_t kBlkFSizeMax = 1ull << 1;
inline constexpr uint64_t kBlkFSegMax = 1ull << 2;
inline constexpr uint64_t kBlkFRo = 1ull << 5;
inline constexpr uint64_t kBlkFBlkSize = 1ull << 6;
inline constexpr uint64_t kBlkFFlush = 1ull << 9;

// Request types and status values (virtio 1.2 §5.2.6).
inline constexpr uint32_t kBlkTIn = 0;
inline constexpr uint32_t kBlkTOut = 1;
inline constexpr uint32_t kBlkTFlush = 4;
inline constexpr uint32_t kBlkTGetId = 8;
inline constexpr uint8_t kBlkSOk = 0;
inline constexpr uint8_t kBlkSIoErr = 1;
inline constexpr uint8_t kBlkSUnsupp = 2;
inline constexpr size_t kBlkIdBytes = 20;  // VIRTIO_BLK_ID_BYTES
inline constexpr uint64_t kSectorSize = 512;

struct BlkOptions {
  bool read_only = false;
  // Up to 20 bytes; empty derives one from the file's device and inode numbers.
  std::string serial;
  uint16_t queue_size = 256;
  uint32_t seg_max = 254;           // data segments per request (queue_size - 2 fits one chain)
  uint32_t size_max = 1u << 20;    // bytes per segment
};

class Blk final : public VirtioDevice {
 public:
  // Opens path (O_RDONLY when read_only). Throws sm::Error when it cannot be opened or sized.
  // A size that is not a multiple of 512 leaves the tail unreachable (logged).
  Blk(const std::string& path, BlkOptions options = {});

  [[nodiscard]] uint32_t device_id() const override { return kDeviceIdBlock; }
  [[nodiscard]] uint64_t device_features() const override;
  [[nodiscard]] std::vector<uint16_t> queue_max_sizes() const override { return {options_.queue_size}; }
  [[nodiscard]] uint64_t capacity_sectors() const { return capacity_; }
  [[nodiscard]] const std::string& serial() const { return options_.serial; }

 protected:
  void process_queue(uint16_t q) override;
  [[nodiscard]] std::span<const std::byte> config_bytes() const override;
  [[nodiscard]] std::string name() const override { return "virtio-blk"; }

 private:
  // Handles one request; returns the used length to report.
  uint32_t handle(DescriptorChain& chain);

  std::string path_;
  BlkOptions options_;
  UniqueFd fd_;
  uint64_t capacity_ = 0;  // sectors
  std::vector<std::byte> config_;  // struct virtio_blk_config, first 24 bytes
};

}  // namespace sm::virtio
