// Guest physical memory: one memfd holding every RAM region back to back, mapped shared into
// the VMM; or, for a VM restored from a snapshot, the snapshot's memory file mapped
// copy-on-write (MAP_PRIVATE): nothing is copied at restore, clones share the page cache, and
// the file is never written. save_to() writes either kind to a sparse file (holes for pages
// that were never written or are all zero).
//
// Everything the guest can name (addresses in descriptors, lengths, ring indices) reaches host
// memory only through the checked accessors here: an address or length outside RAM raises
// sm::GuestError, never an out-of-bounds access. Regions never overlap and are sorted by gpa.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <type_traits>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"

namespace sm {

struct MemoryRegion {
  uint64_t gpa = 0;        // guest physical start
  uint64_t size = 0;       // bytes
  uint64_t fd_offset = 0;  // offset of this region in the memfd
  std::byte* host = nullptr;
};

class GuestMemory {
 public:
  struct RegionSpec {
    uint64_t gpa;
    uint64_t size;
  };
  // Creates a memfd sized for all regions and maps it. Regions must be page aligned, sorted,
  // and must not overlap.
  static GuestMemory create(std::span<const RegionSpec> regions);
  // Maps `file` (regions back to back, as save_to() writes them) copy-on-write. The file must be
  // exactly as large as the regions; throws sm::Error otherwise.
  static GuestMemory map_private(const std::filesystem::path& file, std::span<const RegionSpec> regions);

  // Writes every region, back to back, to a new sparse file at `path` (which must not exist).
  // Only ranges that may hold data are read (SEEK_DATA on the memfd, or the source file's data
  // plus the pages the guest dirtied in a private mapping), and all-zero pages stay holes.
  // The guest must not run meanwhile. Returns the bytes of data written.
  uint64_t save_to(const std::filesystem::path& path) const;
  [[nodiscard]] bool is_private_mapping() const { return private_; }

  GuestMemory(GuestMemory&&) noexcept;
  GuestMemory& operator=(GuestMemory&&) noexcept;
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  ~GuestMemory();

  [[nodiscard]] std::span<const MemoryRegion> regions() const { return regions_; }
  [[nodiscard]] int fd() const { return fd_.get(); }
  [[nodiscard]] uint64_t total_size() const;

  // True when [gpa, gpa+len) lies inside one region (len 0 is valid at any in-RAM address).
  [[nodiscard]] bool contains(uint64_t gpa, uint64_t len) const;

  // Host view of [gpa, gpa+len); throws GuestError unless it lies inside one region.
  [[nodiscard]] std::span<std::byte> span(uint64_t gpa, uint64_t len);
  [[nodiscard]] std::span<const std::byte> span(uint64_t gpa, uint64_t len) const;

  void read(uint64_t gpa, std::span<std::byte> out) const;
  void write(uint64_t gpa, std::span<const std::byte> in);

  template <class T>
  [[nodiscard]] T read_obj(uint64_t gpa) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    read(gpa, std::as_writable_bytes(std::span<T, 1>(&v, 1)));
    return v;
  }
  template <class T>
  void write_obj(uint64_t gpa, const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    write(gpa, std::as_bytes(std::span<const T, 1>(&v, 1)));
  }

 private:
  GuestMemory() = default;
  [[nodiscard]] const MemoryRegion* find(uint64_t gpa, uint64_t len) const;

  UniqueFd fd_;
  std::vector<MemoryRegion> regions_;
  bool private_ = false;  // fd_ is a snapshot file mapped MAP_PRIVATE
};

}  // namespace sm
