#include "oci/store.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <spdlog/spdlog.h>

#include "common/error.h"

namespace sm::oci {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::size_t kChunk = 1 << 20;
constexpr std::size_t kMaxRefsFile = 64u << 20;

UniqueFd open_or_throw(const fs::path& p, int flags, mode_t mode = 0644) {
  int fd = ::open(p.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) throw sys_error("cannot open " + p.string());
  return UniqueFd(fd);
}

void write_all(int fd, const void* data, std::size_t len, const fs::path& p) {
  auto* b = static_cast<const char*>(data);
  while (len) {
    ssize_t n = ::write(fd, b, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw sys_error("cannot write " + p.string());
    }
    b += n;
    len -= static_cast<std::size_t>(n);
  }
}

void fsync_or_throw(int fd, const fs::path& p) {
  if (::fsync(fd) != 0) throw sys_error("cannot fsync " + p.string());
}

// A rename is durable only once the directory entry is on disk.
void fsync_dir(const fs::path& dir) {
  UniqueFd fd = open_or_throw(dir, O_RDONLY | O_DIRECTORY);
  fsync_or_throw(fd.get(), dir);
}

void flock_or_throw(int fd, int op, const fs::path& p) {
  while (::flock(fd, op) != 0) {
    if (errno == EINTR) continue;
    throw sys_error("cannot lock " + p.string());
  }
}

// A temp file in `dir`, removed on destruction unless released.
struct TempFile {
  fs::path path;
  UniqueFd fd;
  explicit TempFile(const fs::path& dir) {
    std::string tmpl = (dir / ".tmp-XXXXXX").string();
    int f = ::mkostemp(tmpl.data(), O_CLOEXEC);
    if (f < 0) throw sys_error("cannot create a temporary file in " + dir.string());
    ::fchmod(f, 0644);
    fd.reset(f);
    path = tmpl;
  }
  ~TempFile() {
    if (!path.empty()) ::unlink(path.c_str());
  }
  void release() { path.clear(); }
};

std::string blob_name(const Digest& d) { return d.to_string(); }

}  // namespace

// ---------------------------------------------------------------------------------------------

Store::Store() : Store(default_root()) {}

Store::Store(fs::path root) : root_(std::move(root)) {
  std::error_code ec;
  for (auto sub : {"blobs/sha256", "ingest", "rootfs"}) {
    fs::create_directories(root_ / sub, ec);
    if (ec) throw Error(fmt::format("cannot create the image store at {}: {}", (root_ / sub).string(), ec.message()));
  }
}

fs::path Store::default_root() {
  // XDG Base Directory spec: a relative XDG_DATA_HOME is invalid and must be ignored.
  if (const char* x = std::getenv("XDG_DATA_HOME"); x && *x == '/') return fs::path(x) / "supermachine";
  const char* home = std::getenv("HOME");
  if (!home || !*home) {
    if (auto* pw = ::getpwuid(::getuid())) home = pw->pw_dir;
  }
  if (!home || !*home) throw Error("cannot find the image store: neither XDG_DATA_HOME nor HOME is set");
  return fs::path(home) / ".local/share/supermachine";
}

fs::path Store::blob_path(const Digest& d) const {
  if (d.empty()) throw Error("blob_path: empty digest");
  return root_ / "blobs" / d.algorithm() / d.hex();
}

bool Store::has_blob(const Digest& d) const {
  struct stat st;
  return ::stat(blob_path(d).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::uint64_t Store::blob_size(const Digest& d) const {
  struct stat st;
  if (::stat(blob_path(d).c_str(), &st) != 0) throw Error(fmt::format("blob {} is not in the store", blob_name(d)));
  return static_cast<std::uint64_t>(st.st_size);
}

Digest Store::put_blob(std::istream& in, const Digest& expected, std::optional<std::uint64_t> expected_size) {
  if (!expected.empty() && has_blob(expected)) return expected;
  TempFile tmp(root_ / "ingest");
  Sha256 h;
  std::vector<char> buf(kChunk);
  std::uint64_t total = 0;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    auto n = static_cast<std::size_t>(in.gcount());
    if (!n) break;
    total += n;
    if (expected_size && total > *expected_size)
      throw Error(fmt::format("blob {} is larger than its declared size of {} bytes; nothing stored",
                              expected.empty() ? "(new)" : blob_name(expected), *expected_size));
    h.update(buf.data(), n);
    write_all(tmp.fd.get(), buf.data(), n, tmp.path);
  }
  if (in.bad()) throw Error("reading blob content failed; nothing stored");
  if (expected_size && total != *expected_size)
    throw Error(fmt::format("blob {} has {} bytes but {} were declared; nothing stored",
                            expected.empty() ? "(new)" : blob_name(expected), total, *expected_size));
  Digest got = h.finish();
  if (!expected.empty() && got != expected)
    throw Error(fmt::format("digest mismatch: expected {}, content hashes to {}; nothing stored",
                            blob_name(expected), blob_name(got)));
  if (has_blob(got)) return got;
  fsync_or_throw(tmp.fd.get(), tmp.path);
  if (::rename(tmp.path.c_str(), blob_path(got).c_str()) != 0) throw sys_error("cannot store blob " + blob_name(got));
  tmp.release();
  fsync_dir(blob_path(got).parent_path());
  return got;
}

Digest Store::put_blob_file(const fs::path& file, const Digest& expected, std::optional<std::uint64_t> size) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot open {}", file.string()));
  return put_blob(in, expected, size);
}

Digest Store::put_blob_bytes(std::string_view bytes, const Digest& expected) {
  Digest got = Digest::of(bytes);
  if (!expected.empty() && got != expected)
    throw Error(fmt::format("digest mismatch: expected {}, content hashes to {}; nothing stored",
                            blob_name(expected), blob_name(got)));
  if (has_blob(got)) return got;
  TempFile tmp(root_ / "ingest");
  write_all(tmp.fd.get(), bytes.data(), bytes.size(), tmp.path);
  fsync_or_throw(tmp.fd.get(), tmp.path);
  if (::rename(tmp.path.c_str(), blob_path(got).c_str()) != 0) throw sys_error("cannot store blob " + blob_name(got));
  tmp.release();
  fsync_dir(blob_path(got).parent_path());
  return got;
}

std::string Store::read_blob(const Digest& d, std::size_t max_bytes) const {
  auto p = blob_path(d);
  UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) throw Error(fmt::format("blob {} is not in the store", blob_name(d)));
    throw sys_error("cannot open " + p.string());
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) throw sys_error("cannot stat " + p.string());
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes)
    throw Error(fmt::format("blob {} is {} bytes, more than the {} byte limit for this kind of blob",
                            blob_name(d), st.st_size, max_bytes));
  std::string out(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t got = 0;
  while (got < out.size()) {
    ssize_t n = ::read(fd.get(), out.data() + got, out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw sys_error("cannot read " + p.string());
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  out.resize(got);
  return out;
}

// ---- ingest -----------------------------------------------------------------------------------

Store::Ingest::Ingest(Ingest&&) noexcept = default;
Store::Ingest& Store::Ingest::operator=(Ingest&&) noexcept = default;
Store::Ingest::~Ingest() = default;

Store::Ingest Store::begin_ingest(const Digest& expected, std::optional<std::uint64_t> size) {
  if (expected.empty()) throw Error("begin_ingest needs the expected digest");
  Ingest ing;
  ing.store_ = this;
  ing.expected_ = expected;
  ing.size_ = size;
  fs::path dir = root_ / "ingest";
  // The lock file outlives the download on purpose: deleting it while another writer waits on
  // it would let a third writer lock a fresh file and share the partial with the second.
  fs::path lock = dir / (expected.hex() + ".lock");
  ing.lock_fd_ = open_or_throw(lock, O_RDWR | O_CREAT);
  flock_or_throw(ing.lock_fd_.get(), LOCK_EX, lock);
  if (has_blob(expected)) {
    ing.complete_ = true;
    return ing;
  }
  ing.partial_ = dir / (expected.hex() + ".partial");
  ing.fd_ = open_or_throw(ing.partial_, O_RDWR | O_CREAT);
  struct stat st;
  if (::fstat(ing.fd_.get(), &st) != 0) throw sys_error("cannot stat " + ing.partial_.string());
  auto have = static_cast<std::uint64_t>(st.st_size);
  if (size && have > *size) {
    ing.restart();
    return ing;
  }
  // Resume: rebuild the hash state from the bytes already on disk.
  std::vector<char> buf(kChunk);
  std::uint64_t done = 0;
  while (done < have) {
    ssize_t n = ::pread(ing.fd_.get(), buf.data(), std::min<std::uint64_t>(buf.size(), have - done),
                        static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw sys_error("cannot read " + ing.partial_.string());
    ing.hash_.update(buf.data(), static_cast<std::size_t>(n));
    done += static_cast<std::uint64_t>(n);
  }
  ing.offset_ = have;
  if (::lseek(ing.fd_.get(), 0, SEEK_END) < 0) throw sys_error("cannot seek " + ing.partial_.string());
  return ing;
}

void Store::Ingest::write(std::span<const std::byte> data) {
  if (complete_) throw Error("Ingest::write after the blob is complete");
  if (!fd_) throw Error("Ingest::write after discard");
  if (size_ && offset_ + data.size() > *size_)
    throw Error(fmt::format("blob {} is larger than its declared size of {} bytes", blob_name(expected_), *size_));
  write_all(fd_.get(), data.data(), data.size(), partial_);
  hash_.update(data);
  offset_ += data.size();
}

void Store::Ingest::restart() {
  if (complete_) return;
  if (!fd_) fd_ = open_or_throw(partial_, O_RDWR | O_CREAT);  // after discard(): start afresh
  if (::ftruncate(fd_.get(), 0) != 0) throw sys_error("cannot truncate " + partial_.string());
  if (::lseek(fd_.get(), 0, SEEK_SET) < 0) throw sys_error("cannot seek " + partial_.string());
  hash_ = Sha256();
  offset_ = 0;
}

void Store::Ingest::discard() {
  if (!partial_.empty()) ::unlink(partial_.c_str());
  fd_.reset();
  offset_ = 0;
  hash_ = Sha256();
}

void Store::Ingest::commit() {
  if (complete_) return;
  if (!fd_) throw Error("Ingest::commit after discard");
  if (size_ && offset_ != *size_) {
    auto have = offset_;
    discard();
    throw Error(fmt::format("blob {} has {} bytes but {} were declared; nothing stored",
                            blob_name(expected_), have, *size_));
  }
  Digest got = hash_.finish();
  hash_ = Sha256();
  if (got != expected_) {
    discard();
    throw Error(fmt::format("digest mismatch: expected {}, content hashes to {}; nothing stored",
                            blob_name(expected_), blob_name(got)));
  }
  fsync_or_throw(fd_.get(), partial_);
  auto dst = store_->blob_path(expected_);
  if (::rename(partial_.c_str(), dst.c_str()) != 0) throw sys_error("cannot store blob " + blob_name(expected_));
  fsync_dir(dst.parent_path());
  fd_.reset();
  complete_ = true;
}

// ---- refs -------------------------------------------------------------------------------------

namespace {

json load_refs(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return json::object();
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.size() > kMaxRefsFile) throw Error(file.string() + " is implausibly large; remove it to reset the tags");
  try {
    json j = json::parse(text);
    if (j.is_object() && j.contains("refs") && j["refs"].is_object()) return j["refs"];
  } catch (const json::exception&) {
  }
  throw Error(fmt::format("{} is corrupt (not the JSON supermachine writes); remove it to forget all "
                          "tags (blobs stay; pull again to re-tag)", file.string()));
}

void save_refs(const fs::path& root, const json& refs) {
  TempFile tmp(root);
  std::string text = json{{"refs", refs}}.dump(2) + "\n";
  write_all(tmp.fd.get(), text.data(), text.size(), tmp.path);
  fsync_or_throw(tmp.fd.get(), tmp.path);
  if (::rename(tmp.path.c_str(), (root / "refs.json").c_str()) != 0) throw sys_error("cannot write refs.json");
  tmp.release();
  fsync_dir(root);
}

// Serialises read-modify-write of refs.json across threads and processes.
struct RefsLock {
  UniqueFd fd;
  explicit RefsLock(const fs::path& root) {
    auto p = root / "refs.lock";
    fd = open_or_throw(p, O_RDWR | O_CREAT);
    flock_or_throw(fd.get(), LOCK_EX, p);
  }
};

}  // namespace

void Store::set_ref(const Reference& ref, const Digest& digest) {
  RefsLock lock(root_);
  json refs = load_refs(root_ / "refs.json");
  auto now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch());
  refs[ref.str()] = {{"digest", digest.to_string()}, {"updated", now.count()}};
  save_refs(root_, refs);
}

std::optional<Digest> Store::resolve(const Reference& ref) const {
  if (ref.digest()) return has_blob(*ref.digest()) ? ref.digest() : std::nullopt;
  json refs = load_refs(root_ / "refs.json");
  auto it = refs.find(ref.str());
  if (it == refs.end() || !it->is_object() || !it->contains("digest") || !(*it)["digest"].is_string())
    return std::nullopt;
  return Digest::try_parse((*it)["digest"].get<std::string>());
}

std::vector<RefEntry> Store::list_refs() const {
  json refs = load_refs(root_ / "refs.json");
  std::vector<RefEntry> out;
  for (auto& [key, v] : refs.items()) {
    try {
      RefEntry e{Reference::parse(key), Digest::parse(v.at("digest").get<std::string>()), {}};
      if (v.contains("updated") && v["updated"].is_number_integer())
        e.updated = std::chrono::system_clock::time_point(std::chrono::seconds(v["updated"].get<std::int64_t>()));
      out.push_back(std::move(e));
    } catch (const std::exception& ex) {
      spdlog::warn("ignoring a malformed entry \"{}\" in refs.json: {}", key, ex.what());
    }
  }
  return out;  // json objects iterate in key order
}

bool Store::remove_ref(const Reference& ref) {
  RefsLock lock(root_);
  json refs = load_refs(root_ / "refs.json");
  if (refs.erase(ref.str()) == 0) return false;
  save_refs(root_, refs);
  return true;
}

StoredImage Store::image(const Digest& top, const Platform& platform) const {
  StoredImage img;
  img.top = top;
  std::string text = read_blob(top, kMaxManifestBytes);
  std::string mt = detect_media_type(text);
  Digest manifest_digest = top;
  for (int depth = 0; is_index_media_type(mt); ++depth) {
    if (depth > 4) throw Error("image indexes nested more than 4 deep");
    Descriptor d = Index::parse(text, mt).select(platform);
    manifest_digest = d.digest;
    text = read_blob(d.digest, kMaxManifestBytes);
    mt = detect_media_type(text, d.media_type);
  }
  img.manifest_digest = manifest_digest;
  img.manifest = Manifest::parse(text, mt);
  return img;
}

fs::path Store::rootfs_dir() const {
  fs::path p = root_ / "rootfs";
  std::error_code ec;
  fs::create_directories(p, ec);
  if (ec) throw Error(fmt::format("cannot create {}: {}", p.string(), ec.message()));
  return p;
}

// ---- housekeeping -----------------------------------------------------------------------------

Store::Lease Store::lease() const {
  auto p = root_ / "lock";
  UniqueFd fd = open_or_throw(p, O_RDWR | O_CREAT);
  flock_or_throw(fd.get(), LOCK_SH, p);
  return Lease(std::move(fd));
}

PruneStats Store::prune() {
  auto lock_path = root_ / "lock";
  UniqueFd lock = open_or_throw(lock_path, O_RDWR | O_CREAT);
  flock_or_throw(lock.get(), LOCK_EX, lock_path);

  // Mark: ref -> (index ->)* manifest -> config + layers. Blobs that fail to parse stay
  // reachable themselves but contribute nothing.
  std::set<Digest> reachable;
  std::set<std::string> manifests;  // file_name() of reachable image manifests
  std::deque<std::pair<Digest, std::string>> todo;  // digest, media type hint
  for (auto& r : list_refs()) todo.emplace_back(r.digest, "");
  while (!todo.empty()) {
    auto [d, hint] = todo.front();
    todo.pop_front();
    if (!has_blob(d) || !reachable.insert(d).second) continue;
    try {
      std::string text = read_blob(d, kMaxManifestBytes);
      std::string mt = detect_media_type(text, hint);
      if (is_index_media_type(mt)) {
        for (auto& e : Index::parse(text, mt).manifests) todo.emplace_back(e.digest, e.media_type);
      } else {
        Manifest m = Manifest::parse(text, mt);
        manifests.insert(d.file_name());
        reachable.insert(m.config.digest);
        for (auto& l : m.layers) reachable.insert(l.digest);
      }
    } catch (const Error& e) {
      spdlog::warn("prune: blob {} is not a manifest supermachine can read ({}); keeping it", d.to_string(), e.what());
    }
  }

  PruneStats stats;
  std::error_code ec;
  for (auto& ent : fs::directory_iterator(root_ / "blobs" / "sha256", ec)) {
    auto d = Digest::try_parse("sha256:" + ent.path().filename().string());
    if (d && reachable.contains(*d)) continue;
    auto size = ent.is_regular_file() ? ent.file_size(ec) : 0;
    if (fs::remove_all(ent.path(), ec) != static_cast<std::uintmax_t>(-1) && !ec) {
      ++stats.blobs_removed;
      stats.bytes_freed += size;
    }
  }
  for (auto& ent : fs::directory_iterator(rootfs_dir(), ec)) {
    std::string name = ent.path().filename().string();
    std::string key = name.substr(0, name.find('.'));
    if (manifests.contains(key)) continue;
    std::uintmax_t bytes = ent.is_regular_file() ? ent.file_size(ec) : 0;
    fs::remove_all(ent.path(), ec);
    if (!ec) {
      ++stats.rootfs_removed;
      stats.bytes_freed += bytes;
    }
  }
  // Partial downloads: only those nobody is writing right now (their lock is free).
  for (auto& ent : fs::directory_iterator(root_ / "ingest", ec)) {
    auto name = ent.path().filename().string();
    if (name.starts_with(".tmp-")) {  // a put_blob that died; live ones hold a lease
      fs::remove(ent.path(), ec);
      continue;
    }
    if (!name.ends_with(".lock")) continue;
    UniqueFd l(::open(ent.path().c_str(), O_RDWR | O_CLOEXEC));
    if (!l || ::flock(l.get(), LOCK_EX | LOCK_NB) != 0) continue;
    auto partial = ent.path();
    partial.replace_extension(".partial");
    if (fs::exists(partial, ec)) {
      stats.bytes_freed += fs::file_size(partial, ec);
      fs::remove(partial, ec);
      ++stats.partials_removed;
    }
    fs::remove(ent.path(), ec);
  }
  return stats;
}

}  // namespace sm::oci
