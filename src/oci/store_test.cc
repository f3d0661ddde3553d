#include "oci/store.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/error.h"

namespace sm::oci {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string t = (fs::temp_directory_path() / "sm-store-test-XXXXXX").string();
    if (!::mkdtemp(t.data())) throw std::runtime_error("mkdtemp");
    path = t;
  }
  ~TempDir() { fs::remove_all(path); }
};

std::size_t count_files(const fs::path& dir) {
  std::size_t n = 0;
  for (auto& e : fs::directory_iterator(dir)) n += e.is_regular_file();
  return n;
}

std::span<const std::byte> bytes(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

TEST(Store, PutsAndReadsBlobs) {
  TempDir t;
  Store s(t.path);
  Digest d = s.put_blob_bytes("hello");
  EXPECT_EQ(d, Digest::of(std::string_view("hello")));
  EXPECT_TRUE(s.has_blob(d));
  EXPECT_EQ(s.blob_path(d), t.path / "blobs/sha256" / d.hex());
  EXPECT_EQ(s.read_blob(d), "hello");
  EXPECT_EQ(s.blob_size(d), 5u);
  EXPECT_THROW((void)s.read_blob(d, 4), Error);  // over the cap
  std::istringstream in("stream me");
  Digest d2 = s.put_blob(in, Digest::of(std::string_view("stream me")), 9);
  EXPECT_EQ(s.read_blob(d2), "stream me");
  EXPECT_THROW((void)s.read_blob(Digest::of(std::string_view("absent"))), Error);
}

TEST(Store, MismatchesStoreNothing) {
  TempDir t;
  Store s(t.path);
  Digest want = Digest::of(std::string_view("right"));
  std::istringstream wrong("wrong");
  EXPECT_THROW((void)s.put_blob(wrong, want, 5), Error);
  std::istringstream longer("right!");
  EXPECT_THROW((void)s.put_blob(longer, want, 5), Error);
  std::istringstream shorter("righ");
  EXPECT_THROW((void)s.put_blob(shorter, want, 5), Error);
  std::istringstream good("right");
  EXPECT_THROW((void)s.put_blob(good, want, 4), Error);  // declared size wrong
  EXPECT_THROW((void)s.put_blob_bytes("wrong", want), Error);
  EXPECT_FALSE(s.has_blob(want));
  EXPECT_EQ(count_files(t.path / "blobs/sha256"), 0u);
  EXPECT_EQ(count_files(t.path / "ingest"), 0u);
}

TEST(Store, IngestResumesAndVerifies) {
  TempDir t;
  Store s(t.path);
  std::string data(300000, 'q');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i % 251);
  Digest d = Digest::of(data);
  {
    auto ing = s.begin_ingest(d, data.size());
    EXPECT_FALSE(ing.complete());
    EXPECT_EQ(ing.offset(), 0u);
    ing.write(bytes(std::string_view(data).substr(0, 120000)));
  }  // interrupted: the partial stays for a resume
  EXPECT_FALSE(s.has_blob(d));
  {
    auto ing = s.begin_ingest(d, data.size());
    EXPECT_EQ(ing.offset(), 120000u);
    EXPECT_THROW(ing.write(bytes(std::string_view(data + "x").substr(120000))), Error);  // past declared size
    ing.write(bytes(std::string_view(data).substr(120000)));
    ing.commit();
  }
  EXPECT_TRUE(s.has_blob(d));
  EXPECT_EQ(s.read_blob(d, data.size()), data);
  auto again = s.begin_ingest(d, data.size());
  EXPECT_TRUE(again.complete());

  // A wrong byte anywhere: commit fails, nothing stored, the partial is gone.
  std::string other = data;
  other[5] ^= 1;
  Digest d2 = Digest::of(std::string_view(data).substr(1));
  {
    auto ing = s.begin_ingest(d2, data.size() - 1);
    ing.write(bytes(std::string_view(other).substr(1)));
    try {
      ing.commit();
      ADD_FAILURE();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("digest mismatch"), std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(s.has_blob(d2));
  EXPECT_FALSE(fs::exists(t.path / "ingest" / (d2.hex() + ".partial")));
  {
    auto ing = s.begin_ingest(d2, data.size() - 1);
    ing.write(bytes(std::string_view(data).substr(1, 10)));
    EXPECT_THROW(ing.commit(), Error);  // short
  }
  EXPECT_FALSE(s.has_blob(d2));
}

TEST(Store, ConcurrentIngestOfOneBlobBothSucceed) {
  TempDir t;
  std::string data(1 << 20, 'z');
  Digest d = Digest::of(data);
  std::atomic<int> wrote{0}, ok{0};
  auto worker = [&] {
    Store s(t.path);  // separate objects, as two processes would have
    auto ing = s.begin_ingest(d, data.size());
    if (!ing.complete()) {
      ++wrote;
      for (std::size_t i = 0; i < data.size(); i += 4096) ing.write(bytes(std::string_view(data).substr(i, 4096)));
      ing.commit();
    }
    if (s.read_blob(d, data.size()) == data) ++ok;
  };
  std::thread a(worker), b(worker);
  a.join();
  b.join();
  EXPECT_EQ(wrote.load(), 1);
  EXPECT_EQ(ok.load(), 2);
}

TEST(Store, Refs) {
  TempDir t;
  Store s(t.path);
  Digest d = s.put_blob_bytes("{}");
  auto r = Reference::parse("alpine:3.20");
  EXPECT_FALSE(s.resolve(r));
  s.set_ref(r, d);
  s.set_ref(Reference::parse("localhost:5000/b"), d);
  EXPECT_EQ(s.resolve(Reference::parse("docker.io/library/alpine:3.20")), d);
  EXPECT_EQ(s.resolve(Reference::parse("alpine@" + d.to_string())), d);  // digest refs need only the blob
  EXPECT_FALSE(s.resolve(Reference::parse("alpine@" + Digest::of(std::string_view("x")).to_string())));
  auto refs = s.list_refs();
  ASSERT_EQ(refs.size(), 2u);
  EXPECT_EQ(refs[0].ref.str(), "docker.io/library/alpine:3.20");
  EXPECT_EQ(refs[0].digest, d);
  EXPECT_GT(refs[0].updated.time_since_epoch().count(), 0);
  EXPECT_TRUE(s.remove_ref(r));
  EXPECT_FALSE(s.remove_ref(r));
  EXPECT_EQ(s.list_refs().size(), 1u);

  std::ofstream(t.path / "refs.json") << "{garbage";
  try {
    (void)s.list_refs();
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("corrupt"), std::string::npos);
  }
}

// Builds a two-platform index in the store; returns {index, amd64 manifest, arm64 manifest}.
struct Fixture {
  Digest index, amd64, arm64, shared_layer, amd_layer, arm_layer, config;
};
Fixture make_image(Store& s) {
  Fixture f;
  f.config = s.put_blob_bytes(R"({"architecture":"amd64","os":"linux"})");
  f.shared_layer = s.put_blob_bytes("shared layer");
  f.amd_layer = s.put_blob_bytes("amd layer");
  f.arm_layer = s.put_blob_bytes("arm layer");
  auto manifest = [&](const Digest& layer) {
    json m = {{"schemaVersion", 2},
              {"mediaType", media::kOciManifest},
              {"config", {{"mediaType", media::kOciConfig}, {"digest", f.config.to_string()}, {"size", 10}}},
              {"layers",
               {{{"mediaType", media::kOciLayerGzip}, {"digest", f.shared_layer.to_string()}, {"size", 12}},
                {{"mediaType", media::kOciLayerGzip}, {"digest", layer.to_string()}, {"size", 9}}}}};
    return s.put_blob_bytes(m.dump());
  };
  f.amd64 = manifest(f.amd_layer);
  f.arm64 = manifest(f.arm_layer);
  json idx = {{"schemaVersion", 2},
              {"mediaType", media::kOciIndex},
              {"manifests",
               {{{"mediaType", media::kOciManifest}, {"digest", f.amd64.to_string()}, {"size", 1},
                 {"platform", {{"os", "linux"}, {"architecture", "amd64"}}}},
                {{"mediaType", media::kOciManifest}, {"digest", f.arm64.to_string()}, {"size", 1},
                 {"platform", {{"os", "linux"}, {"architecture", "arm64"}}}}}}};
  f.index = s.put_blob_bytes(idx.dump());
  return f;
}

TEST(Store, ImageFollowsIndexToPlatform) {
  TempDir t;
  Store s(t.path);
  auto f = make_image(s);
  auto img = s.image(f.index, Platform::parse("linux/arm64"));
  EXPECT_EQ(img.top, f.index);
  EXPECT_EQ(img.manifest_digest, f.arm64);
  ASSERT_EQ(img.manifest.layers.size(), 2u);
  EXPECT_EQ(img.manifest.layers[1].digest, f.arm_layer);
  EXPECT_EQ(s.image(f.amd64).manifest_digest, f.amd64);
  EXPECT_THROW((void)s.image(f.index, Platform::parse("linux/ppc64le")), Error);
  EXPECT_THROW((void)s.image(f.shared_layer), Error);
}

TEST(Store, PruneKeepsReachableRemovesTheRest) {
  TempDir t;
  Store s(t.path);
  auto f = make_image(s);
  Digest loose = s.put_blob_bytes("nobody points here");
  s.set_ref(Reference::parse("localhost:5000/multi:1"), f.index);
  std::ofstream(s.rootfs_dir() / (f.amd64.file_name() + ".erofs")) << "fs";
  std::ofstream(s.rootfs_dir() / (loose.file_name() + ".erofs")) << "stale";
  std::ofstream(s.rootfs_dir() / ".tmp-abandoned") << "x";
  { auto partial = s.begin_ingest(Digest::of(std::string_view("never finished")), 100); }

  auto st = s.prune();
  EXPECT_EQ(st.blobs_removed, 1u);
  EXPECT_EQ(st.rootfs_removed, 2u);
  EXPECT_EQ(st.partials_removed, 1u);
  EXPECT_FALSE(s.has_blob(loose));
  for (auto& d : {f.index, f.amd64, f.arm64, f.config, f.shared_layer, f.amd_layer, f.arm_layer})
    EXPECT_TRUE(s.has_blob(d)) << d.to_string();
  EXPECT_TRUE(fs::exists(s.rootfs_dir() / (f.amd64.file_name() + ".erofs")));

  // Once the ref goes, everything goes.
  EXPECT_TRUE(s.remove_ref(Reference::parse("localhost:5000/multi:1")));
  st = s.prune();
  EXPECT_EQ(st.blobs_removed, 7u);
  EXPECT_EQ(st.rootfs_removed, 1u);
  EXPECT_EQ(count_files(t.path / "blobs/sha256"), 0u);
}

TEST(Store, DefaultRootFollowsXdg) {
  const char* old = std::getenv("XDG_DATA_HOME");
  std::string saved = old ? old : "";
  ::setenv("XDG_DATA_HOME", "/tmp/xdg-data", 1);
  EXPECT_EQ(Store::default_root(), fs::path("/tmp/xdg-data/supermachine"));
  ::setenv("XDG_DATA_HOME", "relative", 1);  // invalid per the spec: ignored
  EXPECT_EQ(Store::default_root(), fs::path(std::getenv("HOME")) / ".local/share/supermachine");
  if (old) ::setenv("XDG_DATA_HOME", saved.c_str(), 1);
  else ::unsetenv("XDG_DATA_HOME");
}

}  // namespace
}  // namespace sm::oci
