#include "oci/manifest.h"

#include <sys/utsname.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace sm::oci {

using nlohmann::json;

namespace {

constexpr std::size_t kMaxLayers = 1000;          // Docker itself stops at 127
constexpr std::size_t kMaxIndexEntries = 10000;

std::string lower(std::string_view s) {
  std::string r(s);
  std::transform(r.begin(), r.end(), r.begin(), [](unsigned char c) { return std::tolower(c); });
  return r;
}

json parse_json(std::string_view text, std::size_t cap, std::string_view what) {
  if (text.size() > cap)
    throw Error(fmt::format("{} is {} bytes, more than the {} byte limit", what, text.size(), cap));
  try {
    json j = json::parse(text.begin(), text.end());
    if (!j.is_object()) throw Error(fmt::format("{} is not a JSON object", what));
    return j;
  } catch (const json::exception& e) {
    throw Error(fmt::format("{} is not valid JSON: {}", what, e.what()));
  }
}

std::string get_string(const json& j, const char* key, std::string_view what, bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) throw Error(fmt::format("{}: missing \"{}\"", what, key));
    return {};
  }
  if (!it->is_string()) throw Error(fmt::format("{}: \"{}\" must be a string", what, key));
  return it->get<std::string>();
}

std::map<std::string, std::string> get_string_map(const json& j, const char* key, std::string_view what) {
  std::map<std::string, std::string> out;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_object()) throw Error(fmt::format("{}: \"{}\" must be an object", what, key));
  for (auto& [k, v] : it->items()) {
    if (!v.is_string()) throw Error(fmt::format("{}: {}[\"{}\"] must be a string", what, key, k));
    out[k] = v.get<std::string>();
  }
  return out;
}

Descriptor parse_descriptor(const json& j, const std::string& what) {
  if (!j.is_object()) throw Error(what + ": descriptor must be an object");
  Descriptor d;
  d.media_type = get_string(j, "mediaType", what, true);
  d.digest = Digest::parse(get_string(j, "digest", what, true));
  auto size = j.find("size");
  if (size == j.end() || !size->is_number_integer() || size->get<std::int64_t>() < 0)
    throw Error(what + ": \"size\" must be a non-negative integer");
  d.size = size->get<std::uint64_t>();
  if (auto p = j.find("platform"); p != j.end() && !p->is_null()) {
    if (!p->is_object()) throw Error(what + ": \"platform\" must be an object");
    Platform pl;
    pl.os = get_string(*p, "os", what + " platform", true);
    pl.architecture = get_string(*p, "architecture", what + " platform", true);
    pl.variant = get_string(*p, "variant", what + " platform", false);
    d.platform = pl;
  }
  d.annotations = get_string_map(j, "annotations", what);
  if (auto u = j.find("urls"); u != j.end() && !u->is_null()) {
    if (!u->is_array()) throw Error(what + ": \"urls\" must be an array");
    for (auto& s : *u) {
      if (!s.is_string()) throw Error(what + ": \"urls\" entries must be strings");
      d.urls.push_back(s.get<std::string>());
    }
  }
  return d;
}

void check_schema_version(const json& j, std::string_view what) {
  auto v = j.find("schemaVersion");
  if (v == j.end() || !v->is_number_integer())
    throw Error(fmt::format("{}: missing or non-integer \"schemaVersion\"", what));
  if (v->get<std::int64_t>() != 2)
    throw Error(fmt::format("{}: schemaVersion {} is not supported (Docker schema 1 images are "
                            "deprecated; only schema 2 and OCI manifests can be pulled)",
                            what, v->dump()));
}

// Reconciles the document's mediaType with the hint it came with.
std::string media_type_of(const json& j, std::string_view hint, std::string_view what) {
  std::string own = get_string(j, "mediaType", what, false);
  std::string h(hint);
  // Content-Type headers may carry parameters ("; charset=utf-8").
  if (auto semi = h.find(';'); semi != std::string::npos) h.resize(semi);
  while (!h.empty() && h.back() == ' ') h.pop_back();
  if (h == "application/json" || h == "application/octet-stream") h.clear();
  if (!own.empty() && !h.empty() && own != h &&
      (is_index_media_type(h) || is_manifest_media_type(h)))
    throw Error(fmt::format("{}: its mediaType \"{}\" contradicts the declared type \"{}\"", what, own, h));
  if (!own.empty()) return own;
  if (!h.empty()) return h;
  if (j.contains("manifests")) return std::string(media::kOciIndex);
  if (j.contains("layers") || j.contains("config")) return std::string(media::kOciManifest);
  throw Error(fmt::format("{}: cannot tell whether it is a manifest or an index (no mediaType)", what));
}

}  // namespace

bool is_index_media_type(std::string_view mt) {
  return mt == media::kOciIndex || mt == media::kDockerManifestList;
}
bool is_manifest_media_type(std::string_view mt) {
  return mt == media::kOciManifest || mt == media::kDockerManifest;
}

Compression layer_compression(std::string_view mt) {
  if (mt == media::kOciLayer || mt == media::kDockerLayer) return Compression::none;
  if (mt == media::kOciLayerGzip || mt == media::kDockerLayerGzip ||
      mt == "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip")
    return Compression::gzip;
  if (mt == media::kOciLayerZstd || mt == "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd")
    return Compression::zstd;
  if (mt == "application/vnd.oci.image.layer.nondistributable.v1.tar") return Compression::none;
  if (mt.starts_with("application/vnd.docker.image.rootfs.foreign."))
    throw Error(fmt::format("layer media type \"{}\" is a foreign (Windows) layer, which cannot run "
                            "in a Linux microVM", mt));
  throw Error(fmt::format("unsupported layer media type \"{}\" (expected an OCI or Docker tar layer, "
                          "uncompressed, gzip or zstd)", mt));
}

Platform Platform::host() {
  Platform p;
  p.os = "linux";
#if defined(__x86_64__)
  p.architecture = "amd64";
#elif defined(__aarch64__)
  p.architecture = "arm64";
#elif defined(__i386__)
  p.architecture = "386";
#elif defined(__riscv) && __riscv_xlen == 64
  p.architecture = "riscv64";
#else
#error "unknown host architecture: add its GOARCH name here"
#endif
  return p;
}

Platform Platform::parse(std::string_view s) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : s) {
    if (c == '/') {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  parts.push_back(cur);
  auto bad = [&](std::string_view why) {
    return Error(fmt::format("invalid platform \"{}\": {} (expected os/arch[/variant], e.g. linux/amd64 "
                             "or linux/arm64/v8)", s, why));
  };
  if (parts.size() > 3) throw bad("too many components");
  for (auto& p : parts) {
    if (p.empty()) throw bad("empty component");
    for (char c : p)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.')
        throw bad("unexpected character");
    p = lower(p);
  }
  Platform pl;
  if (parts.size() == 1) {  // "arm64": the host OS, as containerd's platforms.Parse does
    pl.os = "linux";
    pl.architecture = parts[0];
  } else {
    pl.os = parts[0];
    pl.architecture = parts[1];
    if (parts.size() == 3) pl.variant = parts[2];
  }
  // Normalise common non-GOARCH spellings (containerd platforms.Normalize).
  const std::string& a = pl.architecture;
  if (a == "x86_64" || a == "x86-64") pl.architecture = "amd64";
  else if (a == "aarch64") pl.architecture = "arm64";
  else if (a == "i386") pl.architecture = "386";
  else if (a == "armhf") { pl.architecture = "arm"; if (pl.variant.empty()) pl.variant = "v7"; }
  else if (a == "armel") { pl.architecture = "arm"; if (pl.variant.empty()) pl.variant = "v6"; }
  if (pl.architecture == "arm64" && pl.variant == "8") pl.variant = "v8";
  return pl;
}

std::string Platform::str() const {
  std::string s = os + "/" + architecture;
  if (!variant.empty()) s += "/" + variant;
  return s;
}

bool Platform::matches(const Platform& c) const {
  if (c.os != os || c.architecture != architecture) return false;
  if (variant.empty() || c.variant == variant) return true;
  // arm64 images usually leave out the only variant there is.
  return architecture == "arm64" && variant == "v8" && c.variant.empty();
}

Manifest Manifest::parse(std::string_view text, std::string_view hint) {
  constexpr std::string_view what = "image manifest";
  json j = parse_json(text, kMaxManifestBytes, what);
  check_schema_version(j, what);
  std::string mt = media_type_of(j, hint, what);
  if (is_index_media_type(mt))
    throw Error(fmt::format("{}: expected an image manifest but got an index ({})", what, mt));
  if (!is_manifest_media_type(mt))
    throw Error(fmt::format("{}: unsupported media type \"{}\"", what, mt));
  Manifest m;
  m.media_type = mt;
  auto cfg = j.find("config");
  if (cfg == j.end()) throw Error(fmt::format("{}: missing \"config\"", what));
  m.config = parse_descriptor(*cfg, "image manifest config");
  if (m.config.media_type != media::kOciConfig && m.config.media_type != media::kDockerConfig)
    throw Error(fmt::format("{}: config media type \"{}\" is not a container image config (is this an "
                            "artifact rather than an image?)", what, m.config.media_type));
  if (m.config.size > kMaxConfigBytes)
    throw Error(fmt::format("{}: config size {} exceeds the {} byte limit", what, m.config.size, kMaxConfigBytes));
  auto layers = j.find("layers");
  if (layers == j.end() || !layers->is_array()) throw Error(fmt::format("{}: \"layers\" must be an array", what));
  if (layers->size() > kMaxLayers)
    throw Error(fmt::format("{}: {} layers is more than the limit of {}", what, layers->size(), kMaxLayers));
  for (std::size_t i = 0; i < layers->size(); ++i)
    m.layers.push_back(parse_descriptor((*layers)[i], fmt::format("image manifest layer {}", i)));
  m.annotations = get_string_map(j, "annotations", what);
  return m;
}

std::uint64_t Manifest::layers_size() const {
  std::uint64_t n = 0;
  for (auto& l : layers) n += l.size;
  return n;
}

Index Index::parse(std::string_view text, std::string_view hint) {
  constexpr std::string_view what = "image index";
  json j = parse_json(text, kMaxManifestBytes, what);
  check_schema_version(j, what);
  std::string mt = media_type_of(j, hint, what);
  if (is_manifest_media_type(mt))
    throw Error(fmt::format("{}: expected an index but got an image manifest ({})", what, mt));
  if (!is_index_media_type(mt)) throw Error(fmt::format("{}: unsupported media type \"{}\"", what, mt));
  Index idx;
  idx.media_type = mt;
  auto ms = j.find("manifests");
  if (ms == j.end() || !ms->is_array()) throw Error(fmt::format("{}: \"manifests\" must be an array", what));
  if (ms->size() > kMaxIndexEntries)
    throw Error(fmt::format("{}: {} entries is more than the limit of {}", what, ms->size(), kMaxIndexEntries));
  for (std::size_t i = 0; i < ms->size(); ++i)
    idx.manifests.push_back(parse_descriptor((*ms)[i], fmt::format("image index entry {}", i)));
  idx.annotations = get_string_map(j, "annotations", what);
  return idx;
}

const Descriptor& Index::select(const Platform& wanted) const {
  const Descriptor* unlabelled = nullptr;
  std::size_t n_unlabelled = 0;
  for (auto& d : manifests) {
    if (!is_manifest_media_type(d.media_type)) continue;
    if (!d.platform) {
      unlabelled = &d;
      ++n_unlabelled;
      continue;
    }
    if (wanted.matches(*d.platform)) return d;
  }
  // An index without platform data (common in OCI layouts) with a single image: take it.
  if (n_unlabelled == 1 && std::none_of(manifests.begin(), manifests.end(), [](auto& d) { return d.platform.has_value(); }))
    return *unlabelled;
  std::string have;
  for (auto& d : manifests)
    if (d.platform && is_manifest_media_type(d.media_type)) have += (have.empty() ? "" : ", ") + d.platform->str();
  throw Error(fmt::format("no image for platform {} in the index (it has: {}); choose one with --platform",
                          wanted.str(), have.empty() ? "no platform-labelled images" : have));
}

std::string detect_media_type(std::string_view text, std::string_view hint) {
  json j = parse_json(text, kMaxManifestBytes, "manifest");
  return media_type_of(j, hint, "manifest");
}

}  // namespace sm::oci
