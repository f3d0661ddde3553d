// Registry credentials the way the Docker CLI stores them: config.json in $DOCKER_CONFIG or
// ~/.docker, "auths": { "<registry>": { "auth": base64("user:password") } } (or separate
// "username"/"password" fields). Credential helpers (credsStore/credHelpers) are not run.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace sm::oci {

struct Credentials {
  std::string username;
  std::string password;
};

// The Docker config directory: $DOCKER_CONFIG, else ~/.docker.
[[nodiscard]] std::filesystem::path docker_config_dir();

// Credentials for `registry` (as Reference::registry() spells it; docker.io also matches
// Docker Hub's legacy "https://index.docker.io/v1/" key). nullopt when the file or entry is
// absent; sm::Error when the file exists but is malformed.
[[nodiscard]] std::optional<Credentials> docker_config_credentials(
    std::string_view registry, const std::optional<std::filesystem::path>& config_dir = std::nullopt);

}  // namespace sm::oci
