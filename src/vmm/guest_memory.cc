#include "vmm/guest_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <utility>

namespace sm {

namespace {
constexpr uint64_t kPage = 4096;
}

GuestMemory GuestMemory::create(std::span<const RegionSpec> specs) {
  if (specs.empty()) throw Error("guest memory: no regions");
  uint64_t total = 0;
  uint64_t prev_end = 0;
  for (const auto& s : specs) {
    if (s.size == 0 || s.gpa % kPage || s.size % kPage)
      throw Error(fmt::format("guest memory: region {:#x}+{:#x} is not page aligned", s.gpa, s.size));
    if (s.gpa < prev_end || s.gpa + s.size < s.gpa)
      throw Error("guest memory: regions overlap or are not sorted");
    prev_end = s.gpa + s.size;
    total += s.size;
  }
  GuestMemory mem;
  mem.fd_.reset(::memfd_create("supermachine-guest-ram", MFD_CLOEXEC));
  if (!mem.fd_) throw sys_error("memfd_create for guest memory");
  if (::ftruncate(mem.fd_.get(), static_cast<off_t>(total)) != 0)
    throw sys_error(fmt::format("sizing guest memory to {} MiB", total >> 20));
  uint64_t off = 0;
  for (const auto& s : specs) {
    void* p = ::mmap(nullptr, s.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                     mem.fd_.get(), static_cast<off_t>(off));
    if (p == MAP_FAILED) throw sys_error("mapping guest memory");
    ::madvise(p, s.size, MADV_DONTDUMP);
    mem.regions_.push_back({s.gpa, s.size, off, static_cast<std::byte*>(p)});
    off += s.size;
  }
  return mem;
}

GuestMemory::GuestMemory(GuestMemory&& o) noexcept
    : fd_(std::move(o.fd_)), regions_(std::exchange(o.regions_, {})) {}

GuestMemory& GuestMemory::operator=(GuestMemory&& o) noexcept {
  if (this != &o) {
    for (auto& r : regions_) ::munmap(r.host, r.size);
    fd_ = std::move(o.fd_);
    regions_ = std::exchange(o.regions_, {});
  }
  return *this;
}

GuestMemory::~GuestMemory() {
  for (auto& r : regions_) ::munmap(r.host, r.size);
}

uint64_t GuestMemory::total_size() const {
  uint64_t t = 0;
  for (const auto& r : regions_) t += r.size;
  return t;
}

const MemoryRegion* GuestMemory::find(uint64_t gpa, uint64_t len) const {
  for (const auto& r : regions_) {
    // Written to avoid overflow: gpa and len are guest-controlled.
    if (gpa >= r.gpa && gpa - r.gpa <= r.size && len <= r.size - (gpa - r.gpa)) {
      if (gpa - r.gpa == r.size && len != 0) continue;
      return &r;
    }
  }
  return nullptr;
}

bool GuestMemory::contains(uint64_t gpa, uint64_t len) const { return find(gpa, len) != nullptr; }

std::span<std::byte> GuestMemory::span(uint64_t gpa, uint64_t len) {
  const MemoryRegion* r = find(gpa, len);
  if (!r) throw GuestError(fmt::format("guest address {:#x}+{:#x} is outside guest RAM", gpa, len));
  return {r->host + (gpa - r->gpa), len};
}

std::span<const std::byte> GuestMemory::span(uint64_t gpa, uint64_t len) const {
  return const_cast<GuestMemory*>(this)->span(gpa, len);
}

void GuestMemory::read(uint64_t gpa, std::span<std::byte> out) const {
  auto src = span(gpa, out.size());
  if (!out.empty()) std::memcpy(out.data(), src.data(), out.size());
}

void GuestMemory::write(uint64_t gpa, std::span<const std::byte> in) {
  auto dst = span(gpa, in.size());
  if (!in.empty()) std::memcpy(dst.data(), in.data(), in.size());
}

}  // namespace sm
