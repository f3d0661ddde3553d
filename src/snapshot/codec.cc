#include "snapshot/codec.h"

#include <bit>

namespace sm::snapshot {

static_assert(std::endian::native == std::endian::little, "the snapshot codec assumes a little-endian host");

void Decoder::fail(const std::string& message) const {
  throw SnapshotError(fmt::format("snapshot {}: {}", what_, message));
}

void Decoder::need(size_t n) const {
  if (n > remaining())
    fail(fmt::format("truncated: needs {} more bytes at offset {}, {} left", n, pos_, remaining()));
}

bool Decoder::boolean() {
  uint8_t v = u8();
  if (v > 1) fail(fmt::format("boolean field holds {}", v));
  return v == 1;
}

void Decoder::fixed(std::span<std::byte> out) {
  need(out.size());
  if (!out.empty()) std::memcpy(out.data(), data_.data() + pos_, out.size());
  pos_ += out.size();
}

std::vector<std::byte> Decoder::bytes(size_t max) {
  uint32_t n = u32();
  if (n > max) fail(fmt::format("a {}-byte field exceeds its {}-byte cap", n, max));
  need(n);
  std::vector<std::byte> out(data_.begin() + static_cast<ptrdiff_t>(pos_),
                             data_.begin() + static_cast<ptrdiff_t>(pos_ + n));
  pos_ += n;
  return out;
}

std::string Decoder::str(size_t max) {
  auto b = bytes(max);
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

size_t Decoder::count(size_t max, size_t min_element_bytes) {
  uint32_t n = u32();
  if (n > max) fail(fmt::format("count {} exceeds its cap of {}", n, max));
  if (min_element_bytes > 0 && n > remaining() / min_element_bytes)
    fail(fmt::format("count {} cannot fit in the {} bytes left", n, remaining()));
  return n;
}

void Decoder::finish() const {
  if (remaining() != 0) fail(fmt::format("{} bytes left over: the state has another shape", remaining()));
}

}  // namespace sm::snapshot
