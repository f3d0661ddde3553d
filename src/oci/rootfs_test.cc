#include "oci/rootfs.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <vector>

#include "common/error.h"
#include "oci/import.h"
#include "oci/layer.h"
#include "oci/manifest.h"
#include "oci/store.h"
#include "oci/test_images.h"

namespace sm::oci {
namespace {

namespace fs = std::filesystem;

// Puts one image of an OCI layout into the store; returns its manifest digest.
Digest import_oci(Store& store, const fs::path& layout, const std::string& tag) {
  Digest md = store.put_blob_file(testing::layout_blob(layout, testing::layout_manifest(layout, tag)));
  Manifest m = Manifest::parse(store.read_blob(md));
  (void)store.put_blob_file(testing::layout_blob(layout, m.config.digest.str()), m.config.digest);
  for (const auto& l : m.layers) (void)store.put_blob_file(testing::layout_blob(layout, l.digest.str()), l.digest);
  return md;
}

// Same for skopeo's dir: transport (Docker v2s2 media types): manifest.json + blobs by hex.
Digest import_docker_dir(Store& store, const fs::path& dir) {
  Digest md = store.put_blob_file(dir / "manifest.json");
  Manifest m = Manifest::parse(store.read_blob(md));
  EXPECT_EQ(m.media_type, media::kDockerManifest);
  (void)store.put_blob_file(dir / m.config.digest.hex(), m.config.digest);
  for (const auto& l : m.layers) (void)store.put_blob_file(dir / l.digest.hex(), l.digest);
  return md;
}

// The on-disk i_mode of inode `nid` of an EROFS image (Linux fs/erofs/erofs_fs.h: the
// superblock at byte 1024 holds blkszbits at +12 and meta_blkaddr at +40; inode `nid` sits at
// meta_blkaddr * block size + nid * 32, with i_mode at +4 in both inode layouts). Read directly
// because dump.erofs 1.5 prints only the permission bits.
unsigned erofs_mode(const fs::path& image, unsigned long nid) {
  std::string img = testing::slurp(image);
  auto u32 = [&](std::size_t off) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(img.at(off))) |
           static_cast<std::uint32_t>(static_cast<unsigned char>(img.at(off + 1))) << 8 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(img.at(off + 2))) << 16 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(img.at(off + 3))) << 24;
  };
  if (u32(1024) != 0xE0F5E1E2) throw std::runtime_error("not an EROFS image: " + image.string());
  std::size_t block = std::size_t{1} << static_cast<unsigned char>(img.at(1024 + 12));
  std::size_t off = u32(1024 + 40) * block + nid * 32 + 4;
  return (u32(off) & 0xffff);
}

// The differences between `want` and the tree inside an EROFS image, read back with
// erofs-utils' own extractor (no mount needed). fsck.erofs --extract neither recreates hard
// links nor keeps setuid/setgid on files (it chowns after chmod), so those two are checked in
// the image itself with dump.erofs.
std::vector<std::string> diff_erofs(std::map<std::string, testing::Node> want, const fs::path& image,
                                    const fs::path& where) {
  std::string cmd = "fsck.erofs --extract='" + where.string() + "' '" + image.string() + "' >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) return {"failed: " + cmd};
  std::vector<std::string> out;
  for (auto& [path, node] : want) {
    bool suid = node.type == "file" && (node.mode & 06000);
    if (!suid && node.nlink <= 1) continue;
    // "NID: 62982   Links: 2   Layout: 2 ..."
    std::string dump = "dump.erofs --path='/" + path + "' '" + image.string() + "'";
    FILE* p = ::popen(dump.c_str(), "r");
    if (!p) return {"cannot run " + dump};
    unsigned long nid = 0, links = 0;
    char line[512];
    while (std::fgets(line, sizeof line, p)) std::sscanf(line, "NID: %lu Links: %lu", &nid, &links);
    ::pclose(p);
    if (links != node.nlink) out.push_back(path + ": " + std::to_string(links) + " links in the image");
    unsigned mode = erofs_mode(image, nid);
    if ((mode & 07777) != node.mode) out.push_back(path + ": mode " + std::to_string(mode & 07777) + " in the image");
    if (suid) node.mode &= ~06000u;
  }
  for (auto& d : testing::diff_trees(want, testing::snapshot(where), /*compare_nlink=*/false)) out.push_back(d);
  return out;
}

class RootfsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "building a rootfs needs root (ownership, device nodes)";
    for (const char* tool : {"umoci", "skopeo", "mkfs.erofs", "fsck.erofs"})
      if (!testing::have_tool(tool)) GTEST_SKIP() << tool << " is not installed; scripts/setup installs it";
    char tmpl[] = "/var/tmp/sm-rootfs-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    base_ = tmpl;
    store_.emplace(base_ / "store");
    images_ = testing::test_images_dir();
  }
  void TearDown() override {
    store_.reset();
    if (!base_.empty()) fs::remove_all(base_);
  }

  // The multi-layer image's tree as apply_layer produces it (proven equal to umoci's unpack
  // in layer_test.cc).
  std::map<std::string, testing::Node> reference_tree(const Digest& md) {
    fs::path tree = base_ / "reference";
    fs::create_directories(tree);
    fs::permissions(tree, fs::perms(0755));
    Manifest m = Manifest::parse(store_->read_blob(md));
    for (const auto& l : m.layers) (void)apply_layer(tree, store_->blob_path(l.digest));
    auto t = testing::snapshot(tree);
    fs::remove_all(tree);
    return t;
  }

  std::vector<fs::path> rootfs_entries() {
    std::vector<fs::path> out;
    for (const auto& e : fs::directory_iterator(store_->rootfs_dir()))
      if (e.path().extension() != ".lock") out.push_back(e.path().filename());
    return out;
  }

  fs::path base_, images_;
  std::optional<Store> store_;
};

TEST_F(RootfsTest, BuildsAnErofsImageOfTheMultiLayerImageAndReusesIt) {
  Digest md = import_oci(*store_, images_ / "oci", "multi");
  Rootfs r = ensure_rootfs(*store_, md);
  EXPECT_EQ(r.manifest, md);
  EXPECT_EQ(r.image, rootfs_image_path(*store_, md));
  EXPECT_EQ(r.image.filename().string(), md.file_name() + ".v" + std::to_string(kRootfsFormatVersion) + ".erofs");
  ASSERT_TRUE(fs::is_regular_file(r.image));
  EXPECT_EQ(r.config.user, "1000:1000");
  EXPECT_EQ(r.config.argv(), (std::vector<std::string>{"/bin/sh", "-c", "cat /data/file"}));
  EXPECT_EQ(rootfs_entries(), std::vector<fs::path>{r.image.filename()}) << "no build leftovers";

  auto want = reference_tree(md);
  ASSERT_EQ(want["data/file.hardlink"].nlink, 2u);
  ASSERT_EQ(want["usr/bin/suid-busybox"].mode, 04755u);
  for (const auto& d : diff_erofs(want, r.image, base_ / "x")) ADD_FAILURE() << d;

  struct stat before{}, after{};
  ASSERT_EQ(::stat(r.image.c_str(), &before), 0);
  Rootfs again = ensure_rootfs(*store_, md);
  ASSERT_EQ(::stat(again.image.c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino) << "the cached image is reused, not rebuilt";
  EXPECT_EQ(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
}

TEST_F(RootfsTest, ZstdAndDockerMediaTypesGiveTheSameTree) {
  Digest gz = import_oci(*store_, images_ / "oci", "multi");
  Digest zst = import_oci(*store_, images_ / "oci", "multi-zstd");
  Digest docker = import_docker_dir(*store_, images_ / "docker/multi");
  auto want = reference_tree(gz);
  for (const Digest& md : {zst, docker}) {
    SCOPED_TRACE(md.str());
    Rootfs r = ensure_rootfs(*store_, md);
    for (const auto& d : diff_erofs(want, r.image, base_ / md.hex())) ADD_FAILURE() << d;
  }
}

TEST_F(RootfsTest, ImagesLoadedFromADockerArchiveAndAnOciLayoutBuild) {
  auto want = reference_tree(import_oci(*store_, images_ / "oci", "multi"));
  LoadOptions opts;
  opts.tag = Reference::parse("localhost/sm-test/multi:archive");
  auto archive = load_images(*store_, images_ / "docker-archive/multi.tar", opts);
  ASSERT_EQ(archive.size(), 1u);
  auto layout = load_images(*store_, images_ / "oci");
  Digest from_layout;
  for (const auto& l : layout)
    for (const auto& r : l.refs)
      if (r.tag() == "multi-zstd") from_layout = l.manifest_digest;
  ASSERT_FALSE(from_layout.empty()) << "the layout's multi-zstd tag was not loaded";
  for (const Digest& md : {archive[0].manifest_digest, from_layout}) {
    SCOPED_TRACE(md.str());
    Rootfs r = ensure_rootfs(*store_, md);
    EXPECT_EQ(r.config.user, "1000:1000");
    for (const auto& d : diff_erofs(want, r.image, base_ / md.hex())) ADD_FAILURE() << d;
  }
}

TEST_F(RootfsTest, OneBuildForConcurrentCallers) {
  Digest md = import_oci(*store_, images_ / "oci", "busybox");
  auto build = [&] { return ensure_rootfs(*store_, md).image; };
  auto a = std::async(std::launch::async, build);
  auto b = std::async(std::launch::async, build);
  EXPECT_EQ(a.get(), b.get());
  EXPECT_EQ(rootfs_entries().size(), 1u);
}

// Writes a manifest + config into the store around existing layer blobs.
Digest forge(Store& store, const std::string& config_json,
             std::vector<Descriptor> layers) {
  Digest cd = store.put_blob_bytes(config_json);
  nlohmann::json m = {{"schemaVersion", 2},
                      {"mediaType", std::string(media::kOciManifest)},
                      {"config", {{"mediaType", std::string(media::kOciConfig)}, {"digest", cd.str()},
                                  {"size", config_json.size()}}},
                      {"layers", nlohmann::json::array()}};
  for (const auto& l : layers)
    m["layers"].push_back({{"mediaType", l.media_type}, {"digest", l.digest.str()}, {"size", l.size}});
  return store.put_blob_bytes(m.dump());
}

TEST_F(RootfsTest, RefusesImagesWhoseLayersDoNotMatchTheConfig) {
  Digest md = import_oci(*store_, images_ / "oci", "multi");
  Manifest m = Manifest::parse(store_->read_blob(md));
  nlohmann::json config = nlohmann::json::parse(store_->read_blob(m.config.digest, kMaxConfigBytes));

  auto expect_error = [&](const Digest& forged, const std::string& needle) {
    try {
      (void)ensure_rootfs(*store_, forged);
      ADD_FAILURE() << "accepted a forged image (" << needle << ")";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_TRUE(rootfs_entries().empty()) << "a failed build leaves nothing behind";
  };

  // Layers swapped: each still a valid layer, but not the one the config's diff_id names.
  auto swapped = m.layers;
  std::swap(swapped[0], swapped[1]);
  expect_error(forge(*store_, config.dump(), swapped), "uncompresses to");

  // One layer fewer than diff_ids.
  auto fewer = m.layers;
  fewer.pop_back();
  expect_error(forge(*store_, config.dump(), fewer), "lists 3 layers but");

  // A layer the store does not have.
  auto missing = m.layers;
  missing[2].digest = Digest::of(std::string_view("not stored"));
  expect_error(forge(*store_, config.dump(), missing), "is not in the store");

  // A foreign layer type.
  auto foreign = m.layers;
  foreign[0].media_type = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
  expect_error(forge(*store_, config.dump(), foreign), "foreign");

  // Not linux.
  auto windows = config;
  windows["os"] = "windows";
  expect_error(forge(*store_, windows.dump(), m.layers), "not linux");

  // A hostile layer: the build is refused and its scratch tree removed.
  fs::path evil = base_ / "evil.tar";
  {
    archive* a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    ASSERT_EQ(archive_write_open_filename(a, evil.c_str()), ARCHIVE_OK);
    archive_entry* e = archive_entry_new();
    archive_entry_copy_pathname(e, "../escape");
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, 2);
    ASSERT_EQ(archive_write_header(a, e), ARCHIVE_OK);
    archive_write_data(a, "x\n", 2);
    archive_entry_free(e);
    archive_write_close(a);
    archive_write_free(a);
  }
  Digest evil_digest = store_->put_blob_file(evil);
  auto evil_config = config;
  evil_config["rootfs"]["diff_ids"] = {evil_digest.str()};
  Descriptor d;
  d.media_type = std::string(media::kOciLayer);
  d.digest = evil_digest;
  d.size = fs::file_size(evil);
  expect_error(forge(*store_, evil_config.dump(), {d}), "\"../escape\"");

  // The manifest itself is not there, or is an index.
  expect_error(Digest::of(std::string_view("nothing")), "pull the image first");
}

}  // namespace
}  // namespace sm::oci
