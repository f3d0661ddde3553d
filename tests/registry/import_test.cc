// Local imports: OCI layouts (directory and tar) and `docker save` archives made by skopeo.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "oci/import.h"
#include "oci/store.h"
#include "registry_fixture.h"

namespace sm::oci {
namespace {

using sm::testing::run_checked;
using sm::testing::TempDir;

const Platform kAmd64 = Platform::parse("linux/amd64");

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

class LocalImport : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("sm-import");
    img_ = new sm::testing::SyntheticImage(
        sm::testing::make_synthetic_image(dir_->path / "layout", "v1", {40000, 3000}, {kAmd64}, 5));
    multi_ = new sm::testing::SyntheticImage(sm::testing::make_synthetic_image(
        dir_->path / "multi-layout", "v2", {1000}, {Platform::parse("linux/arm64"), kAmd64}, 6));
    run_checked({"tar", "-C", (dir_->path / "layout").string(), "-cf", (dir_->path / "layout.tar").string(), "."});
    run_checked({"skopeo", "--insecure-policy", "copy", "--quiet", "oci:" + (dir_->path / "layout").string() + ":v1",
                 "docker-archive:" + (dir_->path / "saved.tar").string() + ":example.com/team/app:1.0"});
  }
  static void TearDownTestSuite() {
    delete img_;
    delete multi_;
    delete dir_;
  }
  void expect_loaded(Store& s, const LoadedImage& li) {
    auto si = s.image(li.top, kAmd64);
    EXPECT_TRUE(s.has_blob(si.manifest.config.digest));
    for (auto& l : si.manifest.layers) EXPECT_TRUE(s.has_blob(l.digest));
  }
  static TempDir* dir_;
  static sm::testing::SyntheticImage* img_;
  static sm::testing::SyntheticImage* multi_;
  TempDir store_{"sm-store"};
};
TempDir* LocalImport::dir_;
sm::testing::SyntheticImage* LocalImport::img_;
sm::testing::SyntheticImage* LocalImport::multi_;

TEST_F(LocalImport, OciLayoutDirectory) {
  Store s(store_.path);
  auto loaded = load_images(s, dir_->path / "layout");
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded[0].top, img_->top);
  ASSERT_EQ(loaded[0].refs.size(), 1u);
  EXPECT_EQ(loaded[0].refs[0].str(), "localhost/layout:v1");  // a bare tag names the layout's repository
  EXPECT_EQ(s.resolve(Reference::parse("localhost/layout:v1")), img_->top);
  expect_loaded(s, loaded[0]);
}

TEST_F(LocalImport, OciLayoutTarAndExplicitTag) {
  Store s(store_.path);
  LoadOptions o;
  o.tag = Reference::parse("mine/app:2");
  auto loaded = load_images(s, dir_->path / "layout.tar", o);
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(s.resolve(Reference::parse("docker.io/mine/app:2")), img_->top);
  expect_loaded(s, loaded[0]);
}

TEST_F(LocalImport, MultiPlatformLayout) {
  Store s(store_.path);
  auto loaded = load_images(s, dir_->path / "multi-layout");
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded[0].top, multi_->top);
  EXPECT_EQ(loaded[0].manifest_digest, multi_->manifests[1]);
}

TEST_F(LocalImport, DockerSaveArchive) {
  Store s(store_.path);
  auto loaded = load_images(s, dir_->path / "saved.tar");
  ASSERT_EQ(loaded.size(), 1u);
  ASSERT_EQ(loaded[0].refs.size(), 1u);
  EXPECT_EQ(loaded[0].refs[0].str(), "example.com/team/app:1.0");
  auto si = s.image(loaded[0].top);
  EXPECT_EQ(si.manifest.media_type, media::kDockerManifest);
  ASSERT_EQ(si.manifest.layers.size(), 2u);
  // docker-archive layers are uncompressed tars: their digests are the config's diff_ids.
  auto config = nlohmann::json::parse(s.read_blob(si.manifest.config.digest));
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(si.manifest.layers[i].digest.to_string(), config["rootfs"]["diff_ids"][i].get<std::string>());
    EXPECT_EQ(si.manifest.layers[i].media_type, media::kDockerLayer);
  }
  // Loading twice is idempotent.
  auto again = load_images(s, dir_->path / "saved.tar");
  EXPECT_EQ(again[0].top, loaded[0].top);
}

TEST_F(LocalImport, RefusesBrokenInput) {
  Store s(store_.path);
  TempDir bad("sm-bad");
  // A blob whose content does not match its name.
  run_checked({"cp", "-r", (dir_->path / "layout").string(), (bad.path / "tampered").string()});
  auto layer = bad.path / "tampered/blobs/sha256" / img_->layers[0][1].hex();
  {
    std::fstream f(layer, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('X');
  }
  auto err = error_of([&] { (void)load_images(s, bad.path / "tampered"); });
  EXPECT_NE(err.find("digest mismatch"), std::string::npos) << err;
  EXPECT_TRUE(s.list_refs().empty());

  // A layout whose index names a blob that is not there (a fresh store: the failed load above
  // stored the blobs it had verified, unreferenced, for prune to collect).
  TempDir fresh("sm-store");
  Store s2(fresh.path);
  run_checked({"cp", "-r", (dir_->path / "layout").string(), (bad.path / "missing").string()});
  std::filesystem::remove(bad.path / "missing/blobs/sha256" / img_->layers[0][0].hex());
  err = error_of([&] { (void)load_images(s2, bad.path / "missing"); });
  EXPECT_NE(err.find("is missing"), std::string::npos) << err;
  EXPECT_TRUE(s2.list_refs().empty());

  // Not an archive at all, a truncated one, an empty directory, a missing path.
  std::ofstream(bad.path / "junk.tar") << "this is not a tar file";
  err = error_of([&] { (void)load_images(s, bad.path / "junk.tar"); });
  EXPECT_NE(err.find("not a readable tar"), std::string::npos) << err;
  {
    std::ifstream in(dir_->path / "saved.tar", std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(bad.path / "truncated.tar", std::ios::binary) << data.substr(0, data.size() / 2);
  }
  EXPECT_THROW((void)load_images(s, bad.path / "truncated.tar"), Error);
  std::filesystem::create_directory(bad.path / "empty");
  EXPECT_NE(error_of([&] { (void)load_images(s, bad.path / "empty"); }).find("neither"), std::string::npos);
  EXPECT_NE(error_of([&] { (void)load_images(s, bad.path / "nope"); }).find("no such file"), std::string::npos);

  // A docker-save manifest.json that points at nothing.
  std::filesystem::create_directory(bad.path / "docker");
  std::ofstream(bad.path / "docker/manifest.json") << R"([{"Config":"abc.json","RepoTags":["x:1"],"Layers":[]}])";
  EXPECT_NE(error_of([&] { (void)load_images(s, bad.path / "docker"); }).find("not in the archive"), std::string::npos);
  std::ofstream(bad.path / "docker/manifest.json") << R"({"Config": 1})";
  EXPECT_NE(error_of([&] { (void)load_images(s, bad.path / "docker"); }).find("non-empty array"), std::string::npos);
  EXPECT_TRUE(s.list_refs().empty());
}

}  // namespace
}  // namespace sm::oci
