// Test helpers for anything that needs a real registry: a Debian `docker-registry` on a free
// loopback port (optionally behind htpasswd basic auth), OCI image layouts with synthetic
// layers, pushes with skopeo, and a fault-injecting HTTP proxy that sits in front of the
// registry to corrupt or cut blob responses. Loopback only, always.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "oci/digest.h"
#include "oci/manifest.h"

namespace sm::testing {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  explicit TempDir(std::string_view prefix = "sm-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// Runs argv with `env` ("NAME=value") added to the environment; returns its exit status and
// stdout+stderr together.
struct RunResult {
  int status = -1;  // exit code, or -1 when killed
  std::string output;
};
RunResult run(const std::vector<std::string>& argv, const std::vector<std::string>& env = {});
// Runs argv, throws sm::Error with its output when it fails. Returns stdout+stderr.
std::string run_checked(const std::vector<std::string>& argv);

// A loopback TCP port nobody listens on right now.
std::uint16_t free_loopback_port();

class TestRegistry {
 public:
  struct Options {
    std::optional<std::pair<std::string, std::string>> basic_auth;  // user, password (htpasswd -B)
  };
  TestRegistry();
  explicit TestRegistry(Options opts);
  ~TestRegistry();
  TestRegistry(const TestRegistry&) = delete;
  TestRegistry& operator=(const TestRegistry&) = delete;

  [[nodiscard]] std::uint16_t port() const { return port_; }
  [[nodiscard]] std::string host() const { return "127.0.0.1:" + std::to_string(port_); }
  [[nodiscard]] const fs::path& storage() const { return storage_; }

  // skopeo copy oci:<layout>:<layout_tag> docker://<host>/<dest>. `all` pushes a whole index;
  // `docker_format` converts to Docker v2 schema 2 media types.
  void push(const fs::path& layout, const std::string& layout_tag, const std::string& dest, bool all = false,
            bool docker_format = false);

 private:
  Options opts_;
  TempDir dir_{"sm-registry"};
  fs::path storage_;
  std::uint16_t port_ = 0;
  int pid_ = -1;
};

// An OCI image layout written by hand: gzip tar layers of random file content (incompressible,
// so sizes are predictable), one config and manifest per platform, and for several platforms
// an image index. The layout's index.json names it `tag`.
struct SyntheticImage {
  fs::path layout;
  std::string tag;
  oci::Digest top;                     // the index, or the manifest when single-platform
  std::vector<oci::Digest> manifests;  // one per platform, in order
  std::vector<std::vector<oci::Digest>> layers;  // per platform
  std::vector<std::uint64_t> layer_sizes;        // compressed sizes, first platform
};
SyntheticImage make_synthetic_image(const fs::path& layout, const std::string& tag,
                                    const std::vector<std::size_t>& layer_payload_sizes,
                                    const std::vector<oci::Platform>& platforms, std::uint32_t seed = 1);

// A plain HTTP/1.1 proxy on a loopback port in front of `upstream_port`, one request per
// connection. Faults apply to GET .../blobs/<digest> responses.
class FaultProxy {
 public:
  explicit FaultProxy(std::uint16_t upstream_port);
  ~FaultProxy();
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  [[nodiscard]] std::uint16_t port() const { return port_; }
  [[nodiscard]] std::string host() const { return "127.0.0.1:" + std::to_string(port_); }

  // Flip one byte in the middle of every response body for this blob.
  void corrupt_blob(const oci::Digest& d);
  // Send half of this blob's body then close the connection, the next `times` times.
  void drop_blob_midway(const oci::Digest& d, int times);
  // Answer the next `times` requests for this blob with 503.
  void fail_blob_503(const oci::Digest& d, int times);
  // Token auth in front of the registry (Docker's token flow): /v2/ requests without
  // "Authorization: Bearer <token>" get a 401 Bearer challenge whose realm is this proxy's
  // /token endpoint, which hands out `token`, only to `basic` credentials when those are given.
  void require_bearer(std::string token, std::optional<std::pair<std::string, std::string>> basic = {});
  [[nodiscard]] int token_requests();
  [[nodiscard]] std::string last_token_query();
  // Requests seen for this blob, and how many carried a Range header.
  [[nodiscard]] int blob_requests(const oci::Digest& d);
  [[nodiscard]] int range_requests(const oci::Digest& d);

 private:
  void serve();
  void handle(int client);
  std::uint16_t upstream_;
  std::uint16_t port_ = 0;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> workers_;
  struct Rule {
    bool corrupt = false;
    int drop = 0;
    int fail503 = 0;
    int requests = 0;
    int ranges = 0;
  };
  std::map<std::string, Rule> rules_;  // by digest string
  std::optional<std::string> bearer_;
  std::optional<std::pair<std::string, std::string>> bearer_basic_;
  int token_requests_ = 0;
  std::string last_token_query_;
};

}  // namespace sm::testing
