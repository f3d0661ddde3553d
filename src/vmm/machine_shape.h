// What a snapshot must match to be restored: the machine's shape (memory layout, vCPUs, the
// virtio devices in slot order with their addresses and interrupt lines) and the identities of
// what produced its state (kernel, initramfs, disks, the VMM build, and whatever the owner
// adds: the image's digest, ...). Saved as the snapshot's `machine` section; a restore builds
// the shape its configuration would give and refuses, naming the difference, unless they agree.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "snapshot/codec.h"

namespace sm::vmm {

struct DeviceSlot {
  uint32_t device_id = 0;  // virtio device ID
  uint64_t mmio_addr = 0;
  uint32_t gsi = 0;
  uint32_t queues = 0;
  bool operator==(const DeviceSlot&) const = default;
};

struct MachineShape {
  std::vector<std::pair<uint64_t, uint64_t>> memory;  // (gpa, size) per RAM region
  uint32_t cpus = 0;
  std::vector<DeviceSlot> devices;
  std::string cmdline;  // what the guest booted with (informational: not compared)
  // (what, identity), e.g. ("kernel", "size:mtime"), ("vmm", build id), ("rootfs", digest).
  std::vector<std::pair<std::string, std::string>> identity;
};

void save(snapshot::Encoder& e, const MachineShape& s);
[[nodiscard]] MachineShape load_machine_shape(snapshot::Decoder& d);

// Why a snapshot of shape `saved` cannot be restored into a machine of shape `wanted`, in
// words ("the snapshot was made with 2 vCPUs; this VM has 1"), or nullopt when they agree.
[[nodiscard]] std::optional<std::string> shape_mismatch(const MachineShape& saved, const MachineShape& wanted);

// "size:mtime_ns" of a file: cheap to take on every restore, changes when the file is rebuilt
// or replaced. Throws sm::Error when the file cannot be read.
[[nodiscard]] std::string file_fingerprint(const std::string& path);

}  // namespace sm::vmm
