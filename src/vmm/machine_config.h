// What a microVM is made of, before it exists: the configuration the CLI (or the API) fills in,
// its validation, and the kernel command line derived from it. Pure and host-testable; the
// Machine (machine.h) turns a valid config into a running VM.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "net/config.h"

namespace sm::vmm {

struct DiskConfig {
  std::filesystem::path path;
  bool read_only = false;
};

struct MachineConfig {
  std::filesystem::path kernel;                 // ELF vmlinux or bzImage
  std::optional<std::filesystem::path> initrd;  // initramfs (cpio, optionally compressed)
  std::string cmdline_extra;                    // appended after what the VMM puts there
  unsigned cpus = 1;
  uint64_t memory_mib = 256;
  std::vector<DiskConfig> disks;                // /dev/vda, /dev/vdb, ... in this order
  std::optional<std::filesystem::path> vsock_uds;  // host side of virtio-vsock (see vsock.h)
  uint64_t vsock_cid = 3;
  // A virtio-net interface (the last virtio device) on a user-mode NAT or TAP backend; unset or
  // Mode::none: no network device. Published ports are bound before the VM starts.
  std::optional<net::NetworkConfig> network;

  // Guest console (COM1) output; empty discards it. Called from vCPU threads.
  std::function<void(std::span<const std::byte>)> console;
  // A host fd whose bytes become console input (a TTY, pipe or socket), or -1 for none. It is
  // not closed; a TTY is switched to non-canonical, no-echo mode while the VM runs.
  int console_input_fd = -1;
  // Facts a snapshot of this machine records and a restore must match, besides what the
  // machine fingerprints itself (kernel, initrd, disks, the VMM build): e.g. ("rootfs",
  // the image digest). (what, identity) pairs.
  std::vector<std::pair<std::string, std::string>> identity;
  // Block SIGINT/SIGTERM in the process while the VM runs and stop it with 130/143 when one
  // arrives. For programs whose whole job is this VM (the CLI).
  bool stop_on_signals = false;
};

inline constexpr unsigned kMaxCpus = 32;
inline constexpr uint64_t kMinMemoryMib = 32;

// Throws sm::Error naming the first problem and what to do: cpus outside 1..kMaxCpus, memory
// below kMinMemoryMib or above host_ram_bytes (or the layout's 1 TiB cap), a kernel, initrd or
// disk that is missing or not a regular file/block device, a vsock socket path that exists
// already or whose directory does not, more virtio devices than interrupt lines.
void validate(const MachineConfig& cfg, uint64_t host_ram_bytes);

// Physical RAM of this host (sysconf), the default cap for validate().
[[nodiscard]] uint64_t host_ram_bytes();

// One virtio-mmio device as the guest kernel learns of it.
struct VirtioMmioSlot {
  uint64_t addr;
  uint32_t irq;
};

// The kernel command line: "console=ttyS0 reboot=k panic=-1", then
// "virtio_mmio.device=4K@0xADDR:IRQ" per device (Documentation/admin-guide/kernel-parameters.txt,
// virtio_mmio.device), then extra. reboot=k makes the guest reset through the i8042, which ends
// the VM; panic=-1 reboots at once on a panic instead of hanging.
[[nodiscard]] std::string kernel_cmdline(std::span<const VirtioMmioSlot> devices, std::string_view extra);

// Number of virtio devices the config asks for: disks, the always-present rng, vsock, net.
[[nodiscard]] size_t virtio_device_count(const MachineConfig& cfg);
// Whether cfg asks for a network device.
[[nodiscard]] bool has_network(const MachineConfig& cfg);

}  // namespace sm::vmm
