#include "arch/x86_64/layout.h"

#include "common/error.h"

namespace sm::x86 {

std::vector<GuestMemory::RegionSpec> memory_layout(uint64_t ram_bytes) {
  if (ram_bytes % kMiB != 0)
    throw Error(fmt::format("guest memory size {} bytes is not a whole number of MiB", ram_bytes));
  if (ram_bytes < kMinRamBytes || ram_bytes > kMaxRamBytes)
    throw Error(fmt::format("guest memory of {} MiB is out of range: use {} MiB to {} MiB",
                            ram_bytes / kMiB, kMinRamBytes / kMiB, kMaxRamBytes / kMiB));
  std::vector<GuestMemory::RegionSpec> regions;
  regions.push_back({0, low_ram_end(ram_bytes)});
  if (ram_bytes > kMmioHoleStart) regions.push_back({kMmioHoleEnd, ram_bytes - kMmioHoleStart});
  return regions;
}

}  // namespace sm::x86
