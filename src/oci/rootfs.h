// Root filesystem images: one read-only EROFS image per image manifest, built from the
// manifest's layers (applied in order with apply_layer) by mkfs.erofs, and cached in the store's
// rootfs_dir(). Why EROFS rather than ext4, and the measurements: docs/images-rootfs.md.
#pragma once

#include <filesystem>

#include "oci/digest.h"
#include "oci/image_config.h"
#include "oci/store.h"

namespace sm::oci {

// Bumped whenever the bytes of a built image would change for the same manifest (layer
// application rules, mkfs options), so stale cache entries are never reused.
inline constexpr int kRootfsFormatVersion = 1;

struct Rootfs {
  std::filesystem::path image;  // the read-only EROFS image (a virtio-blk root disk)
  Digest manifest;              // the platform image manifest it was built from
  RunConfig config;             // the image's run settings
};

// The image's run settings: the manifest's config blob, parsed. Throws sm::Error when the
// manifest or config is missing from the store or malformed.
[[nodiscard]] RunConfig read_run_config(const Store& store, const Digest& manifest);

// The cache path of the rootfs image for `manifest` ("sha256-<hex>.v<N>.erofs" in rootfs_dir()),
// whether or not it has been built.
[[nodiscard]] std::filesystem::path rootfs_image_path(const Store& store, const Digest& manifest);

// Returns the rootfs image of the image manifest `manifest` (a platform manifest, not an
// index), building it on first use: every layer blob must be in the store. Each layer's
// uncompressed digest is checked against the config's rootfs.diff_ids. The build happens in a
// temporary directory beside the cache and the image appears only by rename(2); concurrent
// callers for the same manifest wait for one build and share it. Needs root (layers carry
// ownership and device nodes) and mkfs.erofs (erofs-utils). Throws sm::Error on any failure,
// leaving nothing behind.
[[nodiscard]] Rootfs ensure_rootfs(Store& store, const Digest& manifest);

// Builds an EROFS image of the directory `tree` at `image` (overwritten). Exposed for tests and
// benchmarks; ensure_rootfs() uses it.
void build_erofs(const std::filesystem::path& tree, const std::filesystem::path& image);

}  // namespace sm::oci
