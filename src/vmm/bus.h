// One bus for MMIO and one for port I/O: address ranges mapped to device handlers.
//
// Handlers see offsets relative to the start of their range. A vCPU thread calls
// Bus::read/write for each exit, so handlers are called from several vCPU threads at once and
// guard their own state. Ranges are added while the machine is assembled, before any vCPU
// runs; after Bus::freeze() the map is immutable and lookups take no lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>

namespace sm {

class IoHandler {
 public:
  virtual ~IoHandler() = default;
  // data.size() is the access width (1, 2, 4 or 8). Reads fill data; unknown offsets read 0s.
  virtual void read(uint64_t offset, std::span<std::byte> data) = 0;
  virtual void write(uint64_t offset, std::span<const std::byte> data) = 0;
};

class Bus {
 public:
  explicit Bus(std::string name) : name_(std::move(name)) {}
  // Throws sm::Error when the range is empty, overflows, overlaps another, or the bus is frozen.
  void add(uint64_t base, uint64_t size, std::shared_ptr<IoHandler> handler);
  void freeze() { frozen_ = true; }

  // Returns false when no device claims the address (reads then yield all ones).
  bool read(uint64_t addr, std::span<std::byte> data) const;
  bool write(uint64_t addr, std::span<const std::byte> data) const;

 private:
  struct Range {
    uint64_t size;
    std::shared_ptr<IoHandler> handler;
  };
  const std::pair<const uint64_t, Range>* lookup(uint64_t addr, uint64_t len) const;

  std::string name_;
  std::map<uint64_t, Range> ranges_;  // keyed by base
  bool frozen_ = false;
};

}  // namespace sm
