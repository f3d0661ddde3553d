// Image references, parsed and normalised exactly as Docker does (distribution/reference's
// grammar and ParseNormalizedNamed + TagNameOnly):
//   alpine                         -> docker.io/library/alpine:latest
//   team/app:1                     -> docker.io/team/app:1
//   index.docker.io/library/alpine -> docker.io/library/alpine:latest
//   localhost:5000/app@sha256:...  -> localhost:5000/app@sha256:...  (no default tag with a digest)
//   host.example/a/b:t@sha256:...  -> tag and digest both kept; the digest wins when pulling
// The first path component is a registry host only when it contains '.' or ':', is "localhost",
// or has an uppercase letter; the repository must be lowercase; a bare 64-hex name is refused.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "oci/digest.h"

namespace sm::oci {

inline constexpr std::string_view kDefaultRegistry = "docker.io";
inline constexpr std::string_view kDefaultTag = "latest";

class Reference {
 public:
  // Throws sm::Error ("invalid reference format: ...") naming the input and what is wrong.
  [[nodiscard]] static Reference parse(std::string_view s);

  [[nodiscard]] const std::string& registry() const { return registry_; }      // "docker.io", "localhost:5000"
  [[nodiscard]] const std::string& repository() const { return repository_; }  // "library/alpine"
  [[nodiscard]] const std::string& tag() const { return tag_; }                // "" only when a digest is given
  [[nodiscard]] const std::optional<Digest>& digest() const { return digest_; }

  // Canonical form: registry/repository[:tag][@digest].
  [[nodiscard]] std::string str() const;
  // registry/repository, without tag or digest.
  [[nodiscard]] std::string name() const;
  // The short form Docker shows: "alpine:3.20", "team/app:1", "localhost:5000/app:1".
  [[nodiscard]] std::string familiar() const;
  // Host to contact: "registry-1.docker.io" for docker.io, otherwise registry().
  [[nodiscard]] std::string endpoint_host() const;

  // Copies with the tag / digest replaced (with_digest keeps the tag; with_tag drops the digest).
  [[nodiscard]] Reference with_digest(const Digest& d) const;
  [[nodiscard]] Reference with_tag(std::string_view tag) const;

  bool operator==(const Reference&) const = default;

 private:
  std::string registry_;
  std::string repository_;
  std::string tag_;
  std::optional<Digest> digest_;
};

}  // namespace sm::oci
