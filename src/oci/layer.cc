#include "oci/layer.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/unique_fd.h"
#include "oci/archive_error.h"

namespace sm::oci {
namespace {

// OCI image spec v1.1, layer.md "Whiteouts".
constexpr std::string_view kWhiteoutPrefix = ".wh.";
constexpr std::string_view kOpaqueMarker = ".wh..wh..opq";
// Linux follows at most 40 symlinks in one lookup (MAXSYMLINKS); so do we.
constexpr int kMaxSymlinkHops = 40;
constexpr std::size_t kNameMax = 255;

// A path inside the root as its components, none of them "", "." or "..".
using Components = std::vector<std::string>;

std::string join(const Components& c, std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    if (i) s += '/';
    s += c[i];
  }
  return s;
}
std::string join(const Components& c) { return join(c, c.size()); }

// Raised with the message only; Applier::fail() adds the layer and entry name.
struct Refusal {
  std::string why;
};
[[noreturn]] void refuse(std::string why) { throw Refusal{std::move(why)}; }
[[noreturn]] void refuse_errno(std::string_view what, int err = errno) {
  throw Refusal{fmt::format("{}: {}", what, std::strerror(err))};
}

// Splits a tar entry or hard-link name. Policy (docs/images-rootfs.md): a leading "./" and
// repeated or trailing slashes are normalised away, as every tar writer produces them; absolute
// names and any ".." component are refused outright, since no image builder emits them and a
// hostile archive uses them to climb out of the root.
Components split_entry_name(std::string_view name, const LayerLimits& limits) {
  if (name.size() > limits.max_path_length)
    refuse(fmt::format("name is {} bytes long, over the {} byte limit", name.size(),
                       limits.max_path_length));
  if (!name.empty() && name.front() == '/') refuse("absolute path (entries must be relative)");
  Components out;
  std::size_t pos = 0;
  while (pos <= name.size()) {
    std::size_t end = name.find('/', pos);
    if (end == std::string_view::npos) end = name.size();
    std::string_view c = name.substr(pos, end - pos);
    pos = end + 1;
    if (c.empty() || c == ".") continue;
    if (c == "..") refuse("\"..\" component (entries may not climb out of the root)");
    if (c.size() > kNameMax) refuse(fmt::format("a component is longer than {} bytes", kNameMax));
    out.emplace_back(c);
    if (out.size() > limits.max_path_depth)
      refuse(fmt::format("more than {} path components", limits.max_path_depth));
  }
  return out;
}

// An open directory and the names in it (without . and ..), read before the caller changes
// anything in it. Takes ownership of `fd`, an O_DIRECTORY descriptor.
struct DirListing {
  std::unique_ptr<DIR, int (*)(DIR*)> dir{nullptr, ::closedir};
  std::vector<std::string> children;
  [[nodiscard]] int fd() const { return ::dirfd(dir.get()); }
};

DirListing list_dir(int fd) {
  DirListing l;
  l.dir.reset(::fdopendir(fd));
  if (!l.dir) {
    int err = errno;
    ::close(fd);
    refuse_errno("fdopendir", err);
  }
  while (dirent* de = ::readdir(l.dir.get())) {
    std::string_view n = de->d_name;
    if (n != "." && n != "..") l.children.emplace_back(n);
  }
  return l;
}

// Removes `name` in `dirfd` and, for a directory, everything below it, without following
// symlinks. Depth is bounded because Resolver refuses to create directories deeper than
// max_path_depth. ENOENT is not an error.
void remove_all_at(int dirfd, const std::string& name) {
  struct stat st{};
  if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return;
    refuse_errno(fmt::format("cannot stat \"{}\" to remove it", name));
  }
  if (S_ISDIR(st.st_mode)) {
    int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) refuse_errno(fmt::format("cannot open directory \"{}\" to remove it", name));
    DirListing dir = list_dir(fd);
    for (const auto& child : dir.children) remove_all_at(dir.fd(), child);
    if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT)
      refuse_errno(fmt::format("cannot remove directory \"{}\"", name));
  } else if (::unlinkat(dirfd, name.c_str(), 0) != 0 && errno != ENOENT) {
    refuse_errno(fmt::format("cannot remove \"{}\"", name));
  }
}

// Walks a path beneath the root one component at a time with O_PATH|O_NOFOLLOW opens, so the
// kernel never follows a link on our behalf (no magic links, no mounts crossed). Symlinks met
// on the way are resolved by hand the way the guest will see them, with the root as "/": an
// absolute target restarts at the root, and a target whose ".." would climb above the root is
// refused (it points outside the image). This is what openat2(RESOLVE_IN_ROOT) does, made
// strict about escapes and able to say which link was at fault.
class Resolver {
 public:
  Resolver(int root_fd, dev_t root_dev, const LayerLimits& limits)
      : root_fd_(root_fd), root_dev_(root_dev), limits_(limits) {}

  // Opens the directory `dir` (components relative to the root). Missing directories are
  // created (mode 0755, root-owned, as Docker and umoci do) when `create` is set; otherwise a
  // missing one returns an invalid fd.
  [[nodiscard]] UniqueFd open_dir(const Components& dir, bool create) {
    std::deque<std::string> todo(dir.begin(), dir.end());
    Components real;  // where we are, with every component a real directory
    UniqueFd cur(::fcntl(root_fd_, F_DUPFD_CLOEXEC, 0));
    if (!cur) refuse_errno("dup");
    int hops = 0;
    while (!todo.empty()) {
      std::string c = std::move(todo.front());
      todo.pop_front();
      if (c.empty() || c == ".") continue;
      if (c == "..") {
        // Only reachable through a symlink target: entry names with ".." are refused earlier.
        if (real.empty()) refuse(fmt::format("{} points outside the root", link_desc_));
        real.pop_back();
        cur = reopen(real);
        continue;
      }
      UniqueFd next(::openat(cur.get(), c.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
      if (!next && errno == ENOENT) {
        if (!create) return UniqueFd();
        if (::mkdirat(cur.get(), c.c_str(), 0755) != 0 && errno != EEXIST)
          refuse_errno(fmt::format("cannot create directory \"{}\"", join(real) + "/" + c));
        next.reset(::openat(cur.get(), c.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
      }
      if (!next) refuse_errno(fmt::format("cannot open \"{}\"", join_with(real, c)));
      struct stat st{};
      if (::fstat(next.get(), &st) != 0) refuse_errno("fstat");
      if (S_ISLNK(st.st_mode)) {
        if (++hops > kMaxSymlinkHops)
          refuse(fmt::format("more than {} symlinks while resolving the path", kMaxSymlinkHops));
        std::string target = read_link(next.get());
        link_desc_ = fmt::format("symlink \"{}\" -> \"{}\"", join_with(real, c), target);
        if (target.empty()) refuse(fmt::format("{} is empty", link_desc_));
        if (target.front() == '/') {
          real.clear();
          cur = reopen(real);
        }
        // Splice the target's components in front of what is left to walk.
        std::vector<std::string> parts;
        std::size_t pos = 0;
        while (pos <= target.size()) {
          std::size_t end = target.find('/', pos);
          if (end == std::string::npos) end = target.size();
          parts.emplace_back(target.substr(pos, end - pos));
          pos = end + 1;
        }
        todo.insert(todo.begin(), parts.begin(), parts.end());
        if (todo.size() > limits_.max_path_depth * 4)
          refuse("symlinks expand the path beyond any sensible depth");
        continue;
      }
      if (!S_ISDIR(st.st_mode))
        refuse(fmt::format("\"{}\" is not a directory", join_with(real, c)));
      if (st.st_dev != root_dev_)
        refuse(fmt::format("\"{}\" is a mount point; the tree must be one filesystem", join_with(real, c)));
      real.push_back(std::move(c));
      if (real.size() > limits_.max_path_depth)
        refuse(fmt::format("directories nest deeper than {} levels", limits_.max_path_depth));
      cur = std::move(next);
    }
    return cur;
  }

 private:
  static std::string join_with(const Components& real, const std::string& c) {
    return real.empty() ? c : join(real) + "/" + c;
  }

  static std::string read_link(int fd) {
    char buf[4097];
    ssize_t n = ::readlinkat(fd, "", buf, sizeof buf);
    if (n < 0) refuse_errno("readlink");
    if (static_cast<std::size_t>(n) >= sizeof buf) refuse("symlink target longer than PATH_MAX");
    return std::string(buf, static_cast<std::size_t>(n));
  }

  // Re-opens a path of real directories (used after ".." and for an absolute symlink target);
  // keeping one fd per level instead would exhaust RLIMIT_NOFILE on deep trees.
  UniqueFd reopen(const Components& real) {
    UniqueFd cur(::fcntl(root_fd_, F_DUPFD_CLOEXEC, 0));
    if (!cur) refuse_errno("dup");
    for (const auto& c : real) {
      UniqueFd next(::openat(cur.get(), c.c_str(), O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC));
      if (!next) refuse_errno(fmt::format("cannot reopen \"{}\"", c));
      cur = std::move(next);
    }
    return cur;
  }

  int root_fd_;
  dev_t root_dev_;
  const LayerLimits& limits_;
  std::string link_desc_;
};

// The two-stage reader: the outer archive only decompresses (format "raw"), the inner one
// parses tar from the outer one's output. Every uncompressed byte passes through read_cb, where
// it is hashed into the diff_id, so the layer is decompressed once.
struct ArchiveDeleter {
  void operator()(archive* a) const { archive_read_free(a); }
};
using ArchivePtr = std::unique_ptr<archive, ArchiveDeleter>;

struct Decompressed {
  archive* raw = nullptr;
  Sha256 hash;
  std::uint64_t bytes = 0;
  std::uint64_t cap = 0;
  bool over_cap = false;
};

la_ssize_t read_cb(archive* a, void* user, const void** buf) {
  auto* d = static_cast<Decompressed*>(user);
  size_t size = 0;
  la_int64_t offset = 0;
  int r = archive_read_data_block(d->raw, buf, &size, &offset);
  if (r == ARCHIVE_EOF) return 0;
  if (r < ARCHIVE_WARN) {
    archive_set_error(a, archive_errno(d->raw), "%s", archive_why(d->raw));
    return -1;
  }
  d->bytes += size;
  if (d->bytes > d->cap) {
    d->over_cap = true;
    archive_set_error(a, EFBIG, "uncompressed layer larger than the size limit");
    return -1;
  }
  d->hash.update(*buf, size);
  return static_cast<la_ssize_t>(size);
}

class Applier {
 public:
  Applier(const std::filesystem::path& root, const std::filesystem::path& blob,
          const LayerLimits& limits)
      : blob_(blob), limits_(limits) {
    root_fd_.reset(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root_fd_) throw sys_error(fmt::format("cannot open root directory {}", root.string()));
    struct stat st{};
    if (::fstat(root_fd_.get(), &st) != 0) throw sys_error("fstat");
    resolver_.emplace(root_fd_.get(), st.st_dev, limits_);
  }

  LayerStats run() {
    ArchivePtr raw(archive_read_new());
    ArchivePtr tar(archive_read_new());
    if (!raw || !tar) throw Error("libarchive: out of memory");
    // Only the compressions OCI and Docker layers use, all built into libarchive: a filter that
    // would run an external program (ARCHIVE_WARN) is never enabled.
    for (auto enable : {archive_read_support_filter_gzip, archive_read_support_filter_zstd,
                        archive_read_support_filter_xz, archive_read_support_filter_bzip2}) {
      if (enable(raw.get()) != ARCHIVE_OK) archive_clear_error(raw.get());
    }
    archive_read_support_format_raw(raw.get());
    archive_read_support_format_tar(tar.get());

    if (archive_read_open_filename(raw.get(), blob_.c_str(), 1 << 16) != ARCHIVE_OK)
      throw Error(fmt::format("cannot read layer {}: {}", blob_.string(),
                              archive_why(raw.get())));
    archive_entry* raw_entry = nullptr;
    if (archive_read_next_header(raw.get(), &raw_entry) != ARCHIVE_OK)
      throw Error(fmt::format("cannot read layer {}: {}", blob_.string(),
                              archive_why(raw.get())));

    Decompressed d;
    d.raw = raw.get();
    // Headers and padding on top of the data cap: 1 KiB per entry is generous (512-byte
    // header, pax records, padding).
    d.cap = limits_.max_total_size + limits_.max_entries * 1024 + (1u << 20);
    if (archive_read_open(tar.get(), &d, nullptr, read_cb, nullptr) != ARCHIVE_OK)
      throw Error(fmt::format("layer {} is not a tar archive (gzip, zstd or uncompressed): {}",
                              blob_.string(), archive_why(tar.get())));

    archive_entry* e = nullptr;
    for (;;) {
      int r = archive_read_next_header(tar.get(), &e);
      if (r == ARCHIVE_EOF) break;
      if (r < ARCHIVE_WARN) throw_archive_error(tar.get(), d, "reading the next entry");
      if (++stats_.entries > limits_.max_entries)
        throw Error(fmt::format("layer {}: more than {} entries; refusing it", blob_.string(),
                                limits_.max_entries));
      const char* name = archive_entry_pathname(e);
      if (!name) name = archive_entry_pathname_utf8(e);
      current_ = name ? name : "<unnamed>";
      if (!name) fail("entry without a usable name");
      try {
        apply_entry(tar.get(), e);
      } catch (const Refusal& r) {
        if (d.over_cap) throw_archive_error(tar.get(), d, "reading data");
        fail(r.why);
      }
    }
    current_.clear();
    // Hash whatever follows the end-of-archive marker too: the diff_id covers the whole stream.
    const void* buf = nullptr;
    size_t size = 0;
    la_int64_t offset = 0;
    int r;
    while ((r = archive_read_data_block(raw.get(), &buf, &size, &offset)) == ARCHIVE_OK) {
      d.hash.update(buf, size);
    }
    if (r != ARCHIVE_EOF)
      throw Error(fmt::format("layer {}: cannot decompress: {}", blob_.string(),
                              archive_why(raw.get())));
    try {
      finish_directories();
    } catch (const Refusal& r) {
      fail(r.why);
    }
    stats_.diff_id = d.hash.finish();
    return stats_;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(fmt::format("layer {}: entry \"{}\": {}; refusing the layer", blob_.string(),
                            current_, why));
  }
  [[noreturn]] void throw_archive_error(archive* tar, const Decompressed& d, std::string_view when) {
    if (d.over_cap)
      throw Error(fmt::format("layer {}: uncompressed stream exceeds {} bytes; refusing the layer",
                              blob_.string(), d.cap));
    throw Error(fmt::format("layer {}: corrupt archive while {}{}: {}", blob_.string(), when,
                            current_.empty() ? "" : fmt::format(" after entry \"{}\"", current_),
                            archive_why(tar)));
  }

  // Every path this layer put in place, with all its ancestors: whiteouts and opaque markers
  // only hide what lower layers left (layer.md: "Whiteout files MUST only apply to resources in
  // lower/parent layers").
  void mark_from_this_layer(const Components& c) {
    for (std::size_t n = 1; n <= c.size(); ++n) this_layer_.insert(join(c, n));
  }
  bool from_this_layer(const std::string& path) const { return this_layer_.count(path) != 0; }

  // Removes everything under directory `dir` (an open fd of it, path `path`) that this layer
  // did not add: the effect of an opaque marker, or of a whiteout naming a directory that this
  // layer itself re-created.
  void hide_lower_contents(int dir_fd, const std::string& path) {
    int fd = ::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) refuse_errno(fmt::format("cannot open directory \"{}\"", path));
    DirListing dir = list_dir(fd);
    for (const auto& child : dir.children) {
      std::string child_path = path.empty() ? child : path + "/" + child;
      if (!from_this_layer(child_path)) {
        remove_all_at(dir.fd(), child);
        continue;
      }
      struct stat st{};
      if (::fstatat(dir.fd(), child.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
          S_ISDIR(st.st_mode)) {
        UniqueFd sub(::openat(dir.fd(), child.c_str(),
                              O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!sub) refuse_errno(fmt::format("cannot open \"{}\"", child_path));
        hide_lower_contents(sub.get(), child_path);
      }
    }
  }

  void apply_whiteout(const Components& path, const std::string& base) {
    Components parent(path.begin(), path.end() - 1);
    if (base == kOpaqueMarker) {
      // The directory must exist in the result (the marker says it is in this layer).
      UniqueFd dir = resolver_->open_dir(parent, /*create=*/true);
      mark_from_this_layer(parent);
      hide_lower_contents(dir.get(), join(parent));
      ++stats_.whiteouts;
      return;
    }
    std::string victim = base.substr(kWhiteoutPrefix.size());
    if (victim.starts_with(kWhiteoutPrefix)) {
      // ".wh..wh.plnk", ".wh..wh.aufs", ".wh..wh.orph": AUFS bookkeeping that Docker skips.
      spdlog::debug("layer {}: skipping AUFS metadata entry {}", blob_.string(), current_);
      return;
    }
    if (victim.empty() || victim == "." || victim == "..")
      refuse(fmt::format("whiteout names no file (\"{}\")", base));
    UniqueFd dir = resolver_->open_dir(parent, /*create=*/false);
    ++stats_.whiteouts;
    if (!dir) return;  // nothing below to hide
    Components target = parent;
    target.push_back(victim);
    std::string target_path = join(target);
    if (from_this_layer(target_path)) {
      // The spec lets a whiteout hide only lower layers' files; this layer's own stay.
      struct stat st{};
      if (::fstatat(dir.get(), victim.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
        UniqueFd sub(::openat(dir.get(), victim.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!sub) refuse_errno("open");
        hide_lower_contents(sub.get(), target_path);
      }
      return;
    }
    remove_all_at(dir.get(), victim);
  }

  // Makes room for a new non-directory (or a directory replacing a non-directory) at
  // dirfd/name. Returns true when an existing directory should be kept and updated instead.
  bool clear_path(int dirfd, const std::string& name, bool want_dir) {
    struct stat st{};
    if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) return false;
      refuse_errno("cannot stat the existing path");
    }
    if (want_dir && S_ISDIR(st.st_mode)) return true;
    remove_all_at(dirfd, name);
    return false;
  }

  void apply_entry(archive* tar, archive_entry* e) {
    Components path = split_entry_name(current_, limits_);
    if (path.empty()) {
      // "./": the root directory itself; only its metadata can change.
      if (archive_entry_hardlink(e) || archive_entry_filetype(e) != AE_IFDIR)
        refuse("the root entry must be a directory");
      apply_root_metadata(e);
      return;
    }
    const std::string& base = path.back();
    if (base.starts_with(kWhiteoutPrefix)) {
      apply_whiteout(path, base);
      return;
    }
    Components parent(path.begin(), path.end() - 1);
    for (const auto& c : parent)
      if (c.starts_with(kWhiteoutPrefix)) refuse("a whiteout name used as a directory");
    UniqueFd dir = resolver_->open_dir(parent, /*create=*/true);
    const int dfd = dir.get();

    if (const char* link = archive_entry_hardlink(e)) {
      apply_hardlink(dfd, base, link);
      mark_from_this_layer(path);
      return;
    }

    const mode_t type = archive_entry_filetype(e);
    const mode_t perm = archive_entry_perm(e) & 07777;
    bool keep_dir = clear_path(dfd, base, type == AE_IFDIR);
    switch (type) {
      case AE_IFREG: {
        write_file(tar, e, dfd, base, perm);
        mark_from_this_layer(path);
        return;  // metadata applied through the file's fd
      }
      case AE_IFDIR:
        if (!keep_dir && ::mkdirat(dfd, base.c_str(), 0700) != 0) refuse_errno("mkdir");
        dirs_.push_back({path, mtime_of(e)});
        break;
      case AE_IFLNK: {
        const char* target = archive_entry_symlink(e);
        if (!target || !*target) refuse("symlink without a target");
        if (std::strlen(target) > limits_.max_path_length) refuse("symlink target too long");
        if (::symlinkat(target, dfd, base.c_str()) != 0) refuse_errno("symlink");
        break;
      }
      case AE_IFCHR:
      case AE_IFBLK: {
        dev_t dev = ::makedev(archive_entry_rdevmajor(e), archive_entry_rdevminor(e));
        if (::mknodat(dfd, base.c_str(), type | perm, dev) != 0) refuse_errno("mknod");
        break;
      }
      case AE_IFIFO:
        if (::mknodat(dfd, base.c_str(), S_IFIFO | perm, 0) != 0) refuse_errno("mkfifo");
        break;
      case AE_IFSOCK:
        // Sockets are recreated by whoever listens on them; tar writers usually skip them.
        spdlog::debug("layer {}: skipping socket {}", blob_.string(), current_);
        return;
      default:
        refuse(fmt::format("unsupported entry type {:#o}", type));
    }
    mark_from_this_layer(path);
    apply_metadata_at(dfd, base, e, type, perm);
  }

  void apply_hardlink(int dfd, const std::string& base, const char* link) {
    Components target = split_entry_name(link, limits_);
    if (target.empty()) refuse("hard link to the root directory");
    Components tparent(target.begin(), target.end() - 1);
    UniqueFd tdir = resolver_->open_dir(tparent, /*create=*/false);
    struct stat tst{};
    if (!tdir || ::fstatat(tdir.get(), target.back().c_str(), &tst, AT_SYMLINK_NOFOLLOW) != 0)
      refuse(fmt::format("hard link to \"{}\", which does not exist", link));
    if (S_ISDIR(tst.st_mode)) refuse(fmt::format("hard link to directory \"{}\"", link));
    struct stat st{};
    if (::fstatat(dfd, base.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      if (st.st_dev == tst.st_dev && st.st_ino == tst.st_ino) return;  // already that file
      remove_all_at(dfd, base);
    }
    // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself, never its target.
    if (::linkat(tdir.get(), target.back().c_str(), dfd, base.c_str(), 0) != 0)
      refuse_errno(fmt::format("cannot hard link to \"{}\"", link));
  }

  void write_file(archive* tar, archive_entry* e, int dfd, const std::string& base, mode_t perm) {
    if (archive_entry_size_is_set(e) &&
        static_cast<std::uint64_t>(archive_entry_size(e)) > limits_.max_file_size)
      refuse(fmt::format("file of {} bytes exceeds the {} byte limit", archive_entry_size(e),
                         limits_.max_file_size));
    UniqueFd fd(::openat(dfd, base.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd) refuse_errno("cannot create file");
    const void* buf = nullptr;
    size_t size = 0;
    la_int64_t offset = 0;
    std::uint64_t written = 0;
    for (;;) {
      int r = archive_read_data_block(tar, &buf, &size, &offset);
      if (r == ARCHIVE_EOF) break;
      if (r < ARCHIVE_WARN) refuse(fmt::format("cannot read file data: {}", archive_why(tar)));
      written += size;
      stats_.file_bytes += size;
      if (written > limits_.max_file_size) refuse("file data exceeds the size limit");
      if (stats_.file_bytes > limits_.max_total_size)
        refuse(fmt::format("layer data exceeds the {} byte limit", limits_.max_total_size));
      // Sparse files arrive as blocks at offsets; pwrite leaves the holes unallocated.
      const char* p = static_cast<const char*>(buf);
      while (size > 0) {
        ssize_t n = ::pwrite(fd.get(), p, size, offset);
        if (n < 0) {
          if (errno == EINTR) continue;
          refuse_errno("write");
        }
        p += n;
        size -= static_cast<size_t>(n);
        offset += n;
      }
    }
    if (archive_entry_size_is_set(e) && ::ftruncate(fd.get(), archive_entry_size(e)) != 0)
      refuse_errno("ftruncate");
    // Owner first: chown clears setuid/setgid and file capabilities, so mode and xattrs follow.
    auto [uid, gid] = owner_of(e);
    if (::fchown(fd.get(), uid, gid) != 0) refuse_errno("chown");
    if (::fchmod(fd.get(), perm) != 0) refuse_errno("chmod");
    apply_xattrs(e, [&](const char* name, const void* value, size_t len) {
      return ::fsetxattr(fd.get(), name, value, len, 0);
    });
    auto ts = times_of(e);
    if (::futimens(fd.get(), ts.data()) != 0) refuse_errno("utimes");
  }

  void apply_metadata_at(int dfd, const std::string& base, archive_entry* e, mode_t type, mode_t perm) {
    auto [uid, gid] = owner_of(e);
    if (::fchownat(dfd, base.c_str(), uid, gid, AT_SYMLINK_NOFOLLOW) != 0) refuse_errno("chown");
    // Symlinks have no mode of their own on Linux; everything else was just created (or is a
    // kept directory) and is not a symlink, so fchmodat cannot be redirected.
    if (type != AE_IFLNK && ::fchmodat(dfd, base.c_str(), perm, 0) != 0) refuse_errno("chmod");
    // The xattr calls have no *at() form; /proc/self/fd/<dir>/<name> with the l* variants names
    // exactly this entry and follows nothing past the already-resolved directory.
    std::string proc = fmt::format("/proc/self/fd/{}/{}", dfd, base);
    apply_xattrs(e, [&](const char* name, const void* value, size_t len) {
      return ::lsetxattr(proc.c_str(), name, value, len, 0);
    });
    if (type != AE_IFDIR) {  // directories get theirs at the end, after their children
      auto ts = times_of(e);
      if (::utimensat(dfd, base.c_str(), ts.data(), AT_SYMLINK_NOFOLLOW) != 0) refuse_errno("utimes");
    }
  }

  void apply_root_metadata(archive_entry* e) {
    auto [uid, gid] = owner_of(e);
    if (::fchown(root_fd_.get(), uid, gid) != 0) refuse_errno("chown");
    if (::fchmod(root_fd_.get(), archive_entry_perm(e) & 07777) != 0) refuse_errno("chmod");
    apply_xattrs(e, [&](const char* name, const void* value, size_t len) {
      return ::fsetxattr(root_fd_.get(), name, value, len, 0);
    });
    dirs_.push_back({{}, mtime_of(e)});
  }

  template <typename Set>
  void apply_xattrs(archive_entry* e, Set&& set) {
    if (archive_entry_xattr_reset(e) == 0) return;
    std::uint64_t total = 0;
    const char* name = nullptr;
    const void* value = nullptr;
    size_t size = 0;
    while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK) {
      total += std::strlen(name) + size;
      if (total > limits_.max_xattr_bytes)
        refuse(fmt::format("extended attributes exceed {} bytes", limits_.max_xattr_bytes));
      if (set(name, value, size) != 0) {
        // A filesystem (or, for user.* on symlinks, the kernel) that cannot hold an attribute
        // loses it with a warning, as tar and umoci do; anything else is an error.
        if (errno == ENOTSUP || errno == EPERM) {
          spdlog::warn("layer {}: entry {}: cannot set xattr {}: {}", blob_.string(), current_,
                       name, std::strerror(errno));
          continue;
        }
        refuse_errno(fmt::format("cannot set xattr {}", name));
      }
    }
  }

  std::pair<uid_t, gid_t> owner_of(archive_entry* e) const {
    la_int64_t uid = archive_entry_uid(e), gid = archive_entry_gid(e);
    // (uid_t)-1 means "unchanged" to chown; anything negative or above it is nonsense.
    if (uid < 0 || gid < 0 || uid >= 0xffffffffll || gid >= 0xffffffffll)
      refuse(fmt::format("owner {}:{} is not a valid uid:gid", uid, gid));
    return {static_cast<uid_t>(uid), static_cast<gid_t>(gid)};
  }

  static timespec mtime_of(archive_entry* e) {
    return {static_cast<time_t>(archive_entry_mtime(e)), archive_entry_mtime_nsec(e)};
  }
  static std::array<timespec, 2> times_of(archive_entry* e) {
    timespec m = mtime_of(e);
    timespec a = archive_entry_atime_is_set(e)
                     ? timespec{static_cast<time_t>(archive_entry_atime(e)), archive_entry_atime_nsec(e)}
                     : m;
    return {a, m};
  }

  // Directory mtimes last: creating children changed them while the layer was applied.
  void finish_directories() {
    for (const auto& d : dirs_) {
      current_ = d.path.empty() ? "./" : join(d.path);
      std::array<timespec, 2> ts{d.mtime, d.mtime};
      if (d.path.empty()) {
        if (::futimens(root_fd_.get(), ts.data()) != 0) refuse_errno("utimes");
        continue;
      }
      Components parent(d.path.begin(), d.path.end() - 1);
      UniqueFd dir = resolver_->open_dir(parent, /*create=*/false);
      if (!dir) continue;  // removed again later in the layer
      if (::utimensat(dir.get(), d.path.back().c_str(), ts.data(), AT_SYMLINK_NOFOLLOW) != 0 &&
          errno != ENOENT)
        refuse_errno("utimes");
    }
    current_.clear();
  }

  struct DirTime {
    Components path;
    timespec mtime;
  };

  std::filesystem::path blob_;
  const LayerLimits& limits_;
  UniqueFd root_fd_;
  std::optional<Resolver> resolver_;
  std::unordered_set<std::string> this_layer_;
  std::vector<DirTime> dirs_;
  std::string current_;
  LayerStats stats_;
};

}  // namespace

LayerStats apply_layer(const std::filesystem::path& rootfs_dir,
                       const std::filesystem::path& layer_blob, const LayerLimits& limits) {
  Applier applier(rootfs_dir, layer_blob, limits);
  return applier.run();
}

}  // namespace sm::oci
