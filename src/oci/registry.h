// A client for the OCI distribution spec (v1.1, "Pull" section), the API every registry from
// Docker Hub to a local `docker-registry` speaks, and pull(): reference -> blobs in the Store.
//
// Auth follows Docker's token flow: try anonymously, and on 401 read WWW-Authenticate; a
// Bearer challenge sends us to its realm for a token (with basic credentials when we have
// them), a Basic challenge takes the credentials directly. Credentials come from explicit
// options or ~/.docker/config.json. HTTPS always, except plain HTTP for loopback registries and
// ones named as insecure. Every response is untrusted: sizes capped, digests verified while
// streaming, media types checked; errors name the registry and what failed.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "oci/credentials.h"
#include "oci/manifest.h"
#include "oci/progress.h"
#include "oci/reference.h"
#include "oci/store.h"

namespace sm::oci {

struct RegistryOptions {
  // Registries reached over plain HTTP ("host:port" or "host"); loopback ones always are.
  std::vector<std::string> insecure_registries;
  // Used instead of the Docker config when set.
  std::optional<Credentials> credentials;
  // Where config.json lives; default $DOCKER_CONFIG or ~/.docker.
  std::optional<std::filesystem::path> docker_config_dir;
  unsigned parallel_downloads = 3;
  unsigned max_attempts = 5;  // per request, for transient failures
  std::chrono::milliseconds backoff_base{200};
  long connect_timeout_s = 30;
  long stall_timeout_s = 60;
};

// True for localhost, 127.0.0.0/8 and [::1], with or without a port.
[[nodiscard]] bool is_loopback_registry(std::string_view registry);

class Registry {
 public:
  Registry(const Reference& ref, RegistryOptions opts);
  ~Registry();

  struct FetchedManifest {
    std::string body;
    std::string media_type;
    Digest digest;  // sha256 of body, checked against what was asked for
  };
  // GET /v2/<repo>/manifests/<tag-or-digest>. With `expected` set the body must hash to it.
  [[nodiscard]] FetchedManifest get_manifest(const std::string& tag_or_digest, const Digest& expected = {});

  // GET /v2/<repo>/blobs/<digest> into the store, resuming a partial download with Range,
  // retrying transient failures; size and digest verified, nothing stored on mismatch.
  // Returns the bytes transferred (0 when the blob was already stored).
  std::uint64_t fetch_blob(Store& store, const Descriptor& d, std::string_view kind, PullProgress* progress,
                  const std::atomic<bool>* cancel = nullptr);

  [[nodiscard]] const std::string& base_url() const { return base_url_; }  // "https://host"

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string base_url_;
};

struct PullOptions {
  RegistryOptions registry;
  Platform platform = Platform::host();
  PullProgress* progress = nullptr;
};

struct PullResult {
  Reference ref;
  Digest top;              // what the tag named (index or manifest); the ref now points here
  Digest manifest_digest;  // the platform's image manifest
  Manifest manifest;
  std::uint64_t bytes_downloaded = 0;
  bool from_cache_offline = false;  // the registry was unreachable; the stored copy was used
};

// Pulls `ref` into `store` and points the ref at it. When the registry cannot be reached the
// stored copy is used if there is one (from_cache_offline), otherwise sm::Error says the
// image is not cached and the registry is unreachable.
PullResult pull(Store& store, const Reference& ref, const PullOptions& opts = {});

}  // namespace sm::oci
