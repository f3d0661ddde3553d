// Applying image layers (OCI image spec v1.1, layer.md) onto a directory tree.
//
// A layer is a tar archive, uncompressed or gzip/zstd compressed (libarchive detects which).
// Entries are applied in archive order on top of what earlier layers left: files, directories,
// symlinks, hard links, character/block devices and FIFOs, with ownership, modes (including
// setuid/setgid/sticky), mtimes and extended attributes. Whiteouts (".wh.<name>") delete the
// named path of a lower layer; an opaque marker (".wh..wh..opq") hides everything lower layers
// put in its directory. Neither marker ever appears in the result.
//
// Layers come from registries and tarballs and are hostile input. Every path is resolved one
// component at a time beneath an fd of the root directory, never letting the kernel follow a
// symlink, so no entry can create, modify or link anything outside the root. Archives that try
// are refused with sm::Error naming the entry; see docs/images-rootfs.md for the exact policy.
// On error the tree is left partially applied: the caller discards it.
#pragma once

#include <cstdint>
#include <filesystem>

#include "oci/digest.h"

namespace sm::oci {

// Caps on what one layer may contain. The defaults are far above any real image and exist so a
// hostile archive fails fast instead of filling the disk or memory.
struct LayerLimits {
  std::uint64_t max_entries = 1u << 21;           // 2 Mi entries
  std::uint64_t max_file_size = 64ull << 30;      // one regular file: 64 GiB
  std::uint64_t max_total_size = 256ull << 30;    // all file data in the layer: 256 GiB
  std::uint64_t max_path_length = 4096;           // bytes in an entry or link name (PATH_MAX)
  std::uint64_t max_path_depth = 256;             // components in one path
  std::uint64_t max_xattr_bytes = 1u << 20;       // all xattr names + values of one entry
};

struct LayerStats {
  Digest diff_id;              // sha256 of the uncompressed tar stream (the config's diff_id)
  std::uint64_t entries = 0;   // tar entries read, markers included
  std::uint64_t file_bytes = 0;
  std::uint64_t whiteouts = 0;  // ".wh.<name>" and opaque markers honoured
};

// Applies the layer tarball at `layer_blob` onto the tree at `rootfs_dir` (which must exist).
// Must run as root (ownership and device nodes). Throws sm::Error naming the layer and the
// offending entry when the archive is malformed, exceeds `limits`, or tries to escape the root.
[[nodiscard]] LayerStats apply_layer(const std::filesystem::path& rootfs_dir,
                                     const std::filesystem::path& layer_blob,
                                     const LayerLimits& limits = {});

}  // namespace sm::oci
