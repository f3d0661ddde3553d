#include "vmm/machine_config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "arch/x86_64/layout.h"
#include "common/error.h"

namespace sm::vmm {
namespace {

namespace fs = std::filesystem;

// A file the VMM will read (kernel, initrd) or read and maybe write (disk).
void check_file(const fs::path& p, const char* what, bool allow_block_device, bool writable) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) {
    if (errno == ENOENT) throw Error(fmt::format("{} {} does not exist", what, p.string()));
    throw sys_error(fmt::format("{} {}", what, p.string()));
  }
  bool ok = S_ISREG(st.st_mode) || (allow_block_device && S_ISBLK(st.st_mode));
  if (!ok)
    throw Error(fmt::format("{} {} is not a regular file{}", what, p.string(),
                            allow_block_device ? " or block device" : ""));
  if (::access(p.c_str(), writable ? (R_OK | W_OK) : R_OK) != 0)
    throw Error(fmt::format("{} {} is not {}: {}", what, p.string(),
                            writable ? "readable and writable" : "readable", std::strerror(errno)));
}

}  // namespace

bool has_network(const MachineConfig& cfg) { return cfg.network && cfg.network->mode != net::Mode::none; }

size_t virtio_device_count(const MachineConfig& cfg) {
  return cfg.disks.size() + 1 /* rng */ + (cfg.vsock_uds ? 1 : 0) + (has_network(cfg) ? 1 : 0);
}

void validate(const MachineConfig& cfg, uint64_t host_ram) {
  if (cfg.cpus < 1 || cfg.cpus > kMaxCpus)
    throw Error(fmt::format("--cpus {} is out of range: a VM has 1 to {} vCPUs", cfg.cpus, kMaxCpus));

  if (cfg.memory_mib < kMinMemoryMib)
    throw Error(fmt::format("--memory {} MiB is too small: a Linux guest needs at least {} MiB",
                            cfg.memory_mib, kMinMemoryMib));
  const uint64_t cap_mib = std::min(host_ram, x86::kMaxRamBytes) >> 20;
  if (cfg.memory_mib > cap_mib)
    throw Error(fmt::format("--memory {} MiB is too large: {} has {} MiB; use at most that", cfg.memory_mib,
                            host_ram < x86::kMaxRamBytes ? "this host" : "the VM layout", cap_mib));

  if (cfg.kernel.empty()) throw Error("no kernel given: pass --kernel PATH (a vmlinux or bzImage)");
  check_file(cfg.kernel, "kernel", false, false);
  if (cfg.initrd) check_file(*cfg.initrd, "initrd", false, false);
  for (const auto& d : cfg.disks) check_file(d.path, "disk", true, !d.read_only);

  if (cfg.vsock_uds) {
    const fs::path& p = *cfg.vsock_uds;
    if (p.empty()) throw Error("--vsock needs a socket path");
    std::error_code ec;
    if (fs::exists(fs::symlink_status(p, ec)))
      throw Error(fmt::format("vsock socket {} exists already: remove it or pick another path", p.string()));
    fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
    if (!fs::is_directory(dir, ec))
      throw Error(fmt::format("vsock socket {}: directory {} does not exist", p.string(), dir.string()));
    // sun_path holds 108 bytes including the NUL; "PATH_<port>" for guest-initiated
    // connections needs room for up to 11 more.
    if (p.string().size() + 11 >= 108)
      throw Error(fmt::format("vsock socket path {} is too long for a Unix socket (keep it under 96 bytes)",
                              p.string()));
  }
  if (cfg.vsock_cid < 3 || cfg.vsock_cid > 0xffffffffu)
    throw Error(fmt::format("vsock CID {} is invalid: guest CIDs start at 3", cfg.vsock_cid));

  if (has_network(cfg)) {
    const auto& n = *cfg.network;
    if (n.mode == net::Mode::tap && n.tap_name.empty())
      throw Error("--network tap:NAME needs the name of a TAP interface");
    if (n.plan.mtu < 576 || n.plan.mtu > net::kMaxMtu)
      throw Error(fmt::format("MTU {} is out of range: 576 to {}", n.plan.mtu, net::kMaxMtu));
  }

  if (virtio_device_count(cfg) > x86::kMaxVirtioDevices)
    throw Error(fmt::format("too many devices: {} virtio devices asked for, at most {} fit ({} disks)",
                            virtio_device_count(cfg), x86::kMaxVirtioDevices, x86::kMaxVirtioDevices - 2));
}

uint64_t host_ram_bytes() {
  long pages = ::sysconf(_SC_PHYS_PAGES);
  long page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return x86::kMaxRamBytes;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
}

std::string kernel_cmdline(std::span<const VirtioMmioSlot> devices, std::string_view extra) {
  std::string s = "console=ttyS0 reboot=k panic=-1";
  for (const auto& d : devices) s += fmt::format(" virtio_mmio.device=4K@{:#x}:{}", d.addr, d.irq);
  // Trim the user's part so stray spaces don't produce empty parameters.
  auto b = extra.find_first_not_of(" \t\n");
  if (b != std::string_view::npos) {
    auto e = extra.find_last_not_of(" \t\n");
    s += ' ';
    s += extra.substr(b, e - b + 1);
  }
  return s;
}

}  // namespace sm::vmm
