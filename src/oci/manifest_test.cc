#include "oci/manifest.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace sm::oci {
namespace {

using nlohmann::json;

const std::string kD1 = "sha256:" + std::string(64, '1');
const std::string kD2 = "sha256:" + std::string(64, '2');
const std::string kD3 = "sha256:" + std::string(64, '3');

json oci_manifest() {
  return {{"schemaVersion", 2},
          {"mediaType", media::kOciManifest},
          {"config", {{"mediaType", media::kOciConfig}, {"digest", kD1}, {"size", 100}}},
          {"layers",
           {{{"mediaType", media::kOciLayerGzip}, {"digest", kD2}, {"size", 1000}},
            {{"mediaType", media::kOciLayerZstd}, {"digest", kD3}, {"size", 2000}}}}};
}

json index_of(std::initializer_list<std::pair<std::string, std::string>> platforms) {
  json ms = json::array();
  char c = 'a';
  for (auto& [arch, variant] : platforms) {
    json p = {{"os", "linux"}, {"architecture", arch}};
    if (!variant.empty()) p["variant"] = variant;
    ms.push_back({{"mediaType", media::kOciManifest},
                  {"digest", "sha256:" + std::string(64, c++)},
                  {"size", 500},
                  {"platform", p}});
  }
  return {{"schemaVersion", 2}, {"mediaType", media::kOciIndex}, {"manifests", ms}};
}

TEST(Manifest, ParsesOciAndDocker) {
  auto m = Manifest::parse(oci_manifest().dump());
  EXPECT_EQ(m.media_type, media::kOciManifest);
  EXPECT_EQ(m.config.digest.to_string(), kD1);
  ASSERT_EQ(m.layers.size(), 2u);
  EXPECT_EQ(m.layers_size(), 3000u);
  EXPECT_EQ(layer_compression(m.layers[0].media_type), Compression::gzip);
  EXPECT_EQ(layer_compression(m.layers[1].media_type), Compression::zstd);

  json d = oci_manifest();
  d["mediaType"] = media::kDockerManifest;
  d["config"]["mediaType"] = media::kDockerConfig;
  d["layers"][0]["mediaType"] = media::kDockerLayerGzip;
  auto dm = Manifest::parse(d.dump(), media::kDockerManifest);
  EXPECT_EQ(dm.media_type, media::kDockerManifest);

  // OCI manifests may omit mediaType; the Content-Type (with parameters) or the shape decides.
  json n = oci_manifest();
  n.erase("mediaType");
  EXPECT_EQ(Manifest::parse(n.dump()).media_type, media::kOciManifest);
  EXPECT_EQ(Manifest::parse(n.dump(), std::string(media::kOciManifest) + "; charset=utf-8").media_type,
            media::kOciManifest);
}

TEST(Manifest, RefusesHostileOrWrongDocuments) {
  auto expect_error = [](const std::string& text, const char* needle) {
    try {
      (void)Manifest::parse(text);
      ADD_FAILURE() << "accepted: " << text.substr(0, 200);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("", "not valid JSON");
  expect_error("{\"schemaVersion\": 2,", "not valid JSON");
  expect_error("[]", "not a JSON object");
  expect_error(std::string(kMaxManifestBytes + 1, ' '), "limit");
  json m = oci_manifest();
  m["schemaVersion"] = 1;
  expect_error(m.dump(), "schema 1");
  m = oci_manifest();
  m["layers"][0]["size"] = -1;
  expect_error(m.dump(), "non-negative");
  m = oci_manifest();
  m["layers"][0]["digest"] = "sha256:xyz";
  expect_error(m.dump(), "invalid digest");
  m = oci_manifest();
  m["layers"] = "nope";
  expect_error(m.dump(), "\"layers\" must be an array");
  m = oci_manifest();
  m.erase("config");
  expect_error(m.dump(), "missing \"config\"");
  m = oci_manifest();
  m["config"]["mediaType"] = "application/vnd.example.artifact";
  expect_error(m.dump(), "not a container image config");
  m = oci_manifest();
  m["config"]["size"] = std::uint64_t{1} << 40;
  expect_error(m.dump(), "exceeds");
  expect_error(index_of({{"amd64", ""}}).dump(), "got an index");
  m = oci_manifest();
  m["mediaType"] = media::kDockerManifest;
  try {
    (void)Manifest::parse(m.dump(), media::kOciManifest);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("contradicts"), std::string::npos);
  }
  json layers = json::array();
  for (int i = 0; i < 1001; ++i) layers.push_back(oci_manifest()["layers"][0]);
  m = oci_manifest();
  m["layers"] = layers;
  expect_error(m.dump(), "more than the limit");
  EXPECT_THROW((void)layer_compression("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"), Error);
  EXPECT_THROW((void)layer_compression("text/plain"), Error);
}

TEST(Index, SelectsPlatform) {
  auto idx = Index::parse(index_of({{"arm64", ""}, {"amd64", ""}, {"arm", "v7"}}).dump());
  EXPECT_EQ(idx.select(Platform::parse("linux/amd64")).digest.hex(), std::string(64, 'b'));
  EXPECT_EQ(idx.select(Platform::parse("linux/arm64/v8")).digest.hex(), std::string(64, 'a'));
  EXPECT_EQ(idx.select(Platform::parse("linux/arm/v7")).digest.hex(), std::string(64, 'c'));
  EXPECT_EQ(idx.select(Platform::parse("armhf")).digest.hex(), std::string(64, 'c'));
  try {
    (void)idx.select(Platform::parse("linux/s390x"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linux/arm64, linux/amd64, linux/arm/v7"), std::string::npos) << e.what();
  }
  // A Docker manifest list selects the same way.
  json dl = index_of({{"amd64", ""}});
  dl["mediaType"] = media::kDockerManifestList;
  EXPECT_EQ(Index::parse(dl.dump()).media_type, media::kDockerManifestList);
  // An OCI layout index without platforms and a single image: that image.
  json one = {{"schemaVersion", 2},
              {"manifests", {{{"mediaType", media::kOciManifest}, {"digest", kD1}, {"size", 5}}}}};
  EXPECT_EQ(Index::parse(one.dump()).select(Platform::host()).digest.to_string(), kD1);
  EXPECT_THROW((void)Index::parse(oci_manifest().dump()), Error);
}

TEST(Platform, ParsesAndMatches) {
  EXPECT_EQ(Platform::parse("linux/amd64").str(), "linux/amd64");
  EXPECT_EQ(Platform::parse("Linux/X86_64").str(), "linux/amd64");
  EXPECT_EQ(Platform::parse("linux/aarch64").str(), "linux/arm64");
  EXPECT_EQ(Platform::parse("linux/arm64/8").str(), "linux/arm64/v8");
  EXPECT_EQ(Platform::host().os, "linux");
  for (const char* bad : {"", "/", "linux/", "linux//v7", "a/b/c/d", "linux/am d64"})
    EXPECT_THROW((void)Platform::parse(bad), Error) << bad;
  EXPECT_TRUE(Platform::parse("linux/arm64/v8").matches(Platform::parse("linux/arm64")));
  EXPECT_TRUE(Platform::parse("linux/arm64").matches(Platform::parse("linux/arm64/v8")));
  EXPECT_FALSE(Platform::parse("linux/arm/v7").matches(Platform::parse("linux/arm/v6")));
  EXPECT_FALSE(Platform::parse("linux/amd64").matches(Platform::parse("windows/amd64")));
}

}  // namespace
}  // namespace sm::oci
