// From an image reference to what a container VM boots: the store lookup, a pull when the image
// is missing (or always, or never), and the read-only root filesystem image built from it.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "oci/digest.h"
#include "oci/image_config.h"
#include "oci/registry.h"

namespace sm::runtime {

enum class PullPolicy { kMissing, kAlways, kNever };

// "missing" | "always" | "never" (Docker's --pull); sm::Error otherwise.
[[nodiscard]] PullPolicy parse_pull_policy(std::string_view s);

struct ResolveOptions {
  PullPolicy pull = PullPolicy::kMissing;
  oci::PullOptions pull_options;
  std::optional<std::filesystem::path> store_root;  // default: the user's store
};

struct ResolvedImage {
  std::string reference;  // canonical, e.g. docker.io/library/alpine:latest
  oci::Digest manifest;   // the platform image manifest
  std::filesystem::path rootfs;
  oci::RunConfig config;
};

// Throws sm::Error: bad reference, not stored with kNever, pull failures (including "not cached
// and the registry is unreachable"), rootfs build failures.
[[nodiscard]] ResolvedImage resolve_image(const std::string& reference, const ResolveOptions& options = {});

}  // namespace sm::runtime
