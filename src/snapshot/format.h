// The snapshot state file: a checksummed container of named sections (docs/snapshot-format.md).
// Each section's payload is one state struct written with the codec (codec.h); this file only
// frames, checksums and finds them. The file is untrusted input: parse() checks every count and
// length against its cap and against the bytes actually present before it allocates or reads,
// and refuses anything it does not fully understand with SnapshotError, never a crash.
//
//   offset  size  field
//   0       8     magic "SMSNAP\x1a\n"
//   8       4     format version (u32 LE)            \ covered by the
//   12      4     section count (u32 LE)              / header CRC-32
//   16      4     CRC-32 of bytes 0..15
//   20      ...   sections, back to back; nothing follows the last one
//   section: u16 name length, name, u64 payload length, u32 CRC-32, payload
//            (the CRC covers the name length, name, payload length and payload)
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "snapshot/codec.h"

namespace sm::snapshot {

// A build reads only its own version; any other is refused (docs/snapshot-format.md).
inline constexpr uint32_t kFormatVersion = 1;

inline constexpr size_t kMagicBytes = 8;
inline constexpr char kMagic[kMagicBytes + 1] = "SMSNAP\x1a\n";
inline constexpr size_t kHeaderBytes = 20;
// The caps a reader enforces; write_state_file() refuses to write past them too.
inline constexpr size_t kMaxFileBytes = 64ull << 20;
inline constexpr uint32_t kMaxSections = 4096;
inline constexpr size_t kMaxSectionNameBytes = 64;
inline constexpr uint64_t kMaxSectionBytes = 16ull << 20;

struct Section {
  std::string name;  // 1..64 bytes of [a-z0-9._-], unique in a file
  std::vector<std::byte> payload;
};

// The whole file as bytes (what write_state_file() writes). Throws sm::Error for a section name
// that is empty, too long, not [a-z0-9._-] or repeated, or for a section or file over its cap.
[[nodiscard]] std::vector<std::byte> encode_state_file(std::span<const Section> sections);

// Writes the file atomically: a temporary file in the same directory, fsync, rename over `path`,
// fsync of the directory. A reader sees the old file or the whole new one, never a part. Throws
// sm::Error naming `path`; the temporary file is removed on failure.
void write_state_file(const std::filesystem::path& path, std::span<const Section> sections);

// A parsed state file: the bytes plus an index of its sections. Immutable once built.
class StateFile {
 public:
  // Reads and parses `path` (a regular file of at most kMaxFileBytes). Throws SnapshotError
  // naming the path for a malformed file, sm::Error when it cannot be read.
  [[nodiscard]] static StateFile read(const std::filesystem::path& path);
  // Parses bytes already in memory (copied). Throws SnapshotError saying what is wrong.
  [[nodiscard]] static StateFile parse(std::span<const std::byte> bytes);

  [[nodiscard]] bool has(std::string_view name) const;
  // The payload of section `name`, valid while this StateFile lives. Throws SnapshotError
  // "the snapshot has no '<name>' section".
  [[nodiscard]] std::span<const std::byte> section(std::string_view name) const;
  // Section names in file order.
  [[nodiscard]] std::vector<std::string> names() const;
  [[nodiscard]] uint32_t version() const { return version_; }

 private:
  struct Entry {
    std::string name;
    size_t offset;  // of the payload in bytes_
    size_t size;
  };
  StateFile() = default;
  static StateFile parse_owned(std::vector<std::byte> bytes, const std::string& origin);
  [[nodiscard]] const Entry* find(std::string_view name) const;

  std::vector<std::byte> bytes_;
  std::vector<Entry> entries_;  // file order
  uint32_t version_ = 0;
};

}  // namespace sm::snapshot
