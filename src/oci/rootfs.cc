#include "oci/rootfs.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/run_tool.h"
#include "common/unique_fd.h"
#include "oci/layer.h"
#include "oci/manifest.h"

namespace sm::oci {
namespace fs = std::filesystem;
namespace {

// Removes a build directory on every exit path, so a failed build leaves nothing behind.
struct ScratchDir {
  fs::path path;
  ~ScratchDir() {
    if (path.empty()) return;
    std::error_code ec;
    fs::remove_all(path, ec);
    if (ec) spdlog::warn("cannot remove {}: {}", path.string(), ec.message());
  }
};

void fsync_path(const fs::path& p, int flags) {
  UniqueFd fd(::open(p.c_str(), flags | O_CLOEXEC));
  if (!fd || ::fsync(fd.get()) != 0) throw sys_error("cannot fsync " + p.string());
}

Manifest read_manifest(const Store& store, const Digest& manifest) {
  if (!store.has_blob(manifest))
    throw Error(fmt::format("manifest {} is not in the store at {}; pull the image first",
                            manifest.str(), store.root().string()));
  std::string text = store.read_blob(manifest, kMaxManifestBytes);
  std::string mt = detect_media_type(text);
  if (!is_manifest_media_type(mt))
    throw Error(fmt::format("{} is a {}, not an image manifest; select a platform first",
                            manifest.str(), mt));
  return Manifest::parse(text, mt);
}

RunConfig read_config(const Store& store, const Manifest& m) {
  const Digest& d = m.config.digest;
  if (!store.has_blob(d))
    throw Error(fmt::format("image config {} is not in the store; pull the image again", d.str()));
  return RunConfig::parse(store.read_blob(d, kMaxConfigBytes), fmt::format("image config {}", d.str()));
}

}  // namespace

RunConfig read_run_config(const Store& store, const Digest& manifest) {
  return read_config(store, read_manifest(store, manifest));
}

fs::path rootfs_image_path(const Store& store, const Digest& manifest) {
  return store.rootfs_dir() / fmt::format("{}.v{}.erofs", manifest.file_name(), kRootfsFormatVersion);
}

void build_erofs(const fs::path& tree, const fs::path& image) {
  // Uncompressed EROFS: the fastest to build and to read, and the guest kernel needs no
  // decompressor (docs/images-rootfs.md has the measurements). mkfs.erofs keeps ownership,
  // modes, mtimes, xattrs, hard links and device nodes as they are in the tree.
  fs::path log = image;
  log += ".log";
  struct RemoveLog {
    fs::path p;
    ~RemoveLog() {
      std::error_code ec;
      fs::remove(p, ec);
    }
  } remove_log{log};
  run_tool({"mkfs.erofs", "--quiet", image.string(), tree.string()}, log,
           "install erofs-utils (scripts/setup does)");
}

Rootfs ensure_rootfs(Store& store, const Digest& manifest) {
  auto lease = store.lease();  // a concurrent prune must not take the blobs we are reading
  Rootfs out;
  out.manifest = manifest;
  Manifest m = read_manifest(store, manifest);
  out.config = read_config(store, m);
  out.image = rootfs_image_path(store, manifest);
  if (fs::exists(out.image)) return out;

  if (out.config.diff_ids.size() != m.layers.size())
    throw Error(fmt::format("image {}: the manifest lists {} layers but the config's rootfs.diff_ids "
                            "has {}; the image is malformed",
                            manifest.str(), m.layers.size(), out.config.diff_ids.size()));
  if (!out.config.os.empty() && out.config.os != "linux")
    throw Error(fmt::format("image {} is for {}, not linux", manifest.str(), out.config.os));
  for (const auto& l : m.layers) {
    (void)layer_compression(l.media_type);  // refuses foreign or unknown layer types, by name
    if (!store.has_blob(l.digest))
      throw Error(fmt::format("layer {} of image {} is not in the store; pull the image again",
                              l.digest.str(), manifest.str()));
  }
  if (::geteuid() != 0)
    throw Error("building a root filesystem needs root: image layers carry file ownership and "
                "device nodes");

  // One builder per manifest: a second caller waits here, then finds the image built.
  const fs::path dir = store.rootfs_dir();
  const std::string stem = manifest.file_name();
  fs::path lock_path = dir / (stem + ".lock");
  UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock) throw sys_error("cannot open " + lock_path.string());
  while (::flock(lock.get(), LOCK_EX) != 0) {
    if (errno != EINTR) throw sys_error("flock " + lock_path.string());
  }
  if (fs::exists(out.image)) return out;

  // Holding the lock, anything else of this manifest's is stale: builds that died, images of
  // older format versions.
  for (const auto& ent : fs::directory_iterator(dir)) {
    std::string name = ent.path().filename().string();
    if (name.starts_with(stem + ".") && name != lock_path.filename().string()) {
      std::error_code ec;
      fs::remove_all(ent.path(), ec);
    }
  }

  ScratchDir scratch;
  std::string tmpl = (dir / (stem + ".building-XXXXXX")).string();
  if (!::mkdtemp(tmpl.data())) throw sys_error("cannot create a build directory in " + dir.string());
  scratch.path = tmpl;
  const fs::path tree = scratch.path / "rootfs";
  fs::create_directory(tree);
  // The image root is what the first layer (or nobody) says; until then 0755 root:root.
  fs::permissions(tree, fs::perms(0755));

  for (std::size_t i = 0; i < m.layers.size(); ++i) {
    const auto& l = m.layers[i];
    spdlog::debug("rootfs {}: applying layer {}/{} {}", manifest.str(), i + 1, m.layers.size(),
                  l.digest.str());
    LayerStats stats = apply_layer(tree, store.blob_path(l.digest));
    if (stats.diff_id != out.config.diff_ids[i])
      throw Error(fmt::format("image {}: layer {} ({}) uncompresses to {}, but the config says {}; "
                              "the image is corrupt or was tampered with",
                              manifest.str(), i + 1, l.digest.str(), stats.diff_id.str(),
                              out.config.diff_ids[i].str()));
  }

  fs::path tmp_image = scratch.path / "image.erofs";
  build_erofs(tree, tmp_image);
  fsync_path(tmp_image, O_RDONLY);
  fs::rename(tmp_image, out.image);
  fsync_path(dir, O_RDONLY | O_DIRECTORY);
  spdlog::debug("rootfs {}: built {}", manifest.str(), out.image.string());
  return out;
}

}  // namespace sm::oci
