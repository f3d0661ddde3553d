// Little-endian field codec for snapshot state (docs/snapshot-format.md). Every state struct
// (a device's, a vCPU's, the machine's) saves itself into an Encoder and is rebuilt from a
// Decoder. A snapshot file is untrusted input: the Decoder checks every read against what is
// left, every count against a cap the caller names, and throws SnapshotError (never reads past
// the end, never allocates more than the input could hold).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "common/error.h"

namespace sm::snapshot {

// A snapshot that is corrupt, truncated, of another version, or does not fit this machine.
class SnapshotError : public Error {
 public:
  using Error::Error;
};

class Encoder {
 public:
  void u8(uint8_t v) { put(v); }
  void u16(uint16_t v) { put(v); }
  void u32(uint32_t v) { put(v); }
  void u64(uint64_t v) { put(v); }
  void i64(int64_t v) { put(v); }
  void boolean(bool v) { u8(v ? 1 : 0); }
  // Fixed-size bytes: the reader must know the size (Decoder::fixed).
  void fixed(std::span<const std::byte> b) { buf_.insert(buf_.end(), b.begin(), b.end()); }
  // u32 length, then the bytes.
  void bytes(std::span<const std::byte> b) {
    u32(static_cast<uint32_t>(b.size()));
    fixed(b);
  }
  void str(std::string_view s) { bytes(std::as_bytes(std::span(s.data(), s.size()))); }
  // A count of elements that follow (u32).
  void count(size_t n) { u32(static_cast<uint32_t>(n)); }

  [[nodiscard]] const std::vector<std::byte>& data() const { return buf_; }
  [[nodiscard]] std::vector<std::byte> take() { return std::move(buf_); }

 private:
  template <class T>
  void put(T v) {
    static_assert(std::is_integral_v<T>);
    std::byte b[sizeof(T)];
    std::memcpy(b, &v, sizeof v);  // little-endian host (static_assert in codec.cc)
    buf_.insert(buf_.end(), b, b + sizeof b);
  }
  std::vector<std::byte> buf_;
};

class Decoder {
 public:
  // `what` names the section in error messages ("vcpu 0", "virtio-mmio slot 2").
  Decoder(std::span<const std::byte> data, std::string what) : data_(data), what_(std::move(what)) {}

  uint8_t u8() { return get<uint8_t>(); }
  uint16_t u16() { return get<uint16_t>(); }
  uint32_t u32() { return get<uint32_t>(); }
  uint64_t u64() { return get<uint64_t>(); }
  int64_t i64() { return get<int64_t>(); }
  bool boolean();
  void fixed(std::span<std::byte> out);
  // A length-prefixed byte string of at most max bytes.
  std::vector<std::byte> bytes(size_t max);
  std::string str(size_t max);
  // An element count of at most max; also refuses a count whose elements (each at least
  // min_element_bytes) could not fit in what is left, so a huge count fails before any reserve().
  size_t count(size_t max, size_t min_element_bytes = 1);
  // Throws unless every byte was consumed: a state of another shape is refused, not half-read.
  void finish() const;

  [[nodiscard]] size_t remaining() const { return data_.size() - pos_; }
  [[nodiscard]] const std::string& what() const { return what_; }
  // Throws SnapshotError("<what>: <message>").
  [[noreturn]] void fail(const std::string& message) const;

 private:
  template <class T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, data_.data() + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }
  void need(size_t n) const;

  std::span<const std::byte> data_;
  size_t pos_ = 0;
  std::string what_;
};

}  // namespace sm::snapshot
