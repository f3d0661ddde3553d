#include "vmm/bus.h"

#include <cstring>

#include "common/error.h"

namespace sm {

void Bus::add(uint64_t base, uint64_t size, std::shared_ptr<IoHandler> handler) {
  if (frozen_) throw Error(fmt::format("{} bus: cannot add a device after start", name_));
  if (size == 0 || base + size < base)
    throw Error(fmt::format("{} bus: invalid range {:#x}+{:#x}", name_, base, size));
  auto next = ranges_.lower_bound(base);
  if (next != ranges_.end() && next->first < base + size)
    throw Error(fmt::format("{} bus: range {:#x}+{:#x} overlaps {:#x}", name_, base, size, next->first));
  if (next != ranges_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.size > base)
      throw Error(fmt::format("{} bus: range {:#x}+{:#x} overlaps {:#x}", name_, base, size, prev->first));
  }
  ranges_.emplace(base, Range{size, std::move(handler)});
}

const std::pair<const uint64_t, Bus::Range>* Bus::lookup(uint64_t addr, uint64_t len) const {
  auto it = ranges_.upper_bound(addr);
  if (it == ranges_.begin()) return nullptr;
  --it;
  uint64_t off = addr - it->first;
  if (off >= it->second.size || len > it->second.size - off) return nullptr;
  return &*it;
}

bool Bus::read(uint64_t addr, std::span<std::byte> data) const {
  const auto* r = lookup(addr, data.size());
  if (!r) {
    std::memset(data.data(), 0xff, data.size());
    return false;
  }
  r->second.handler->read(addr - r->first, data);
  return true;
}

bool Bus::write(uint64_t addr, std::span<const std::byte> data) const {
  const auto* r = lookup(addr, data.size());
  if (!r) return false;
  r->second.handler->write(addr - r->first, data);
  return true;
}

}  // namespace sm
