// Manifests, indexes and descriptors: OCI image spec v1.1 (manifest.md, image-index.md,
// descriptor.md) and their Docker v2 schema 2 equivalents, which share the same JSON shape.
// Everything parsed here comes from a registry or a tarball and is untrusted: sizes are
// capped, digests validated, media types checked; bad input raises sm::Error saying what.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "oci/digest.h"

namespace sm::oci {

namespace media {
inline constexpr std::string_view kOciManifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr std::string_view kOciIndex = "application/vnd.oci.image.index.v1+json";
inline constexpr std::string_view kOciConfig = "application/vnd.oci.image.config.v1+json";
inline constexpr std::string_view kOciLayer = "application/vnd.oci.image.layer.v1.tar";
inline constexpr std::string_view kOciLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip";
inline constexpr std::string_view kOciLayerZstd = "application/vnd.oci.image.layer.v1.tar+zstd";
inline constexpr std::string_view kDockerManifest =
    "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr std::string_view kDockerManifestList =
    "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr std::string_view kDockerConfig = "application/vnd.docker.container.image.v1+json";
inline constexpr std::string_view kDockerLayerGzip =
    "application/vnd.docker.image.rootfs.diff.tar.gzip";
inline constexpr std::string_view kDockerLayer = "application/vnd.docker.image.rootfs.diff.tar";
}  // namespace media

// Caps on untrusted JSON: a real manifest or index is a few KiB, a config rarely 100 KiB.
inline constexpr std::size_t kMaxManifestBytes = 4u << 20;
inline constexpr std::size_t kMaxConfigBytes = 8u << 20;

enum class Compression { none, gzip, zstd };

[[nodiscard]] bool is_index_media_type(std::string_view mt);     // OCI index, Docker list
[[nodiscard]] bool is_manifest_media_type(std::string_view mt);  // OCI / Docker image manifest
// The compression of a layer media type; throws sm::Error for a type that is not a layer
// supermachine can apply (e.g. foreign/non-distributable layers or an unknown type).
[[nodiscard]] Compression layer_compression(std::string_view media_type);

struct Platform {
  std::string os;            // "linux"
  std::string architecture;  // GOARCH spelling: "amd64", "arm64"
  std::string variant;       // "v8", "v7", or ""

  // The platform this binary runs on, in GOARCH spelling.
  [[nodiscard]] static Platform host();
  // "os/arch[/variant]", e.g. "linux/arm64/v8"; throws sm::Error when malformed.
  [[nodiscard]] static Platform parse(std::string_view s);
  [[nodiscard]] std::string str() const;
  // True when a manifest for `candidate` can run where this platform is wanted. An empty
  // variant matches any variant (arm64 images often omit "v8").
  [[nodiscard]] bool matches(const Platform& candidate) const;
  bool operator==(const Platform&) const = default;
};

struct Descriptor {
  std::string media_type;
  Digest digest;
  std::uint64_t size = 0;
  std::optional<Platform> platform;  // only in index entries
  std::map<std::string, std::string> annotations;
  std::vector<std::string> urls;
};

struct Manifest {
  std::string media_type;  // kOciManifest or kDockerManifest
  Descriptor config;
  std::vector<Descriptor> layers;
  std::map<std::string, std::string> annotations;

  // `media_type_hint` is the Content-Type or descriptor media type the bytes came with; the
  // document's own mediaType wins when present and they must not contradict each other.
  [[nodiscard]] static Manifest parse(std::string_view json, std::string_view media_type_hint = {});
  // Sum of the layer sizes (compressed), as registries report.
  [[nodiscard]] std::uint64_t layers_size() const;
};

struct Index {
  std::string media_type;  // kOciIndex or kDockerManifestList
  std::vector<Descriptor> manifests;
  std::map<std::string, std::string> annotations;

  [[nodiscard]] static Index parse(std::string_view json, std::string_view media_type_hint = {});
  // The manifest for `wanted` (first match in index order, like Docker); throws sm::Error
  // listing the platforms the index has when none matches.
  [[nodiscard]] const Descriptor& select(const Platform& wanted) const;
};

// The mediaType of a manifest-or-index document: the document's own field, else the hint,
// else guessed from its shape ("manifests" => index, "layers" => manifest). Throws sm::Error
// when it is neither.
[[nodiscard]] std::string detect_media_type(std::string_view json, std::string_view hint = {});

}  // namespace sm::oci
