#include "oci/layer.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "oci/digest.h"
#include "oci/test_images.h"

namespace sm::oci {
namespace {

namespace fs = std::filesystem;

// ---- building layers with libarchive's writer -------------------------------------------

struct Entry {
  std::string name;
  mode_t type = AE_IFREG;
  mode_t perm = 0644;
  std::string data;           // file contents
  std::string link;           // symlink target
  std::string hardlink;       // hard link target (type ignored)
  int64_t uid = 0, gid = 0;
  int64_t mtime = 1700000000;
  unsigned rmajor = 0, rminor = 0;
  std::map<std::string, std::string> xattrs;
};

Entry file(std::string name, std::string data, mode_t perm = 0644) {
  Entry e;
  e.name = std::move(name);
  e.data = std::move(data);
  e.perm = perm;
  return e;
}
Entry dir(std::string name, mode_t perm = 0755) {
  Entry e;
  e.name = std::move(name);
  e.type = AE_IFDIR;
  e.perm = perm;
  return e;
}
Entry symlink(std::string name, std::string target) {
  Entry e;
  e.name = std::move(name);
  e.type = AE_IFLNK;
  e.perm = 0777;
  e.link = std::move(target);
  return e;
}
Entry hardlink(std::string name, std::string target) {
  Entry e;
  e.name = std::move(name);
  e.hardlink = std::move(target);
  return e;
}
Entry whiteout(std::string name) { return file(std::move(name), ""); }

enum class Comp { none, gzip, zstd };

void write_tar(const fs::path& out, const std::vector<Entry>& entries, Comp comp = Comp::none) {
  archive* a = archive_write_new();
  ASSERT_NE(a, nullptr);
  archive_write_set_format_pax_restricted(a);
  // Names are bytes, as on Linux; without this, pax in the C locale refuses non-ASCII names.
  ASSERT_EQ(archive_write_set_format_option(a, "pax", "hdrcharset", "BINARY"), ARCHIVE_OK);
  if (comp == Comp::gzip) archive_write_add_filter_gzip(a);
  if (comp == Comp::zstd) archive_write_add_filter_zstd(a);
  ASSERT_EQ(archive_write_open_filename(a, out.c_str()), ARCHIVE_OK) << archive_error_string(a);
  for (const auto& e : entries) {
    archive_entry* ae = archive_entry_new();
    archive_entry_copy_pathname(ae, e.name.c_str());
    archive_entry_set_uid(ae, e.uid);
    archive_entry_set_gid(ae, e.gid);
    archive_entry_set_mtime(ae, e.mtime, 0);
    archive_entry_set_perm(ae, e.perm);
    for (const auto& [k, v] : e.xattrs) archive_entry_xattr_add_entry(ae, k.c_str(), v.data(), v.size());
    if (!e.hardlink.empty()) {
      archive_entry_set_filetype(ae, AE_IFREG);
      archive_entry_copy_hardlink(ae, e.hardlink.c_str());
      archive_entry_set_size(ae, 0);
    } else {
      archive_entry_set_filetype(ae, e.type);
      if (e.type == AE_IFLNK) archive_entry_copy_symlink(ae, e.link.c_str());
      if (e.type == AE_IFCHR || e.type == AE_IFBLK) {
        archive_entry_set_rdevmajor(ae, e.rmajor);
        archive_entry_set_rdevminor(ae, e.rminor);
      }
      archive_entry_set_size(ae, e.type == AE_IFREG ? static_cast<int64_t>(e.data.size()) : 0);
    }
    ASSERT_EQ(archive_write_header(a, ae), ARCHIVE_OK) << archive_error_string(a);
    if (e.type == AE_IFREG && e.hardlink.empty() && !e.data.empty())
      archive_write_data(a, e.data.data(), e.data.size());
    archive_entry_free(ae);
  }
  archive_write_close(a);
  archive_write_free(a);
}

// A scratch directory with a root/ to unpack into and room beside it for files that must stay
// untouched ("outside").
class LayerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "layer application needs root (ownership, device nodes)";
    char tmpl[] = "/tmp/sm-layer-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    base_ = tmpl;
    root_ = base_ / "root";
    fs::create_directory(root_);
  }
  void TearDown() override {
    if (!base_.empty()) fs::remove_all(base_);
  }

  LayerStats apply(const std::vector<Entry>& entries, Comp comp = Comp::none, const LayerLimits& lim = {}) {
    fs::path blob = base_ / ("layer" + std::to_string(n_++) + ".tar");
    write_tar(blob, entries, comp);
    return apply_layer(root_, blob, lim);
  }

  // Expects apply() to fail with an sm::Error whose message names `entry` and contains `why`.
  void expect_refused(const std::vector<Entry>& entries, const std::string& entry, const std::string& why,
                      const LayerLimits& lim = {}) {
    try {
      (void)apply(entries, Comp::none, lim);
      ADD_FAILURE() << "layer with entry " << entry << " was accepted";
    } catch (const Error& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find("\"" + entry + "\""), std::string::npos) << msg;
      EXPECT_NE(msg.find(why), std::string::npos) << msg;
    }
  }

  static struct stat lstat_of(const fs::path& p) {
    struct stat st{};
    EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
    return st;
  }
  static std::string read(const fs::path& p) { return testing::slurp(p); }

  fs::path base_, root_;
  int n_ = 0;
};

TEST_F(LayerTest, CreatesEveryEntryTypeWithItsMetadata) {
  Entry f = file("etc/owned", "hello\n", 04750);
  f.uid = 1000;
  f.gid = 1001;
  f.mtime = 1234567890;
  f.xattrs["user.origin"] = "layer";
  Entry d = dir("srv/shared", 02775);
  d.gid = 1000;
  d.mtime = 1111111111;
  Entry chr;
  chr.name = "dev/null";
  chr.type = AE_IFCHR;
  chr.perm = 0666;
  chr.rmajor = 1;
  chr.rminor = 3;
  Entry blk = chr;
  blk.name = "dev/loop9";
  blk.type = AE_IFBLK;
  blk.rmajor = 7;
  blk.rminor = 9;
  Entry fifo;
  fifo.name = "run/fifo";
  fifo.type = AE_IFIFO;
  fifo.perm = 0620;
  Entry link = symlink("bin/sh", "busybox");
  link.uid = 5;
  link.mtime = 1000;
  link.xattrs["trusted.sm-test"] = "on-a-symlink";
  link.xattrs["user.not-allowed-on-symlinks"] = "dropped with a warning";
  d.xattrs["user.dir"] = "yes";

  auto stats = apply({dir("./"), dir("etc"), f, dir("srv"), d, dir("tmp", 01777), dir("dev"), chr, blk,
                      dir("run"), fifo, dir("bin"), file("bin/busybox", "ELF", 0755), link,
                      hardlink("bin/busybox-again", "bin/busybox"), file("empty", "")});
  EXPECT_EQ(stats.entries, 16u);
  EXPECT_EQ(stats.file_bytes, 9u);

  auto st = lstat_of(root_ / "etc/owned");
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 04750u) << "setuid survives the chown";
  EXPECT_EQ(st.st_uid, 1000u);
  EXPECT_EQ(st.st_gid, 1001u);
  EXPECT_EQ(st.st_mtim.tv_sec, 1234567890);
  EXPECT_EQ(read(root_ / "etc/owned"), "hello\n");
  char xv[16] = {};
  ASSERT_EQ(::lgetxattr((root_ / "etc/owned").c_str(), "user.origin", xv, sizeof xv), 5);
  EXPECT_STREQ(xv, "layer");

  st = lstat_of(root_ / "srv/shared");
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 02775u);
  EXPECT_EQ(st.st_gid, 1000u);
  EXPECT_EQ(st.st_mtim.tv_sec, 1111111111) << "directory mtimes are set after their children";
  EXPECT_EQ(lstat_of(root_ / "tmp").st_mode & 07777, 01777u);
  ASSERT_EQ(::lgetxattr((root_ / "srv/shared").c_str(), "user.dir", xv, sizeof xv), 3);
  char sv[32] = {};
  ASSERT_EQ(::lgetxattr((root_ / "bin/sh").c_str(), "trusted.sm-test", sv, sizeof sv), 12);
  EXPECT_STREQ(sv, "on-a-symlink");

  st = lstat_of(root_ / "dev/null");
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, ::makedev(1, 3));
  st = lstat_of(root_ / "dev/loop9");
  EXPECT_TRUE(S_ISBLK(st.st_mode));
  EXPECT_EQ(st.st_rdev, ::makedev(7, 9));
  st = lstat_of(root_ / "run/fifo");
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0620u);

  st = lstat_of(root_ / "bin/sh");
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  EXPECT_EQ(fs::read_symlink(root_ / "bin/sh"), "busybox");
  EXPECT_EQ(st.st_uid, 5u);
  EXPECT_EQ(st.st_mtim.tv_sec, 1000);

  auto a = lstat_of(root_ / "bin/busybox"), b = lstat_of(root_ / "bin/busybox-again");
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_EQ(a.st_nlink, 2u);
  EXPECT_EQ(lstat_of(root_ / "empty").st_size, 0);
}

TEST_F(LayerTest, MissingParentsAreCreatedAndUtf8NamesKept) {
  (void)apply({file("a/b/c/deep", "x"), file("ünïcødé/名前", "y")});
  EXPECT_EQ(read(root_ / "a/b/c/deep"), "x");
  EXPECT_EQ(lstat_of(root_ / "a/b").st_mode & 07777, 0755u);
  EXPECT_EQ(read(root_ / "ünïcødé/名前"), "y");
}

TEST_F(LayerTest, GzipZstdAndPlainGiveTheSameTreeAndTheDiffIdOfTheTar) {
  std::vector<Entry> entries = {dir("d"), file("d/f", std::string(100000, 'z')), symlink("d/l", "f")};
  fs::path plain = base_ / "plain.tar";
  write_tar(plain, entries);
  Digest expected = Digest::of(testing::slurp(plain));
  for (Comp c : {Comp::none, Comp::gzip, Comp::zstd}) {
    fs::remove_all(root_);
    fs::create_directory(root_);
    auto stats = apply(entries, c);
    EXPECT_EQ(stats.diff_id, expected) << "compression " << static_cast<int>(c);
    EXPECT_EQ(read(root_ / "d/f"), std::string(100000, 'z'));
    EXPECT_EQ(fs::read_symlink(root_ / "d/l"), "f");
  }
}

TEST_F(LayerTest, EmptyLayersApply) {
  // Docker's "empty layer" (ENV/LABEL steps): a gzip of an end-of-archive marker.
  for (Comp c : {Comp::none, Comp::gzip, Comp::zstd}) {
    auto stats = apply({}, c);
    EXPECT_EQ(stats.entries, 0u);
    EXPECT_EQ(stats.diff_id.str().size(), 71u);
  }
  EXPECT_TRUE(fs::is_empty(root_));
}

TEST_F(LayerTest, WhiteoutsDeleteLowerFilesAndDirectories) {
  (void)apply({dir("etc"), file("etc/motd", "hi"), file("etc/keep", "k"), dir("usr/share/doc"),
               file("usr/share/doc/README", "r"), dir("usr/share/doc/sub"), file("usr/share/doc/sub/x", "x")});
  auto stats = apply({whiteout("etc/.wh.motd"), whiteout("usr/share/.wh.doc"),
                      whiteout("etc/.wh.never-existed"), whiteout("nowhere/.wh.thing")});
  EXPECT_EQ(stats.whiteouts, 4u);
  EXPECT_FALSE(fs::exists(root_ / "etc/motd"));
  EXPECT_TRUE(fs::exists(root_ / "etc/keep"));
  EXPECT_FALSE(fs::exists(root_ / "usr/share/doc"));
  EXPECT_TRUE(fs::exists(root_ / "usr/share"));
  EXPECT_FALSE(fs::exists(root_ / "etc/.wh.motd")) << "whiteout markers never appear";
  EXPECT_FALSE(fs::exists(root_ / "nowhere")) << "a whiteout creates nothing";
}

TEST_F(LayerTest, OpaqueDirectoryHidesOnlyLowerContents) {
  (void)apply({dir("opt/app"), file("opt/app/old1", "1"), dir("opt/app/sub"), file("opt/app/sub/old", "o"),
               file("opt/other", "stays")});
  // "-early" sorts before the marker: an entry of the same layer, which the marker must keep.
  (void)apply({dir("opt/app"), file("opt/app/-early", "e"), whiteout("opt/app/.wh..wh..opq"),
               dir("opt/app/sub"), file("opt/app/sub/new", "n")});
  EXPECT_FALSE(fs::exists(root_ / "opt/app/old1"));
  EXPECT_FALSE(fs::exists(root_ / "opt/app/sub/old"));
  EXPECT_EQ(read(root_ / "opt/app/-early"), "e");
  EXPECT_EQ(read(root_ / "opt/app/sub/new"), "n");
  EXPECT_EQ(read(root_ / "opt/other"), "stays");
  EXPECT_FALSE(fs::exists(root_ / "opt/app/.wh..wh..opq"));
}

TEST_F(LayerTest, WhiteoutDoesNotHideFilesOfItsOwnLayer) {
  (void)apply({dir("d"), file("d/lower", "l"), dir("d/x"), file("d/x/lower", "l")});
  // "-x" sorts before ".wh.-x"; "x" after ".wh.x": both orders must keep this layer's files.
  (void)apply({file("d/-x", "mine"), whiteout("d/.wh.-x"), whiteout("d/.wh.x"), dir("d/x"),
               file("d/x/mine", "m"), whiteout("d/.wh.lower")});
  EXPECT_EQ(read(root_ / "d/-x"), "mine");
  EXPECT_EQ(read(root_ / "d/x/mine"), "m");
  EXPECT_FALSE(fs::exists(root_ / "d/x/lower")) << "the lower directory was replaced";
  EXPECT_FALSE(fs::exists(root_ / "d/lower"));
}

TEST_F(LayerTest, EntriesReplaceWhatLowerLayersLeft) {
  (void)apply({file("f2d", "file"), dir("d2f"), file("d2f/child", "c"), dir("real"),
               symlink("s2d", "real"), file("ro", "old", 0444)});
  (void)apply({dir("f2d"), file("f2d/inside", "i"), file("d2f", "now a file"), dir("s2d", 0700),
               file("s2d/mine", "m"), file("ro", "new", 0600)});
  EXPECT_TRUE(fs::is_directory(fs::symlink_status(root_ / "f2d")));
  EXPECT_EQ(read(root_ / "d2f"), "now a file");
  EXPECT_TRUE(fs::is_directory(fs::symlink_status(root_ / "s2d"))) << "a directory replaces a symlink";
  EXPECT_FALSE(fs::exists(root_ / "real/mine")) << "...and is never written through it";
  EXPECT_EQ(read(root_ / "ro"), "new");
  EXPECT_EQ(lstat_of(root_ / "ro").st_mode & 07777, 0600u);
}

TEST_F(LayerTest, ParentSymlinksResolveInsideTheRoot) {
  // Merged-/usr images: /lib -> usr/lib, /bin -> /usr/bin (absolute). A later layer writing
  // lib/x or bin/y lands in the root's usr/, never in the host's.
  (void)apply({dir("usr/lib"), dir("usr/bin"), symlink("lib", "usr/lib"), symlink("bin", "/usr/bin"),
               dir("etc"), symlink("host-etc", "/etc")});
  (void)apply({file("lib/libx.so", "x"), file("bin/tool", "t"), file("host-etc/sm-layer-test-probe", "p")});
  EXPECT_EQ(read(root_ / "usr/lib/libx.so"), "x");
  EXPECT_EQ(read(root_ / "usr/bin/tool"), "t");
  EXPECT_EQ(read(root_ / "etc/sm-layer-test-probe"), "p") << "an absolute symlink is re-rooted";
  EXPECT_FALSE(fs::exists("/etc/sm-layer-test-probe"));
}

TEST_F(LayerTest, AFileEntryReplacesASymlinkInsteadOfWritingThroughIt) {
  std::ofstream(base_ / "outside") << "precious";
  (void)apply({symlink("victim", (base_ / "outside").string()), symlink("rel-victim", "../outside")});
  (void)apply({file("victim", "overwritten"), file("rel-victim", "overwritten")});
  EXPECT_EQ(read(base_ / "outside"), "precious");
  EXPECT_EQ(read(root_ / "victim"), "overwritten");
  EXPECT_FALSE(fs::is_symlink(root_ / "victim"));
}

TEST_F(LayerTest, HardLinksToLowerLayersAndToSymlinks) {
  (void)apply({file("lower", "shared"), symlink("sym", "/etc/passwd")});
  (void)apply({hardlink("up", "lower"), hardlink("sym-link", "sym"), hardlink("./again", "./lower")});
  EXPECT_EQ(lstat_of(root_ / "up").st_ino, lstat_of(root_ / "lower").st_ino);
  EXPECT_EQ(lstat_of(root_ / "lower").st_nlink, 3u);
  EXPECT_TRUE(fs::is_symlink(root_ / "sym-link")) << "a hard link to a symlink links the symlink";
}

// ---- hostile archives: each refused with an error naming the entry ----

TEST_F(LayerTest, RefusesDotDotComponents) {
  expect_refused({file("../escape", "x")}, "../escape", "\"..\"");
  expect_refused({dir("a"), file("a/../../escape", "x")}, "a/../../escape", "\"..\"");
  expect_refused({file("a/b/../c", "x")}, "a/b/../c", "\"..\"");
  EXPECT_FALSE(fs::exists(base_ / "escape"));
}

TEST_F(LayerTest, RefusesAbsolutePaths) {
  expect_refused({file("/etc/sm-escape", "x")}, "/etc/sm-escape", "absolute path");
  EXPECT_FALSE(fs::exists("/etc/sm-escape"));
}

TEST_F(LayerTest, RefusesWritesThroughSymlinksThatLeaveTheRoot) {
  expect_refused({symlink("up", "../.."), file("up/escape", "x")}, "up/escape", "points outside the root");
  expect_refused({symlink("deep", "a/../../../x"), dir("a"), file("deep/f", "x")}, "deep/f",
                 "points outside the root");
  expect_refused({symlink("abs-up", "/../.."), file("abs-up/f", "x")}, "abs-up/f", "points outside the root");
  // A whiteout or opaque marker reached through such a link deletes nothing outside either.
  fs::create_directory(base_ / "keep");
  std::ofstream(base_ / "keep/file") << "k";
  expect_refused({symlink("out", "../keep"), whiteout("out/.wh.file")}, "out/.wh.file", "points outside");
  expect_refused({whiteout("out/.wh..wh..opq")}, "out/.wh..wh..opq", "points outside");
  EXPECT_TRUE(fs::exists(base_ / "keep/file"));
  EXPECT_FALSE(fs::exists(base_ / "escape"));
}

TEST_F(LayerTest, RefusesSymlinkLoops) {
  expect_refused({symlink("a", "b"), symlink("b", "a"), file("a/x", "x")}, "a/x", "more than 40 symlinks");
}

TEST_F(LayerTest, RefusesWritesBelowAFile) {
  expect_refused({file("f", "x"), file("f/g", "y")}, "f/g", "not a directory");
}

TEST_F(LayerTest, RefusesHardLinksOutsideOrToNothing) {
  std::ofstream(base_ / "outside") << "secret";
  expect_refused({hardlink("h1", "../outside")}, "h1", "\"..\"");
  expect_refused({hardlink("h2", "/etc/passwd")}, "h2", "absolute path");
  expect_refused({hardlink("h3", "does/not/exist")}, "h3", "does not exist");
  expect_refused({symlink("up", ".."), hardlink("h4", "up/outside")}, "h4", "points outside the root");
  expect_refused({dir("d"), hardlink("h5", "d")}, "h5", "directory");
  EXPECT_EQ(lstat_of(base_ / "outside").st_nlink, 1u);
}

TEST_F(LayerTest, RefusesAbsurdSizesCountsAndNames) {
  LayerLimits small;
  small.max_file_size = 1000;
  small.max_total_size = 1500;
  small.max_entries = 5;
  expect_refused({file("big", std::string(1001, 'x'))}, "big", "exceeds the 1000 byte limit", small);
  expect_refused({file("a", std::string(800, 'a')), file("b", std::string(800, 'b'))}, "b",
                 "layer data exceeds the 1500 byte limit", small);
  try {
    (void)apply({file("1", ""), file("2", ""), file("3", ""), file("4", ""), file("5", ""), file("6", "")},
                Comp::none, small);
    ADD_FAILURE() << "too many entries accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than 5 entries"), std::string::npos) << e.what();
  }
  std::string long_component(256, 'n');
  expect_refused({file(long_component, "x")}, long_component, "longer than 255 bytes");
  std::string deep;
  for (int i = 0; i < 300; ++i) deep += "d/";
  deep += "f";
  expect_refused({file(deep, "x")}, deep, "more than 256 path components");
  LayerLimits short_paths;
  short_paths.max_path_length = 64;
  std::string long_path = std::string(40, 'a') + "/" + std::string(40, 'b');
  expect_refused({file(long_path, "x")}, long_path, "over the 64 byte limit", short_paths);
}

TEST_F(LayerTest, RefusesBadWhiteouts) {
  expect_refused({whiteout(".wh..")}, ".wh..", "whiteout names no file");
  expect_refused({file(".wh.dir/f", "x")}, ".wh.dir/f", "whiteout name used as a directory");
}

TEST_F(LayerTest, RejectsDataThatIsNotALayer) {
  fs::path junk = base_ / "junk";
  std::ofstream(junk) << std::string(4096, '\x7f') << "not a tar";
  EXPECT_THROW((void)apply_layer(root_, junk), Error);

  // A tar cut off in the middle of a file's data.
  fs::path full = base_ / "full.tar";
  write_tar(full, {file("a", std::string(10000, 'a')), file("b", "b")});
  std::string bytes = testing::slurp(full);
  fs::path cut = base_ / "cut.tar";
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, 5000);
  try {
    (void)apply_layer(root_, cut);
    ADD_FAILURE() << "truncated tar accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"a\""), std::string::npos) << e.what();
  }

  // A gzip stream cut short.
  fs::path gz = base_ / "full.tar.gz";
  write_tar(gz, {file("a", std::string(100000, 'q')), file("b", "b")}, Comp::gzip);
  bytes = testing::slurp(gz);
  std::ofstream(cut, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() / 2);
  EXPECT_THROW((void)apply_layer(root_, cut), Error);

  EXPECT_THROW((void)apply_layer(root_, base_ / "no-such-file"), Error);
  EXPECT_THROW((void)apply_layer(base_ / "no-such-root", full), Error);
}

TEST_F(LayerTest, ALayerLibarchiveFailsOnWithoutAMessageIsAnError) {
  // Found by layer_fuzz: a gzip member whose failure libarchive reports with no message string;
  // formatting the null string threw fmt::format_error past the sm::Error contract.
  static const unsigned char kInput[] = {0x1f, 0x8b, 0x08, 0x00, 0xc2, 0x5b, 0x17, 0x6b, 0x00, 0x03, 0x4b, 0xd4, 0x67, 0xa0, 0x39, 0x30, 0x30, 0x30, 0x30, 0x37, 0x35, 0x55, 0x00, 0xd1, 0x40, 0x80, 0x4e, 0x43, 0x38, 0xa8, 0x6c, 0x73, 0x13, 0x03, 0x53, 0x06, 0x05, 0x53, 0xda, 0x3b, 0x8d, 0x81, 0xa1, 0xb4, 0xb8, 0x24, 0xb1, 0x08, 0xe8, 0x14, 0x4a, 0xd1, 0x40, 0x80, 0x4e, 0x43, 0x38, 0xa8, 0x6c, 0x73, 0x13, 0x03, 0x53, 0x06, 0x05, 0x53, 0xda, 0x3b, 0x8d, 0x81, 0xa1, 0xb4, 0xb8, 0x24, 0xb1, 0x08, 0xe8, 0x14, 0x4a, 0xcd, 0x41, 0xf7, 0xdc, 0x10, 0x01, 0x89, 0xfa, 0x7a, 0xe5, 0x19, 0x7a, 0x49, 0x34, 0xb5, 0x03, 0x18, 0x1e, 0x66, 0x26, 0x26, 0x24, 0xc4, 0xbf, 0xa1, 0x81, 0x91, 0xb1, 0x11, 0x83, 0x02, 0xc5, 0x71, 0x42, 0x0c, 0x18, 0xe1, 0xf1, 0x9f, 0x0c, 0x8e, 0x7f, 0x30, 0xce, 0x2f, 0x28, 0xa4, 0x8d, 0x1d, 0xa4, 0xc7, 0xbf, 0xa1, 0xb1, 0x99, 0xf1, 0x68, 0xfc, 0xd3, 0x03, 0x24, 0xeb, 0xa7, 0xd0, 0xdc, 0x0e, 0xc2, 0xf1, 0x6f, 0x88, 0x5e, 0xfe, 0x00, 0x00, 0x00};
  fs::path blob = base_ / "no-message.gz";
  std::ofstream(blob, std::ios::binary).write(reinterpret_cast<const char*>(kInput), sizeof kInput);
  EXPECT_THROW((void)apply_layer(root_, blob), Error);
}

// ---- the project's multi-layer test image, compared with umoci's unpack ----

// Applies every layer of `tag` from the test images' OCI layout; returns the diff_ids seen.
std::vector<Digest> apply_image(const fs::path& layout, const std::string& tag, const fs::path& root) {
  auto manifest = nlohmann::json::parse(testing::slurp(testing::layout_blob(layout, testing::layout_manifest(layout, tag))));
  std::vector<Digest> diff_ids;
  for (const auto& l : manifest.at("layers"))
    diff_ids.push_back(apply_layer(root, testing::layout_blob(layout, l.at("digest").get<std::string>())).diff_id);
  auto config = nlohmann::json::parse(
      testing::slurp(testing::layout_blob(layout, manifest.at("config").at("digest").get<std::string>())));
  std::vector<Digest> want;
  for (const auto& d : config.at("rootfs").at("diff_ids")) want.push_back(Digest::parse(d.get<std::string>()));
  EXPECT_EQ(diff_ids, want) << tag << ": diff_ids differ from the config's";
  return diff_ids;
}

TEST_F(LayerTest, MultiLayerImageMatchesUmociUnpack) {
  for (const char* tool : {"umoci", "skopeo"})
    if (!testing::have_tool(tool)) GTEST_SKIP() << tool << " is not installed; scripts/setup installs it";
  fs::path images = testing::test_images_dir();
  fs::path layout = images / "oci";

  fs::path bundle = base_ / "bundle";
  std::string cmd = "umoci unpack --image '" + layout.string() + ":multi' '" + bundle.string() + "' >/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto want = testing::snapshot(bundle / "rootfs");

  for (const char* tag : {"multi", "multi-zstd", "multi-tar"}) {
    SCOPED_TRACE(tag);
    fs::remove_all(root_);
    fs::create_directory(root_);
    (void)apply_image(layout, tag, root_);
    auto got = testing::snapshot(root_);
    for (const auto& d : testing::diff_trees(want, got)) ADD_FAILURE() << d;
    EXPECT_GT(got.size(), 250u);  // busybox applets and the rest: the image really was applied
  }

  // Spot checks of what the layers were built to exercise (tests/images/build).
  auto got = testing::snapshot(root_);
  EXPECT_FALSE(got.count("etc/motd"));                   // whiteout
  EXPECT_FALSE(got.count("opt/app/old1"));               // opaque directory
  EXPECT_FALSE(got.count("srv/shared/from-layer2"));     // opaque directory, marker after an entry
  EXPECT_TRUE(got.count("srv/shared/-sorted-before-opq"));
  EXPECT_EQ(got["tmp"].mode, 01777u);
  EXPECT_EQ(got["usr/bin/suid-busybox"].mode, 04755u);
  EXPECT_EQ(got["srv/shared"].mode, 02775u);
  EXPECT_EQ(got["data/file"].nlink, 2u);
  EXPECT_EQ(got["data/fifo"].type, "fifo");
  EXPECT_EQ(got["var/lib/data"].type, "file");
  EXPECT_EQ(got["opt/app/new1"].type, "dir");
}

}  // namespace
}  // namespace sm::oci
