// Pulls from a real registry: Debian's docker-registry on a loopback port, images pushed with
// skopeo, faults injected by a proxy in front of it.
#include <gtest/gtest.h>

#include <fstream>
#include <thread>

#include "common/error.h"
#include "oci/http.h"
#include "oci/registry.h"
#include "oci/rootfs.h"
#include "oci/store.h"
#include "registry_fixture.h"

namespace sm::oci {
namespace {

using sm::testing::FaultProxy;
using sm::testing::SyntheticImage;
using sm::testing::TempDir;
using sm::testing::TestRegistry;

const Platform kAmd64 = Platform::parse("linux/amd64");
const Platform kArm64 = Platform::parse("linux/arm64");

// Fast retries so the fault tests do not sleep long.
PullOptions fast_options() {
  PullOptions o;
  o.registry.backoff_base = std::chrono::milliseconds(10);
  o.registry.connect_timeout_s = 5;
  o.registry.stall_timeout_s = 10;
  return o;
}

std::size_t count_files(const std::filesystem::path& dir) {
  std::size_t n = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) n += e.is_regular_file();
  return n;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

// One registry for the suite; each test pushes what it needs under its own repository.
class RegistryPull : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    registry_ = new TestRegistry();
    images_ = new TempDir("sm-images");
    single_ = new SyntheticImage(sm::testing::make_synthetic_image(images_->path / "single", "v1",
                                                                   {300000, 200000, 1000}, {kAmd64}, 7));
    multi_ = new SyntheticImage(sm::testing::make_synthetic_image(images_->path / "multi", "v1", {100000, 50000},
                                                                  {kArm64, kAmd64}, 9));
    registry_->push(single_->layout, "v1", "test/single:v1");
    registry_->push(multi_->layout, "v1", "test/multi:v1", /*all=*/true);
  }
  static void TearDownTestSuite() {
    delete single_;
    delete multi_;
    delete images_;
    delete registry_;
  }
  Reference ref(const std::string& s) const { return Reference::parse(registry_->host() + "/" + s); }
  void expect_complete(Store& s, const PullResult& r) {
    EXPECT_TRUE(s.has_blob(r.top));
    EXPECT_TRUE(s.has_blob(r.manifest_digest));
    EXPECT_TRUE(s.has_blob(r.manifest.config.digest));
    for (auto& l : r.manifest.layers) {
      ASSERT_TRUE(s.has_blob(l.digest));
      EXPECT_EQ(s.blob_size(l.digest), l.size);
    }
  }

  static TestRegistry* registry_;
  static TempDir* images_;
  static SyntheticImage* single_;
  static SyntheticImage* multi_;
  TempDir store_dir_{"sm-store"};
};
TestRegistry* RegistryPull::registry_;
TempDir* RegistryPull::images_;
SyntheticImage* RegistryPull::single_;
SyntheticImage* RegistryPull::multi_;

TEST_F(RegistryPull, ByTag) {
  Store s(store_dir_.path);
  auto r = pull(s, ref("test/single:v1"), fast_options());
  EXPECT_EQ(r.top, single_->top);
  EXPECT_EQ(r.manifest_digest, single_->manifests[0]);
  ASSERT_EQ(r.manifest.layers.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(r.manifest.layers[i].digest, single_->layers[0][i]);
  expect_complete(s, r);
  EXPECT_EQ(s.resolve(ref("test/single:v1")), single_->top);
  EXPECT_GT(r.bytes_downloaded, 500000u);

  // A second pull finds everything stored and downloads nothing.
  auto again = pull(s, ref("test/single:v1"), fast_options());
  EXPECT_EQ(again.bytes_downloaded, 0u);
  EXPECT_EQ(again.top, r.top);
}

TEST_F(RegistryPull, ByDigest) {
  Store s(store_dir_.path);
  auto by_digest = ref("test/single@" + single_->top.to_string());
  auto r = pull(s, by_digest, fast_options());
  EXPECT_EQ(r.top, single_->top);
  expect_complete(s, r);
  EXPECT_EQ(s.resolve(by_digest), single_->top);
  // A digest that names nothing in the repository is a clear "not found".
  auto missing = ref("test/single@" + Digest::of(std::string_view("nothing")).to_string());
  EXPECT_NE(error_of([&] { (void)pull(s, missing, fast_options()); }).find("not found"), std::string::npos);
}

TEST_F(RegistryPull, MultiPlatformIndexSelectsPlatform) {
  Store s(store_dir_.path);
  auto o = fast_options();
  o.platform = kAmd64;
  auto r = pull(s, ref("test/multi:v1"), o);
  EXPECT_EQ(r.top, multi_->top);
  EXPECT_EQ(r.manifest_digest, multi_->manifests[1]);  // the amd64 entry, listed second
  expect_complete(s, r);
  EXPECT_FALSE(s.has_blob(multi_->manifests[0]));       // the arm64 image was not fetched
  EXPECT_FALSE(s.has_blob(multi_->layers[0][1]));
  EXPECT_EQ(s.image(r.top, kAmd64).manifest_digest, multi_->manifests[1]);

  o.platform = kArm64;
  auto arm = pull(s, ref("test/multi:v1"), o);
  EXPECT_EQ(arm.manifest_digest, multi_->manifests[0]);
  EXPECT_TRUE(s.has_blob(multi_->layers[0][1]));

  o.platform = Platform::parse("linux/s390x");
  auto err = error_of([&] { (void)pull(s, ref("test/multi:v1"), o); });
  EXPECT_NE(err.find("no image for platform linux/s390x"), std::string::npos) << err;
  EXPECT_NE(err.find("linux/arm64, linux/amd64"), std::string::npos) << err;
}

TEST_F(RegistryPull, DockerMediaTypes) {
  registry_->push(single_->layout, "v1", "test/docker:v1", false, /*docker_format=*/true);
  Store s(store_dir_.path);
  auto r = pull(s, ref("test/docker:v1"), fast_options());
  EXPECT_EQ(r.manifest.media_type, media::kDockerManifest);
  EXPECT_EQ(r.manifest.config.media_type, media::kDockerConfig);
  EXPECT_EQ(r.manifest.layers[0].media_type, media::kDockerLayerGzip);
  expect_complete(s, r);
}

TEST_F(RegistryPull, UnknownRepositoryIsClearError) {
  Store s(store_dir_.path);
  auto err = error_of([&] { (void)pull(s, ref("test/nope:v1"), fast_options()); });
  EXPECT_NE(err.find("registry " + registry_->host()), std::string::npos) << err;
  EXPECT_NE(err.find("not found"), std::string::npos) << err;
  EXPECT_TRUE(s.list_refs().empty());
}

TEST_F(RegistryPull, BadDigestBlobIsRefusedAndNothingStored) {
  FaultProxy proxy(registry_->port());
  auto bad_layer = single_->layers[0][1];
  proxy.corrupt_blob(bad_layer);
  Store s(store_dir_.path);
  auto r = Reference::parse(proxy.host() + "/test/single:v1");
  auto err = error_of([&] { (void)pull(s, r, fast_options()); });
  EXPECT_NE(err.find("digest mismatch"), std::string::npos) << err;
  EXPECT_NE(err.find(bad_layer.to_string()), std::string::npos) << err;
  EXPECT_NE(err.find("registry " + proxy.host()), std::string::npos) << err;
  EXPECT_FALSE(s.has_blob(bad_layer));
  EXPECT_FALSE(s.has_blob(single_->manifests[0]));  // no manifest promises blobs that are not there
  EXPECT_FALSE(s.resolve(r));
  EXPECT_FALSE(std::filesystem::exists(s.root() / "ingest" / (bad_layer.hex() + ".partial")));
  for (auto& e : std::filesystem::directory_iterator(s.root() / "blobs/sha256")) {
    auto d = Digest::parse("sha256:" + e.path().filename().string());
    EXPECT_EQ(Digest::of(s.read_blob(d, 1 << 20)), d);  // whatever is stored is verified
  }
}

TEST_F(RegistryPull, DroppedConnectionMidBlobResumes) {
  FaultProxy proxy(registry_->port());
  auto big = single_->layers[0][0];
  proxy.drop_blob_midway(big, 2);
  Store s(store_dir_.path);
  auto r = pull(s, Reference::parse(proxy.host() + "/test/single:v1"), fast_options());
  expect_complete(s, r);
  EXPECT_EQ(proxy.blob_requests(big), 3);
  EXPECT_EQ(proxy.range_requests(big), 2);  // both retries resumed where the data stopped
  // Downloaded bytes: the whole blob once, not three times.
  EXPECT_LT(r.bytes_downloaded, single_->layer_sizes[0] + single_->layer_sizes[1] + single_->layer_sizes[2] + 2000);
}

TEST_F(RegistryPull, TransientServerErrorsAreRetried) {
  FaultProxy proxy(registry_->port());
  auto layer = single_->layers[0][2];
  proxy.fail_blob_503(layer, 2);
  Store s(store_dir_.path);
  auto r = pull(s, Reference::parse(proxy.host() + "/test/single:v1"), fast_options());
  expect_complete(s, r);
  EXPECT_EQ(proxy.blob_requests(layer), 3);

  // Past max_attempts it gives up with the status in the message.
  TempDir other("sm-store");
  Store s2(other.path);
  proxy.fail_blob_503(layer, 100);
  auto o = fast_options();
  o.registry.max_attempts = 3;
  auto err = error_of([&] { (void)pull(s2, Reference::parse(proxy.host() + "/test/single:v1"), o); });
  EXPECT_NE(err.find("HTTP 503"), std::string::npos) << err;
  EXPECT_NE(err.find("gave up after 3 attempts"), std::string::npos) << err;
}

TEST_F(RegistryPull, ResumesAPartialLeftByAnEarlierPull) {
  Store s(store_dir_.path);
  auto big = single_->layers[0][0];
  // Simulate an interrupted earlier pull: the first 1000 bytes of the blob in ingest/.
  std::string blob;
  {
    std::ifstream in(single_->layout / "blobs/sha256" / big.hex(), std::ios::binary);
    blob.assign((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  {
    auto ing = s.begin_ingest(big, blob.size());
    ing.write(std::as_bytes(std::span(blob.data(), 1000)));
  }
  FaultProxy proxy(registry_->port());
  auto r = pull(s, Reference::parse(proxy.host() + "/test/single:v1"), fast_options());
  expect_complete(s, r);
  EXPECT_EQ(proxy.range_requests(big), 1);

  // A partial with wrong bytes: the resumed result mismatches, and one fresh download fixes it.
  TempDir other("sm-store");
  Store s2(other.path);
  {
    auto ing = s2.begin_ingest(big, blob.size());
    std::string junk(1000, 'j');
    ing.write(std::as_bytes(std::span(junk.data(), junk.size())));
  }
  auto r2 = pull(s2, Reference::parse(proxy.host() + "/test/single:v1"), fast_options());
  expect_complete(s2, r2);
}

TEST_F(RegistryPull, ConcurrentPullsIntoOneStoreBothSucceed) {
  std::string err[2];
  PullResult res[2];
  auto work = [&](int i) {
    try {
      Store s(store_dir_.path);  // separate Store objects, like two processes
      res[i] = pull(s, ref("test/single:v1"), fast_options());
    } catch (const std::exception& e) {
      err[i] = e.what();
    }
  };
  std::thread a(work, 0), b(work, 1);
  a.join();
  b.join();
  EXPECT_EQ(err[0], "");
  EXPECT_EQ(err[1], "");
  Store s(store_dir_.path);
  expect_complete(s, res[0]);
  EXPECT_EQ(res[0].top, res[1].top);
  // Each blob was downloaded by exactly one of them.
  EXPECT_LT(res[0].bytes_downloaded + res[1].bytes_downloaded,
            single_->layer_sizes[0] + single_->layer_sizes[1] + single_->layer_sizes[2] + 2000);
  EXPECT_EQ(count_files(s.root() / "ingest"), 0u + count_files(s.root() / "ingest"));  // no crash
  for (auto& e : std::filesystem::directory_iterator(s.root() / "ingest"))
    EXPECT_FALSE(e.path().extension() == ".partial") << e.path();
}

TEST_F(RegistryPull, BearerTokenFromTheChallenge) {
  FaultProxy proxy(registry_->port());
  proxy.require_bearer("tok-123");
  Store s(store_dir_.path);
  auto r = pull(s, Reference::parse(proxy.host() + "/test/single:v1"), fast_options());
  expect_complete(s, r);
  EXPECT_GE(proxy.token_requests(), 1);
  EXPECT_LE(proxy.token_requests(), 4);  // the token is reused, not fetched per blob
  EXPECT_EQ(proxy.last_token_query(), "service=sm-test&scope=repository%3Atest%2Fsingle%3Apull");

  // A token server that wants credentials: wrong ones are an auth error, right ones work.
  FaultProxy locked(registry_->port());
  locked.require_bearer("tok-456", std::make_pair("bob", "pw"));
  TempDir other("sm-store");
  Store s2(other.path);
  auto o = fast_options();
  o.registry.credentials = Credentials{"bob", "nope"};
  auto err = error_of([&] { (void)pull(s2, Reference::parse(locked.host() + "/test/single:v1"), o); });
  EXPECT_NE(err.find("authentication failed"), std::string::npos) << err;
  o.registry.credentials = Credentials{"bob", "pw"};
  auto r2 = pull(s2, Reference::parse(locked.host() + "/test/single:v1"), o);
  expect_complete(s2, r2);
}

TEST_F(RegistryPull, PruneAfterPull) {
  Store s(store_dir_.path);
  auto r = pull(s, ref("test/single:v1"), fast_options());
  std::ofstream(s.rootfs_dir() / (r.manifest_digest.file_name() + ".erofs")) << "image";
  auto st = s.prune();
  EXPECT_EQ(st.blobs_removed, 0u);
  EXPECT_EQ(st.rootfs_removed, 0u);
  EXPECT_TRUE(s.remove_ref(ref("test/single:v1")));
  st = s.prune();
  EXPECT_EQ(st.blobs_removed, 5u);  // manifest, config, 3 layers
  EXPECT_EQ(st.rootfs_removed, 1u);
  EXPECT_EQ(count_files(s.root() / "blobs/sha256"), 0u);
}

TEST_F(RegistryPull, UnreachableRegistry) {
  Store s(store_dir_.path);
  auto o = fast_options();
  o.registry.max_attempts = 2;
  auto dead = Reference::parse("127.0.0.1:" + std::to_string(sm::testing::free_loopback_port()) + "/test/single:v1");
  auto err = error_of([&] { (void)pull(s, dead, o); });
  EXPECT_NE(err.find("is not in the local image store and the registry cannot be reached"), std::string::npos) << err;

  // With a stored copy the pull falls back to it.
  auto r = pull(s, ref("test/single:v1"), fast_options());
  s.set_ref(dead, r.top);
  auto offline = pull(s, dead, o);
  EXPECT_TRUE(offline.from_cache_offline);
  EXPECT_EQ(offline.manifest_digest, r.manifest_digest);
}

TEST_F(RegistryPull, Cli) {
  std::vector<std::string> env{"XDG_DATA_HOME=" + store_dir_.path.string()};
  auto sm = [&](std::vector<std::string> args) {
    args.insert(args.begin(), SUPERMACHINE_BIN);
    return sm::testing::run(args, env);
  };
  std::string name = registry_->host() + "/test/multi:v1";
  auto r = sm({"pull", "--platform", "linux/arm64", name});
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("Digest: " + multi_->top.to_string()), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Status: Downloaded newer image for " + name), std::string::npos) << r.output;
  Store s(store_dir_.path / "supermachine");
  EXPECT_EQ(s.image(multi_->top, kArm64).manifest_digest, multi_->manifests[0]);
  EXPECT_TRUE(s.has_blob(multi_->layers[0][1]));
  // pull also built the root filesystem image of the platform's manifest.
  EXPECT_TRUE(std::filesystem::exists(rootfs_image_path(s, multi_->manifests[0])));
  EXPECT_NE(r.output.find("Root filesystem: " + rootfs_image_path(s, multi_->manifests[0]).string()),
            std::string::npos)
      << r.output;

  r = sm({"pull", "-q", "--platform", "linux/arm64", name});
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.output, name + "\n");  // quiet: just the reference, no progress

  r = sm({"images"});
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.output.find("REPOSITORY"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(registry_->host() + "/test/multi"), std::string::npos) << r.output;

  r = sm({"pull", "Bad:Ref"});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.output.find("invalid reference format"), std::string::npos) << r.output;

  r = sm({"rmi", name});
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("Untagged: " + name), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Deleted: 5 blobs"), std::string::npos) << r.output;  // index, manifest, config, 2 layers
  EXPECT_FALSE(s.has_blob(multi_->top));
  r = sm({"rmi", name});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.output.find("no such image"), std::string::npos) << r.output;

  r = sm({"load", "-i", single_->layout.string()});
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output, "Loaded image: localhost/single:v1\n");
  r = sm({"rmi", single_->manifests[0].hex().substr(0, 12)});  // by digest prefix
  EXPECT_EQ(r.status, 0) << r.output;
  r = sm({"prune"});
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("Total reclaimed space"), std::string::npos) << r.output;

  // Two processes pulling the same image into one store at once both succeed.
  sm::testing::RunResult both[2];
  std::thread p1([&] { both[0] = sm({"pull", registry_->host() + "/test/single:v1"}); });
  std::thread p2([&] { both[1] = sm({"pull", registry_->host() + "/test/single:v1"}); });
  p1.join();
  p2.join();
  EXPECT_EQ(both[0].status, 0) << both[0].output;
  EXPECT_EQ(both[1].status, 0) << both[1].output;
  EXPECT_EQ(s.image(single_->top).manifest_digest, single_->manifests[0]);
  for (auto& l : single_->layers[0]) EXPECT_TRUE(s.has_blob(l));

  // Offline and not cached: says so.
  auto dead = "127.0.0.1:" + std::to_string(sm::testing::free_loopback_port()) + "/test/single:v1";
  r = sm({"pull", dead});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.output.find("is not in the local image store and the registry cannot be reached"), std::string::npos)
      << r.output;
}

// ---- basic auth -----------------------------------------------------------------------------------

class AuthRegistry : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    registry_ = new TestRegistry(TestRegistry::Options{std::make_pair("alice", "s3cret")});
    images_ = new TempDir("sm-images");
    auto img = sm::testing::make_synthetic_image(images_->path / "img", "v1", {20000}, {kAmd64}, 3);
    registry_->push(img.layout, "v1", "private/app:v1");
  }
  static void TearDownTestSuite() {
    delete images_;
    delete registry_;
  }
  Reference ref() const { return Reference::parse(registry_->host() + "/private/app:v1"); }
  PullOptions with_creds(const std::string& user, const std::string& pass) {
    auto o = fast_options();
    o.registry.credentials = Credentials{user, pass};
    return o;
  }
  static TestRegistry* registry_;
  static TempDir* images_;
  TempDir store_dir_{"sm-store"};
  TempDir docker_config_{"sm-docker-config"};
};
TestRegistry* AuthRegistry::registry_;
TempDir* AuthRegistry::images_;

TEST_F(AuthRegistry, RightPasswordPulls) {
  Store s(store_dir_.path);
  auto r = pull(s, ref(), with_creds("alice", "s3cret"));
  EXPECT_TRUE(s.has_blob(r.manifest.layers[0].digest));
}

TEST_F(AuthRegistry, WrongPasswordIsClearAuthError) {
  Store s(store_dir_.path);
  auto err = error_of([&] { (void)pull(s, ref(), with_creds("alice", "wrong")); });
  EXPECT_NE(err.find("authentication failed"), std::string::npos) << err;
  EXPECT_NE(err.find("registry " + registry_->host()), std::string::npos) << err;
  EXPECT_NE(err.find("refused the username/password"), std::string::npos) << err;
  EXPECT_TRUE(s.list_refs().empty());
}

TEST_F(AuthRegistry, NoCredentialsSaysSo) {
  Store s(store_dir_.path);
  auto o = fast_options();
  o.registry.docker_config_dir = docker_config_.path;  // empty: no config.json
  auto err = error_of([&] { (void)pull(s, ref(), o); });
  EXPECT_NE(err.find("needs credentials and none were found"), std::string::npos) << err;
}

TEST_F(AuthRegistry, CredentialsFromDockerConfig) {
  std::ofstream(docker_config_.path / "config.json")
      << R"({"auths": {"https://)" << registry_->host() << R"(": {"auth": ")" << base64_encode("alice:s3cret")
      << R"("}}})";
  Store s(store_dir_.path);
  auto o = fast_options();
  o.registry.docker_config_dir = docker_config_.path;
  auto r = pull(s, ref(), o);
  EXPECT_TRUE(s.has_blob(r.manifest_digest));

  // DOCKER_CONFIG names the same directory when no option does.
  TempDir other("sm-store");
  Store s2(other.path);
  ::setenv("DOCKER_CONFIG", docker_config_.path.c_str(), 1);
  auto r2 = pull(s2, ref(), fast_options());
  ::unsetenv("DOCKER_CONFIG");
  EXPECT_EQ(r2.top, r.top);
}

}  // namespace
}  // namespace sm::oci
