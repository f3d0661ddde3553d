#include "vmm/guest_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

namespace sm {

namespace {
constexpr uint64_t kPage = 4096;

void check_specs(std::span<const GuestMemory::RegionSpec> specs, uint64_t& total) {
  if (specs.empty()) throw Error("guest memory: no regions");
  total = 0;
  uint64_t prev_end = 0;
  for (const auto& s : specs) {
    if (s.size == 0 || s.gpa % kPage || s.size % kPage)
      throw Error(fmt::format("guest memory: region {:#x}+{:#x} is not page aligned", s.gpa, s.size));
    if (s.gpa < prev_end || s.gpa + s.size < s.gpa)
      throw Error("guest memory: regions overlap or are not sorted");
    prev_end = s.gpa + s.size;
    total += s.size;
  }
}

bool all_zero(const std::byte* p, size_t n) {
  // Word at a time; pages are 8-byte aligned.
  const auto* w = reinterpret_cast<const uint64_t*>(p);
  for (size_t i = 0; i < n / 8; ++i)
    if (w[i] != 0) return false;
  return true;
}

// Byte ranges [start, end) of `fd` between `from` and `to` that may hold data (SEEK_DATA /
// SEEK_HOLE); the whole range when the file system cannot say.
std::vector<std::pair<uint64_t, uint64_t>> data_ranges(int fd, uint64_t from, uint64_t to) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  uint64_t pos = from;
  while (pos < to) {
    off_t d = ::lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (d < 0) {
      if (errno == ENXIO) break;  // only holes from here on
      out.emplace_back(pos, to);  // SEEK_DATA unsupported: assume data
      break;
    }
    if (static_cast<uint64_t>(d) >= to) break;
    off_t h = ::lseek(fd, d, SEEK_HOLE);
    uint64_t end = h < 0 ? to : std::min<uint64_t>(static_cast<uint64_t>(h), to);
    out.emplace_back(static_cast<uint64_t>(d), end);
    pos = end;
  }
  return out;
}

}  // namespace

GuestMemory GuestMemory::create(std::span<const RegionSpec> specs) {
  uint64_t total = 0;
  check_specs(specs, total);
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

GuestMemory GuestMemory::map_private(const std::filesystem::path& file, std::span<const RegionSpec> specs) {
  uint64_t total = 0;
  check_specs(specs, total);
  GuestMemory mem;
  mem.private_ = true;
  mem.fd_.reset(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!mem.fd_) throw sys_error("opening the snapshot's memory file " + file.string());
  struct stat st {};
  if (::fstat(mem.fd_.get(), &st) != 0) throw sys_error("stat " + file.string());
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != total)
    throw Error(fmt::format("the snapshot's memory file {} holds {} bytes, not the {} MiB of guest RAM its "
                            "state describes: the snapshot is damaged; make it again",
                            file.string(), static_cast<uint64_t>(st.st_size), total >> 20));
  uint64_t off = 0;
  for (const auto& s : specs) {
    // Writable but private: the guest's writes land in anonymous pages of this process only.
    void* p = ::mmap(nullptr, s.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, mem.fd_.get(),
                     static_cast<off_t>(off));
    if (p == MAP_FAILED) throw sys_error("mapping the snapshot's memory file " + file.string());
    ::madvise(p, s.size, MADV_DONTDUMP);
    mem.regions_.push_back({s.gpa, s.size, off, static_cast<std::byte*>(p)});
    off += s.size;
  }
  return mem;
}

uint64_t GuestMemory::save_to(const std::filesystem::path& path) const {
  UniqueFd out(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!out) throw sys_error("creating the memory file " + path.string());
  const uint64_t total = total_size();
  if (::ftruncate(out.get(), static_cast<off_t>(total)) != 0) throw sys_error("sizing " + path.string());

  // Pages a private mapping's guest wrote are anonymous pages present in our page table; the
  // rest still reads from the source file. /proc/self/pagemap says which (bit 63: present).
  UniqueFd pagemap;
  if (private_) pagemap.reset(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));

  uint64_t written = 0;
  auto write_run = [&](const MemoryRegion& r, uint64_t from, uint64_t to) {
    // Writes the non-zero pages of region bytes [from, to), coalesced into runs.
    uint64_t run_start = from, run_end = from;
    auto flush = [&] {
      if (run_end > run_start) {
        const std::byte* src = r.host + run_start;
        uint64_t left = run_end - run_start, at = r.fd_offset + run_start;
        while (left > 0) {
          ssize_t n = ::pwrite(out.get(), src, std::min<uint64_t>(left, 1u << 30), static_cast<off_t>(at));
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) throw sys_error("writing " + path.string());
          src += n;
          at += static_cast<uint64_t>(n);
          left -= static_cast<uint64_t>(n);
          written += static_cast<uint64_t>(n);
        }
      }
    };
    for (uint64_t p = from; p < to; p += kPage) {
      uint64_t n = std::min(kPage, to - p);
      if (all_zero(r.host + p, n)) {
        flush();
        run_start = run_end = p + n;
      } else {
        if (run_end != p) run_start = p;
        run_end = p + n;
      }
    }
    flush();
  };

  for (const auto& r : regions_) {
    std::vector<std::pair<uint64_t, uint64_t>> ranges;  // region-relative
    for (auto [a, b] : data_ranges(fd_.get(), r.fd_offset, r.fd_offset + r.size))
      ranges.emplace_back(a - r.fd_offset, b - r.fd_offset);
    if (private_) {
      // Add the pages present in the mapping (the guest wrote or read them) that the file's
      // data ranges do not cover; without pagemap, every page.
      std::vector<uint64_t> entries(r.size / kPage);
      bool have = false;
      if (pagemap) {
        uint64_t idx = reinterpret_cast<uintptr_t>(r.host) / kPage;
        ssize_t n = ::pread(pagemap.get(), entries.data(), entries.size() * 8, static_cast<off_t>(idx * 8));
        have = n == static_cast<ssize_t>(entries.size() * 8);
      }
      std::vector<std::pair<uint64_t, uint64_t>> present;
      for (uint64_t i = 0; i < entries.size(); ++i) {
        if (have && !(entries[i] >> 63)) continue;
        if (!present.empty() && present.back().second == i * kPage) present.back().second += kPage;
        else present.emplace_back(i * kPage, (i + 1) * kPage);
      }
      ranges.insert(ranges.end(), present.begin(), present.end());
      std::sort(ranges.begin(), ranges.end());
      std::vector<std::pair<uint64_t, uint64_t>> merged;
      for (auto rg : ranges) {
        if (!merged.empty() && rg.first <= merged.back().second) merged.back().second = std::max(merged.back().second, rg.second);
        else merged.push_back(rg);
      }
      ranges = std::move(merged);
    }
    for (auto [a, b] : ranges) write_run(r, a & ~(kPage - 1), b);
  }
  if (::fsync(out.get()) != 0) throw sys_error("syncing " + path.string());
  return written;
}

GuestMemory::GuestMemory(GuestMemory&& o) noexcept
    : fd_(std::move(o.fd_)), regions_(std::exchange(o.regions_, {})), private_(o.private_) {}

GuestMemory& GuestMemory::operator=(GuestMemory&& o) noexcept {
  if (this != &o) {
    for (auto& r : regions_) ::munmap(r.host, r.size);
    fd_ = std::move(o.fd_);
    regions_ = std::exchange(o.regions_, {});
    private_ = o.private_;
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
