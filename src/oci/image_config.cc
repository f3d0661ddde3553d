#include "oci/image_config.h"

#include <algorithm>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "oci/manifest.h"

namespace sm::oci {
namespace {

using nlohmann::json;

// Caps that keep a hostile config from making the VM side handle absurd values; real images use
// a few dozen env entries and a handful of ports.
constexpr std::size_t kMaxListItems = 65536;

[[noreturn]] void bad(std::string_view what, std::string_view field, std::string_view why) {
  throw Error(fmt::format("{}: field \"{}\" {}; the image is malformed", what, field, why));
}

// A string field, "" when absent or null (Docker writes null for unset fields).
std::string get_string(const json& obj, const char* key, std::string_view what, std::string_view path) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return {};
  if (!it->is_string()) bad(what, fmt::format("{}{}", path, key), "must be a string");
  return it->get<std::string>();
}

std::vector<std::string> get_strings(const json& obj, const char* key, std::string_view what,
                                     std::string_view path) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return {};
  if (!it->is_array()) bad(what, fmt::format("{}{}", path, key), "must be an array of strings");
  if (it->size() > kMaxListItems)
    bad(what, fmt::format("{}{}", path, key), fmt::format("has more than {} items", kMaxListItems));
  std::vector<std::string> out;
  out.reserve(it->size());
  for (const auto& v : *it) {
    if (!v.is_string()) bad(what, fmt::format("{}{}", path, key), "must contain only strings");
    out.push_back(v.get<std::string>());
  }
  return out;
}

}  // namespace

std::vector<std::string> RunConfig::argv() const {
  std::vector<std::string> out = entrypoint;
  out.insert(out.end(), cmd.begin(), cmd.end());
  return out;
}

RunConfig RunConfig::parse(std::string_view text, std::string_view what) {
  if (text.size() > kMaxConfigBytes)
    throw Error(fmt::format("{} is {} bytes, over the {} byte limit; refusing it", what,
                            text.size(), kMaxConfigBytes));
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{} is not valid JSON: {}", what, e.what()));
  }
  if (!doc.is_object()) throw Error(fmt::format("{} is not a JSON object", what));

  RunConfig rc;
  rc.os = get_string(doc, "os", what, "");
  rc.architecture = get_string(doc, "architecture", what, "");

  auto cfg = doc.find("config");
  if (cfg != doc.end() && !cfg->is_null()) {
    if (!cfg->is_object()) bad(what, "config", "must be an object");
    rc.entrypoint = get_strings(*cfg, "Entrypoint", what, "config.");
    rc.cmd = get_strings(*cfg, "Cmd", what, "config.");
    rc.env = get_strings(*cfg, "Env", what, "config.");
    for (const auto& e : rc.env) {
      if (e.empty() || e.front() == '=' || e.find('\0') != std::string::npos)
        bad(what, "config.Env", fmt::format("has an entry without a name: \"{}\"", e));
    }
    rc.working_dir = get_string(*cfg, "WorkingDir", what, "config.");
    rc.user = get_string(*cfg, "User", what, "config.");
    rc.stop_signal = get_string(*cfg, "StopSignal", what, "config.");
    auto ports = cfg->find("ExposedPorts");
    if (ports != cfg->end() && !ports->is_null()) {
      if (!ports->is_object()) bad(what, "config.ExposedPorts", "must be an object");
      if (ports->size() > kMaxListItems) bad(what, "config.ExposedPorts", "has too many ports");
      for (const auto& [port, _] : ports->items()) {
        // "port/proto" or a bare port (Docker then assumes tcp); normalise to "port/proto".
        auto slash = port.find('/');
        std::string num = port.substr(0, slash);
        std::string proto = slash == std::string::npos ? "tcp" : port.substr(slash + 1);
        bool digits = !num.empty() && num.size() <= 5 &&
                      std::all_of(num.begin(), num.end(), [](char c) { return c >= '0' && c <= '9'; });
        if (!digits || std::stoul(num) == 0 || std::stoul(num) > 65535 ||
            (proto != "tcp" && proto != "udp" && proto != "sctp"))
          bad(what, "config.ExposedPorts", fmt::format("has an invalid port \"{}\"", port));
        rc.exposed_ports.push_back(std::to_string(std::stoul(num)) + "/" + proto);
      }
      std::sort(rc.exposed_ports.begin(), rc.exposed_ports.end());
      rc.exposed_ports.erase(std::unique(rc.exposed_ports.begin(), rc.exposed_ports.end()),
                             rc.exposed_ports.end());
    }
  }

  auto rootfs = doc.find("rootfs");
  if (rootfs != doc.end() && !rootfs->is_null()) {
    if (!rootfs->is_object()) bad(what, "rootfs", "must be an object");
    std::string type = get_string(*rootfs, "type", what, "rootfs.");
    if (type != "layers") bad(what, "rootfs.type", fmt::format("is \"{}\", not \"layers\"", type));
    for (const auto& s : get_strings(*rootfs, "diff_ids", what, "rootfs.")) {
      auto d = Digest::try_parse(s);
      if (!d) bad(what, "rootfs.diff_ids", fmt::format("has an invalid digest \"{}\"", s));
      rc.diff_ids.push_back(*d);
    }
  }
  return rc;
}

}  // namespace sm::oci
