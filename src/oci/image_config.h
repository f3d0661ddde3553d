// The image configuration (OCI image spec v1.1, config.md; Docker's image JSON has the same
// shape): what the VM side needs to run the image, in a small typed struct. The JSON comes from
// a registry or a tarball and is untrusted: it is size-capped, every field used is type-checked,
// and malformed input raises sm::Error naming the field.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "oci/digest.h"

namespace sm::oci {

struct RunConfig {
  std::vector<std::string> entrypoint;  // config.Entrypoint (empty when absent or null)
  std::vector<std::string> cmd;         // config.Cmd
  std::vector<std::string> env;         // config.Env, "NAME=value" each, in image order
  std::string working_dir;              // config.WorkingDir ("" = "/")
  std::string user;                     // config.User: "", "name", "uid", "uid:gid", "user:group"
  std::string stop_signal;              // config.StopSignal, e.g. "SIGTERM" ("" = default)
  std::vector<std::string> exposed_ports;  // config.ExposedPorts keys, sorted: "80/tcp", "53/udp"
  std::string os;                       // "linux"
  std::string architecture;             // GOARCH spelling: "amd64"
  std::vector<Digest> diff_ids;         // rootfs.diff_ids: sha256 of each uncompressed layer

  // Entrypoint followed by Cmd: the process the image runs by default (may be empty).
  [[nodiscard]] std::vector<std::string> argv() const;

  // Parses config JSON. Throws sm::Error when it is larger than kMaxConfigBytes (manifest.h),
  // not JSON, or when a field has the wrong type; `what` names the blob in messages.
  [[nodiscard]] static RunConfig parse(std::string_view json, std::string_view what = "image config");
};

}  // namespace sm::oci
