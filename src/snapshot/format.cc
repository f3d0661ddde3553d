#include "snapshot/format.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include "common/error.h"
#include "common/unique_fd.h"

namespace sm::snapshot {
namespace {

namespace fs = std::filesystem;

// The smallest section: a 1-byte name and an empty payload. A count that cannot fit at this size
// is refused before anything is reserved for it.
constexpr size_t kMinSectionBytes = 2 + 1 + 8 + 4;

static_assert(sizeof kMagic - 1 == kMagicBytes);
static_assert(kHeaderBytes == kMagicBytes + 4 + 4 + 4);
static_assert(kMaxSectionBytes <= UINT32_MAX, "zlib's crc32 takes a 32-bit length");
static_assert(kMaxFileBytes >= kHeaderBytes + kMaxSectionBytes);

uint32_t crc32_of(uint32_t crc, std::span<const std::byte> b) {
  // zlib's crc32 answers 0 for a null buffer (its "initial value" query), not `crc`; an empty
  // vector's data() may be null.
  if (b.empty()) return crc;
  return static_cast<uint32_t>(
      ::crc32(crc, reinterpret_cast<const Bytef*>(b.data()), static_cast<uInt>(b.size())));
}

template <class T>
T load_le(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);  // little-endian host (static_assert in codec.cc)
  return v;
}

template <class T>
void store_le(std::vector<std::byte>& out, T v) {
  std::byte b[sizeof(T)];
  std::memcpy(b, &v, sizeof v);
  out.insert(out.end(), b, b + sizeof b);
}

// Empty when the name is fine, else what is wrong with it.
std::string name_problem(std::string_view name) {
  if (name.empty()) return "is empty";
  if (name.size() > kMaxSectionNameBytes)
    return fmt::format("is {} bytes, over the cap of {}", name.size(), kMaxSectionNameBytes);
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return fmt::format("holds byte 0x{:02x}, outside [a-z0-9._-]", static_cast<unsigned char>(c));
  }
  return {};
}

// Walks the untrusted bytes. Every read is checked against what is left first; every failure
// names what was wrong and says the snapshot must be re-created.
class Parser {
 public:
  Parser(std::span<const std::byte> b, const std::string& origin) : b_(b), origin_(origin) {}

  [[noreturn]] void refuse(std::string_view what, std::string_view remedy = "re-create the snapshot") const {
    throw SnapshotError(fmt::format("{}{}; {}", origin_.empty() ? "" : origin_ + ": ", what, remedy));
  }
  [[nodiscard]] size_t pos() const { return pos_; }
  [[nodiscard]] size_t left() const { return b_.size() - pos_; }
  // Refuses unless n more bytes are present; `where` names what is being read.
  void need(size_t n, std::string_view where) const {
    if (n > left())
      refuse(fmt::format("truncated: the file ends in {} at offset {} ({} bytes needed, {} left)", where,
                         pos_, n, left()));
  }
  template <class T>
  T take(std::string_view where) {
    need(sizeof(T), where);
    T v = load_le<T>(b_.data() + pos_);
    pos_ += sizeof v;
    return v;
  }
  std::span<const std::byte> bytes(size_t n, std::string_view where) {
    need(n, where);
    auto s = b_.subspan(pos_, n);
    pos_ += n;
    return s;
  }

 private:
  std::span<const std::byte> b_;
  const std::string& origin_;
  size_t pos_ = 0;
};

// `context` starts every error message ("cannot write snapshot state /x/state").
std::vector<std::byte> encode(std::span<const Section> sections, const std::string& context) {
  if (sections.size() > kMaxSections)
    throw Error(fmt::format("{}: {} sections, over the cap of {}", context, sections.size(), kMaxSections));
  size_t total = kHeaderBytes;
  std::unordered_set<std::string_view> seen;
  for (const auto& s : sections) {
    if (auto p = name_problem(s.name); !p.empty())
      throw Error(fmt::format("{}: section name '{}' {}", context, s.name, p));
    if (!seen.insert(s.name).second) throw Error(fmt::format("{}: section '{}' appears twice", context, s.name));
    if (s.payload.size() > kMaxSectionBytes)
      throw Error(fmt::format("{}: section '{}' is {} bytes, over the {}-byte cap", context, s.name,
                              s.payload.size(), kMaxSectionBytes));
    total += 2 + s.name.size() + 8 + 4 + s.payload.size();
  }
  if (total > kMaxFileBytes)
    throw Error(fmt::format("{}: {} bytes, over the {}-byte file cap", context, total, kMaxFileBytes));

  std::vector<std::byte> out;
  out.reserve(total);
  auto magic = std::as_bytes(std::span(kMagic, kMagicBytes));
  out.insert(out.end(), magic.begin(), magic.end());
  store_le<uint32_t>(out, kFormatVersion);
  store_le<uint32_t>(out, static_cast<uint32_t>(sections.size()));
  store_le<uint32_t>(out, crc32_of(0, out));
  for (const auto& s : sections) {
    size_t start = out.size();
    store_le<uint16_t>(out, static_cast<uint16_t>(s.name.size()));
    auto name = std::as_bytes(std::span(s.name.data(), s.name.size()));
    out.insert(out.end(), name.begin(), name.end());
    store_le<uint64_t>(out, s.payload.size());
    uint32_t crc = crc32_of(crc32_of(0, std::span(out).subspan(start)), s.payload);
    store_le<uint32_t>(out, crc);
    out.insert(out.end(), s.payload.begin(), s.payload.end());
  }
  return out;
}

}  // namespace

std::vector<std::byte> encode_state_file(std::span<const Section> sections) {
  return encode(sections, "cannot encode snapshot state");
}

void write_state_file(const fs::path& path, std::span<const Section> sections) {
  const std::string context = fmt::format("cannot write snapshot state {}", path.string());
  auto fail = [&](const std::string& what) {
    int err = errno;
    return sys_error(fmt::format("{}: {}", context, what), err);
  };
  if (path.filename().empty()) throw Error(context + ": not a file path");
  // Everything is checked before the disk is touched.
  std::vector<std::byte> bytes = encode(sections, context);

  fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  std::string tmp = (dir / ("." + path.filename().string() + ".tmp-XXXXXX")).string();
  UniqueFd fd(::mkostemp(tmp.data(), O_CLOEXEC));
  if (!fd) throw fail("cannot create a temporary file in " + dir.string());
  // Until the rename, a failure leaves nothing behind.
  struct RemoveTemp {
    const std::string& p;
    bool armed = true;
    ~RemoveTemp() {
      if (armed) ::unlink(p.c_str());
    }
  } guard{tmp};

  const std::byte* p = bytes.data();
  size_t len = bytes.size();
  while (len > 0) {
    ssize_t n = ::write(fd.get(), p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw fail("cannot write " + tmp);
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) throw fail("cannot fsync " + tmp);
  if (::close(fd.release()) != 0) throw fail("cannot close " + tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw fail("cannot rename " + tmp + " over it");
  guard.armed = false;
  // The rename is durable only once the directory entry is on disk.
  UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d || ::fsync(d.get()) != 0) throw fail("cannot fsync the directory " + dir.string());
}

StateFile StateFile::read(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw sys_error(fmt::format("cannot open snapshot state {}", path.string()));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw sys_error(fmt::format("cannot stat snapshot state {}", path.string()));
  if (!S_ISREG(st.st_mode)) throw SnapshotError(fmt::format("{}: not a regular file", path.string()));
  // The size is checked before the buffer is allocated. One byte more than that size is asked
  // for: a file that grew meanwhile then has a byte too many, which parse() refuses.
  if (static_cast<uint64_t>(st.st_size) > kMaxFileBytes)
    throw SnapshotError(fmt::format("{}: the state file is {} bytes, over the {}-byte cap; re-create the snapshot",
                                    path.string(), st.st_size, kMaxFileBytes));
  std::vector<std::byte> bytes(static_cast<size_t>(st.st_size) + 1);
  size_t got = 0;
  while (got < bytes.size()) {
    ssize_t n = ::read(fd.get(), bytes.data() + got, bytes.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw sys_error(fmt::format("cannot read snapshot state {}", path.string()));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  bytes.resize(got);
  return parse_owned(std::move(bytes), path.string());
}

StateFile StateFile::parse(std::span<const std::byte> bytes) {
  // The cap comes before the copy.
  if (bytes.size() > kMaxFileBytes)
    throw SnapshotError(fmt::format("the state is {} bytes, over the {}-byte cap; re-create the snapshot",
                                    bytes.size(), kMaxFileBytes));
  return parse_owned(std::vector<std::byte>(bytes.begin(), bytes.end()), "");
}

StateFile StateFile::parse_owned(std::vector<std::byte> bytes, const std::string& origin) {
  Parser in(bytes, origin);
  if (bytes.size() > kMaxFileBytes)
    in.refuse(fmt::format("the state is over the {}-byte cap", kMaxFileBytes));

  // Magic and version sit at fixed offsets in every version, so a file of another version is
  // named as such even if the rest of its header differs.
  size_t magic_len = std::min(bytes.size(), kMagicBytes);
  if (magic_len > 0 && std::memcmp(bytes.data(), kMagic, magic_len) != 0) in.refuse("not a supermachine snapshot (wrong magic)");
  (void)in.bytes(kMagicBytes, "the magic");
  uint32_t version = in.take<uint32_t>("the header");
  if (version != kFormatVersion)
    in.refuse(fmt::format("snapshot format version {}; this build reads version {}", version, kFormatVersion),
              "re-create the snapshot with this build");
  uint32_t count = in.take<uint32_t>("the header");
  uint32_t header_crc = in.take<uint32_t>("the header");
  if (crc32_of(0, std::span(bytes).first(kHeaderBytes - 4)) != header_crc)
    in.refuse("the header is corrupt (checksum mismatch)");
  if (count > kMaxSections) in.refuse(fmt::format("{} sections, over the cap of {}", count, kMaxSections));
  if (count > in.left() / kMinSectionBytes)
    in.refuse(fmt::format("truncated: {} {} fit in the {} bytes after the header", count,
                          count == 1 ? "section cannot" : "sections cannot", in.left()));

  StateFile f;
  f.version_ = version;
  f.entries_.reserve(count);
  // Views into `bytes`, whose buffer moves into f.bytes_ unchanged.
  std::unordered_set<std::string_view> seen;
  seen.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    size_t start = in.pos();
    std::string ordinal = fmt::format("section {} of {}", i + 1, count);
    uint16_t name_len = in.take<uint16_t>("the name length of " + ordinal);
    if (name_len == 0) in.refuse(fmt::format("{} has an empty name", ordinal));
    if (name_len > kMaxSectionNameBytes)
      in.refuse(fmt::format("{} has a {}-byte name, over the cap of {}", ordinal, name_len, kMaxSectionNameBytes));
    auto raw = in.bytes(name_len, "the name of " + ordinal);
    std::string_view name(reinterpret_cast<const char*>(raw.data()), raw.size());
    if (auto p = name_problem(name); !p.empty()) in.refuse(fmt::format("the name of {} {}", ordinal, p));
    if (!seen.insert(name).second) in.refuse(fmt::format("section '{}' appears twice", name));
    uint64_t len = in.take<uint64_t>(fmt::format("the header of section '{}'", name));
    size_t header_end = in.pos();
    uint32_t crc = in.take<uint32_t>(fmt::format("the header of section '{}'", name));
    if (len > kMaxSectionBytes)
      in.refuse(fmt::format("section '{}' is {} bytes, over the {}-byte cap", name, len, kMaxSectionBytes));
    auto payload = in.bytes(static_cast<size_t>(len), fmt::format("the payload of section '{}'", name));
    uint32_t want = crc32_of(crc32_of(0, std::span(bytes).subspan(start, header_end - start)), payload);
    if (want != crc) in.refuse(fmt::format("section '{}' is corrupt (checksum mismatch)", name));
    f.entries_.push_back({std::string(name), static_cast<size_t>(payload.data() - bytes.data()), payload.size()});
  }
  if (in.left() != 0)
    in.refuse(fmt::format("trailing bytes: {} {} the last section", in.left(), in.left() == 1 ? "byte follows" : "bytes follow"));
  f.bytes_ = std::move(bytes);
  return f;
}

const StateFile::Entry* StateFile::find(std::string_view name) const {
  auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.name == name; });
  return it == entries_.end() ? nullptr : &*it;
}

bool StateFile::has(std::string_view name) const { return find(name) != nullptr; }

std::span<const std::byte> StateFile::section(std::string_view name) const {
  const Entry* e = find(name);
  if (!e) throw SnapshotError(fmt::format("the snapshot has no '{}' section", name));
  return std::span(bytes_).subspan(e->offset, e->size);
}

std::vector<std::string> StateFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& e : entries_) out.push_back(e.name);
  return out;
}

}  // namespace sm::snapshot
