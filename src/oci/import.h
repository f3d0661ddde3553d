// Local imports into the store, for machines without a registry:
//   - `docker save` tarballs (manifest.json with Config / RepoTags / Layers; legacy per-layer
//     directories or Docker 25+'s blobs/sha256 layout; optionally gzip/zstd-compressed),
//   - OCI image layouts (image-layout.md: oci-layout, index.json, blobs/), as a directory or
//     a tar of one.
// Everything is read once, streamed into the store and verified: a blob stored under
// blobs/<alg>/<hex> must hash to <hex>, a docker-save config must hash to its file name.
// The archive is untrusted: entry counts and JSON sizes are capped; paths in it are only
// looked up, never created on disk.
#pragma once

#include <filesystem>
#include <optional>
#include <vector>

#include "oci/manifest.h"
#include "oci/reference.h"
#include "oci/store.h"

namespace sm::oci {

struct LoadOptions {
  Platform platform = Platform::host();  // which image of a multi-platform index to check
  // Names the (single) loaded image; required when the archive carries no usable name.
  std::optional<Reference> tag;
};

struct LoadedImage {
  std::vector<Reference> refs;  // the refs now pointing at it
  Digest top;                   // index or manifest
  Digest manifest_digest;       // the platform's image manifest
};

// Loads every image the archive or layout names. Untagged OCI layout entries
// ("org.opencontainers.image.ref.name" = "v1") are named localhost/<basename>:v1, as podman does.
std::vector<LoadedImage> load_images(Store& store, const std::filesystem::path& path, const LoadOptions& opts = {});

}  // namespace sm::oci
