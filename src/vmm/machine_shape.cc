#include "vmm/machine_shape.h"

#include <sys/stat.h>

#include <fmt/format.h>

namespace sm::vmm {
namespace {

constexpr uint32_t kShapeLayout = 1;
constexpr size_t kMaxRegions = 16;
constexpr size_t kMaxDevices = 64;
constexpr size_t kMaxIdentities = 64;
constexpr size_t kMaxString = 4096;

}  // namespace

void save(snapshot::Encoder& e, const MachineShape& s) {
  e.u32(kShapeLayout);
  e.count(s.memory.size());
  for (auto [gpa, size] : s.memory) {
    e.u64(gpa);
    e.u64(size);
  }
  e.u32(s.cpus);
  e.count(s.devices.size());
  for (const auto& d : s.devices) {
    e.u32(d.device_id);
    e.u64(d.mmio_addr);
    e.u32(d.gsi);
    e.u32(d.queues);
  }
  e.str(s.cmdline);
  e.count(s.identity.size());
  for (const auto& [k, v] : s.identity) {
    e.str(k);
    e.str(v);
  }
}

MachineShape load_machine_shape(snapshot::Decoder& d) {
  if (uint32_t v = d.u32(); v != kShapeLayout) d.fail(fmt::format("machine layout version {} (this build reads {})", v, kShapeLayout));
  MachineShape s;
  size_t n = d.count(kMaxRegions, 16);
  for (size_t i = 0; i < n; ++i) {
    uint64_t gpa = d.u64();
    uint64_t size = d.u64();
    s.memory.emplace_back(gpa, size);
  }
  s.cpus = d.u32();
  n = d.count(kMaxDevices, 20);
  for (size_t i = 0; i < n; ++i) {
    DeviceSlot slot;
    slot.device_id = d.u32();
    slot.mmio_addr = d.u64();
    slot.gsi = d.u32();
    slot.queues = d.u32();
    s.devices.push_back(slot);
  }
  s.cmdline = d.str(kMaxString);
  n = d.count(kMaxIdentities, 8);
  for (size_t i = 0; i < n; ++i) {
    std::string k = d.str(kMaxString);
    std::string v = d.str(kMaxString);
    s.identity.emplace_back(std::move(k), std::move(v));
  }
  d.finish();
  return s;
}

std::optional<std::string> shape_mismatch(const MachineShape& saved, const MachineShape& wanted) {
  if (saved.memory != wanted.memory) {
    auto total = [](const MachineShape& s) {
      uint64_t t = 0;
      for (auto [gpa, size] : s.memory) t += size;
      return t >> 20;
    };
    return fmt::format("the snapshot's guest has {} MiB of memory; this VM is configured with {} MiB", total(saved),
                       total(wanted));
  }
  if (saved.cpus != wanted.cpus)
    return fmt::format("the snapshot was made with {} vCPU(s); this VM is configured with {}", saved.cpus, wanted.cpus);
  if (saved.devices.size() != wanted.devices.size())
    return fmt::format("the snapshot's VM has {} virtio devices; this VM has {} (different disks or vsock?)",
                       saved.devices.size(), wanted.devices.size());
  for (size_t i = 0; i < saved.devices.size(); ++i)
    if (!(saved.devices[i] == wanted.devices[i]))
      return fmt::format("virtio slot {} differs: the snapshot has device type {} with {} queues at {:#x} (GSI {}), "
                         "this VM device type {} with {} queues at {:#x} (GSI {})",
                         i, saved.devices[i].device_id, saved.devices[i].queues, saved.devices[i].mmio_addr,
                         saved.devices[i].gsi, wanted.devices[i].device_id, wanted.devices[i].queues,
                         wanted.devices[i].mmio_addr, wanted.devices[i].gsi);
  for (const auto& [k, v] : wanted.identity) {
    const std::string* have = nullptr;
    for (const auto& [sk, sv] : saved.identity)
      if (sk == k) have = &sv;
    if (!have) return fmt::format("the snapshot does not record the identity of its {}", k);
    if (*have != v)
      return fmt::format("the {} differs from the one the snapshot was made with (snapshot: {}, now: {})", k, *have, v);
  }
  for (const auto& [k, v] : saved.identity) {
    bool found = false;
    for (const auto& [wk, wv] : wanted.identity) found = found || wk == k;
    if (!found) return fmt::format("the snapshot was made with a {} ({}) this VM does not have", k, v);
  }
  return std::nullopt;
}

std::string file_fingerprint(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw sys_error("stat " + path);
  return fmt::format("{}:{}.{:09}", static_cast<uint64_t>(st.st_size), static_cast<int64_t>(st.st_mtim.tv_sec),
                     static_cast<int64_t>(st.st_mtim.tv_nsec));
}

}  // namespace sm::vmm
