#include "oci/credentials.h"

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "common/error.h"
#include "oci/http.h"

namespace sm::oci {

namespace fs = std::filesystem;

fs::path docker_config_dir() {
  if (const char* d = std::getenv("DOCKER_CONFIG"); d && *d) return d;
  const char* home = std::getenv("HOME");
  return fs::path(home && *home ? home : "/") / ".docker";
}

namespace {
// "https://host:port/v1/" -> "host:port"
std::string key_host(std::string_view key) {
  for (std::string_view scheme : {"https://", "http://"})
    if (key.starts_with(scheme)) key.remove_prefix(scheme.size());
  return std::string(key.substr(0, key.find('/')));
}

bool matches(std::string_view registry, std::string_view key) {
  std::string host = key_host(key);
  if (registry == "docker.io")
    return host == "docker.io" || host == "index.docker.io" || host == "registry-1.docker.io";
  return host == registry;
}
}  // namespace

std::optional<Credentials> docker_config_credentials(std::string_view registry,
                                                     const std::optional<fs::path>& config_dir) {
  fs::path file = (config_dir ? *config_dir : docker_config_dir()) / "config.json";
  std::ifstream in(file, std::ios::binary);
  if (!in) return std::nullopt;
  std::string text;
  text.resize(1 << 20);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (in.gcount() == 1 << 20) throw Error(file.string() + " is larger than 1 MiB; is it really a Docker config?");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{} is not valid JSON: {}", file.string(), e.what()));
  }
  if (!j.is_object()) throw Error(file.string() + " is not a JSON object");
  auto auths = j.find("auths");
  if (auths == j.end() || !auths->is_object()) {
    if (j.contains("credsStore") || j.contains("credHelpers"))
      spdlog::debug("{} names credential helpers, which supermachine does not run", file.string());
    return std::nullopt;
  }
  for (auto& [key, entry] : auths->items()) {
    if (!matches(registry, key) || !entry.is_object()) continue;
    Credentials c;
    if (auto a = entry.find("auth"); a != entry.end() && a->is_string() && !a->get<std::string>().empty()) {
      std::string decoded;
      try {
        decoded = base64_decode(a->get<std::string>());
      } catch (const Error&) {
        throw Error(fmt::format("{}: the \"auth\" entry for {} is not valid base64", file.string(), key));
      }
      auto colon = decoded.find(':');
      if (colon == std::string::npos)
        throw Error(fmt::format("{}: the \"auth\" entry for {} is not base64 of \"user:password\"", file.string(), key));
      c.username = decoded.substr(0, colon);
      c.password = decoded.substr(colon + 1);
      return c;
    }
    if (entry.contains("username") && entry["username"].is_string() && entry.contains("password") &&
        entry["password"].is_string()) {
      c.username = entry["username"].get<std::string>();
      c.password = entry["password"].get<std::string>();
      return c;
    }
  }
  return std::nullopt;
}

}  // namespace sm::oci
