#include "oci/import.h"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <streambuf>

#include "common/error.h"
#include "oci/archive_error.h"

namespace sm::oci {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::size_t kMaxEntries = 200000;
constexpr std::size_t kMaxJsonFiles = 20000;
constexpr std::size_t kMaxJsonTotal = 256u << 20;

// "./a//b/../c" -> "a/c"; an archive path only ever used as a lookup key.
std::string normalise(std::string_view p) {
  std::vector<std::string> parts;
  std::size_t i = 0;
  while (i <= p.size()) {
    auto j = p.find('/', i);
    if (j == std::string_view::npos) j = p.size();
    std::string_view c = p.substr(i, j - i);
    if (c == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!c.empty() && c != ".") {
      parts.emplace_back(c);
    }
    i = j + 1;
  }
  std::string out;
  for (auto& c : parts) out += (out.empty() ? "" : "/") + c;
  return out;
}

// What one pass over the archive leaves behind.
struct Contents {
  std::map<std::string, std::string> json;                    // small *.json / oci-layout files
  std::map<std::string, std::pair<Digest, std::uint64_t>> blobs;  // path -> stored blob
  std::map<std::string, std::string> links;                   // symlink path -> normalised target
};

// A std::streambuf over libarchive's current entry data, so Store::put_blob can stream it.
class ArchiveEntryBuf : public std::streambuf {
 public:
  explicit ArchiveEntryBuf(archive* a) : a_(a) {}

 protected:
  int_type underflow() override {
    la_ssize_t n = archive_read_data(a_, buf_, sizeof buf_);
    if (n < 0) throw Error(std::string("reading the archive failed: ") + archive_why(a_));
    if (n == 0) return traits_type::eof();
    setg(buf_, buf_, buf_ + n);
    return traits_type::to_int_type(buf_[0]);
  }

 private:
  archive* a_;
  char buf_[1 << 16];
};

bool wants_json(const std::string& path, std::uint64_t size) {
  if (size > kMaxConfigBytes) return false;
  return path.ends_with(".json") || path == "oci-layout" || path == "repositories";
}

// Stores the entry content: as a verified blob when its path names a digest, otherwise as a
// new blob whose digest is computed. Small JSON files are also kept in memory.
void take_entry(Store& store, Contents& c, const std::string& path, std::uint64_t size, std::istream& in) {
  if (wants_json(path, size)) {
    if (c.json.size() >= kMaxJsonFiles) throw Error("too many JSON files in the archive");
    std::string text(size, '\0');
    in.read(text.data(), static_cast<std::streamsize>(size));
    if (static_cast<std::uint64_t>(in.gcount()) != size) throw Error(fmt::format("{}: truncated", path));
    std::size_t total = 0;
    for (auto& [k, v] : c.json) total += v.size();
    if (total + size > kMaxJsonTotal) throw Error("the archive's JSON files are implausibly large");
    c.json[path] = std::move(text);  // stored as a blob only if an image uses it (lookup)
    return;
  }
  Digest expected;
  // blobs/sha256/<hex> (OCI layouts, Docker 25+ saves) must hash to its name.
  if (path.starts_with("blobs/")) {
    auto rest = path.substr(6);
    auto slash = rest.find('/');
    if (slash != std::string::npos) {
      expected = Digest::parse(rest.substr(0, slash) + ":" + rest.substr(slash + 1));
    }
  }
  try {
    c.blobs[path] = {store.put_blob(in, expected, size), size};
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", path, e.what()));
  }
}

Contents read_tar(Store& store, const fs::path& file) {
  Contents c;
  archive* a = archive_read_new();
  struct Closer {
    archive* a;
    ~Closer() { archive_read_free(a); }
  } closer{a};
  archive_read_support_filter_all(a);
  archive_read_support_format_tar(a);
  archive_read_support_format_gnutar(a);
  if (archive_read_open_filename(a, file.c_str(), 1 << 16) != ARCHIVE_OK)
    throw Error(fmt::format("not a readable tar archive: {}", archive_why(a)));
  archive_entry* e;
  std::size_t n = 0;
  int rc;
  while ((rc = archive_read_next_header(a, &e)) == ARCHIVE_OK || rc == ARCHIVE_WARN) {
    if (++n > kMaxEntries) throw Error(fmt::format("more than {} entries", kMaxEntries));
    const char* name = archive_entry_pathname(e);
    if (!name) continue;
    std::string path = normalise(name);
    auto type = archive_entry_filetype(e);
    if (type == AE_IFLNK) {
      const char* target = archive_entry_symlink(e);
      auto dir = path.find('/') == std::string::npos ? std::string() : path.substr(0, path.rfind('/') + 1);
      if (target) c.links[path] = normalise(target[0] == '/' ? std::string(target) : dir + target);
      continue;
    }
    if (archive_entry_hardlink(e)) {
      c.links[path] = normalise(archive_entry_hardlink(e));
      continue;
    }
    if (type != AE_IFREG) continue;
    if (!archive_entry_size_is_set(e) || archive_entry_size(e) < 0)
      throw Error(fmt::format("entry {} has no size", path));
    ArchiveEntryBuf buf(a);
    std::istream in(&buf);
    in.exceptions(std::ios::badbit);
    try {
      take_entry(store, c, path, static_cast<std::uint64_t>(archive_entry_size(e)), in);
    } catch (const std::ios_base::failure&) {
      throw Error(fmt::format("{}: {}", path, archive_why(a)));
    }
  }
  if (rc != ARCHIVE_EOF)
    throw Error(fmt::format("not a readable tar archive: {}", archive_why(a)));
  if (n == 0) throw Error("empty archive");
  return c;
}

Contents read_dir(Store& store, const fs::path& dir) {
  Contents c;
  std::size_t n = 0;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) {
    if (++n > kMaxEntries) throw Error(fmt::format("more than {} files", kMaxEntries));
    std::string path = normalise(fs::relative(it->path(), dir).generic_string());
    if (it->is_symlink()) {
      auto target = fs::read_symlink(it->path()).generic_string();
      auto parent = path.find('/') == std::string::npos ? std::string() : path.substr(0, path.rfind('/') + 1);
      c.links[path] = normalise(parent + target);
      continue;
    }
    if (!it->is_regular_file()) continue;
    std::ifstream in(it->path(), std::ios::binary);
    if (!in) throw Error("cannot read " + it->path().string());
    take_entry(store, c, path, it->file_size(), in);
  }
  return c;
}

std::pair<Digest, std::uint64_t> lookup(Store& store, const Contents& c, std::string path, std::string_view what) {
  path = normalise(path);
  for (int hops = 0; hops < 16; ++hops) {
    if (auto b = c.blobs.find(path); b != c.blobs.end()) return b->second;
    if (auto j = c.json.find(path); j != c.json.end()) return {store.put_blob_bytes(j->second), j->second.size()};
    auto l = c.links.find(path);
    if (l == c.links.end()) break;
    path = l->second;
  }
  throw Error(fmt::format("{} \"{}\" is not in the archive", what, path));
}

json parse_small(const std::string& text, std::string_view what) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{} is not valid JSON: {}", what, e.what()));
  }
}

// "my_Layout.v2" -> "localhost/my_layout.v2": a repository name from a file name.
std::string default_repository(const fs::path& path) {
  std::string base = path.filename().string();
  if (base.empty()) base = path.parent_path().filename().string();
  for (auto ext : {".tar.gz", ".tgz", ".tar.zst", ".tar"})
    if (base.ends_with(ext)) base.resize(base.size() - std::string_view(ext).size());
  std::string out;
  for (char ch : base) {
    char l = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    out += (std::isalnum(static_cast<unsigned char>(l)) || l == '.' || l == '_' || l == '-') ? l : '-';
  }
  while (!out.empty() && !std::isalnum(static_cast<unsigned char>(out.front()))) out.erase(0, 1);
  while (!out.empty() && !std::isalnum(static_cast<unsigned char>(out.back()))) out.pop_back();
  return "localhost/" + (out.empty() ? std::string("image") : out);
}

Compression sniff(Store& store, const Digest& d) {
  std::ifstream in(store.blob_path(d), std::ios::binary);
  unsigned char m[4] = {};
  in.read(reinterpret_cast<char*>(m), 4);
  if (m[0] == 0x1f && m[1] == 0x8b) return Compression::gzip;
  if (m[0] == 0x28 && m[1] == 0xb5 && m[2] == 0x2f && m[3] == 0xfd) return Compression::zstd;
  return Compression::none;
}

// Docker's `docker save` format (moby image/tarexport): manifest.json lists each image's
// config, layer files and tags. We write the Docker v2 schema 2 manifest a registry would serve.
std::vector<LoadedImage> load_docker(Store& store, const Contents& c, const LoadOptions& opts) {
  json list = parse_small(c.json.at("manifest.json"), "manifest.json");
  if (!list.is_array() || list.empty()) throw Error("manifest.json must be a non-empty array of images");
  std::vector<LoadedImage> out;
  for (std::size_t i = 0; i < list.size(); ++i) {
    auto& img = list[i];
    std::string what = fmt::format("manifest.json image {}", i);
    if (!img.is_object() || !img.contains("Config") || !img["Config"].is_string() || !img.contains("Layers") ||
        !img["Layers"].is_array())
      throw Error(what + ": needs \"Config\" (string) and \"Layers\" (array)");
    std::string config_path = normalise(img["Config"].get<std::string>());
    auto [config_digest, config_size] = lookup(store, c, config_path, "config");
    if (config_size > kMaxConfigBytes) throw Error(what + ": config is too large");
    // The config file is named after its digest ("<hex>.json" or "blobs/sha256/<hex>").
    std::string stem = fs::path(config_path).filename().string();
    if (stem.ends_with(".json")) stem.resize(stem.size() - 5);
    if (auto named = Digest::try_parse("sha256:" + stem); named && *named != config_digest)
      throw Error(fmt::format("{}: config {} hashes to {}", what, config_path, config_digest.to_string()));
    json layers = json::array();
    for (auto& l : img["Layers"]) {
      if (!l.is_string()) throw Error(what + ": \"Layers\" entries must be strings");
      auto [d, size] = lookup(store, c, l.get<std::string>(), "layer");
      std::string_view mt = media::kDockerLayer;
      switch (sniff(store, d)) {
        case Compression::gzip: mt = media::kDockerLayerGzip; break;
        case Compression::zstd: mt = media::kOciLayerZstd; break;
        case Compression::none: break;
      }
      layers.push_back({{"mediaType", mt}, {"digest", d.to_string()}, {"size", size}});
    }
    json manifest = {{"schemaVersion", 2},
                     {"mediaType", media::kDockerManifest},
                     {"config", {{"mediaType", media::kDockerConfig}, {"digest", config_digest.to_string()},
                                 {"size", config_size}}},
                     {"layers", layers}};
    std::string bytes = manifest.dump();
    LoadedImage li;
    li.top = li.manifest_digest = store.put_blob_bytes(bytes);
    if (opts.tag) {
      li.refs.push_back(*opts.tag);
    } else if (img.contains("RepoTags") && img["RepoTags"].is_array()) {
      for (auto& t : img["RepoTags"])
        if (t.is_string()) li.refs.push_back(Reference::parse(t.get<std::string>()));
    }
    out.push_back(std::move(li));
  }
  return out;
}

// OCI image layout (image-layout.md): index.json names the images.
std::vector<LoadedImage> load_oci(Store& store, const Contents& c, const fs::path& path, const LoadOptions& opts) {
  if (!c.json.contains("oci-layout")) throw Error("no oci-layout file: this is not an OCI image layout");
  json layout = parse_small(c.json.at("oci-layout"), "oci-layout");
  if (!layout.is_object() || layout.value("imageLayoutVersion", "") != "1.0.0")
    throw Error("oci-layout: unsupported imageLayoutVersion (expected 1.0.0)");
  Index index = Index::parse(c.json.at("index.json"), media::kOciIndex);
  std::vector<LoadedImage> out;
  for (auto& entry : index.manifests) {
    if (!store.has_blob(entry.digest))
      throw Error(fmt::format("index.json names {} but blobs/ does not have it", entry.digest.to_string()));
    if (store.blob_size(entry.digest) != entry.size)
      throw Error(fmt::format("index.json: {} is {} bytes, not {}", entry.digest.to_string(),
                              store.blob_size(entry.digest), entry.size));
    LoadedImage li;
    li.top = entry.digest;
    if (opts.tag) {
      li.refs.push_back(*opts.tag);
    } else {
      std::string name;
      if (auto a = entry.annotations.find("io.containerd.image.name"); a != entry.annotations.end()) name = a->second;
      auto rn = entry.annotations.find("org.opencontainers.image.ref.name");
      if (name.empty() && rn != entry.annotations.end()) {
        // A bare tag ("v1") names the layout's own repository; a full name stands alone.
        name = rn->second.find('/') != std::string::npos ? rn->second : default_repository(path) + ":" + rn->second;
      }
      if (!name.empty()) li.refs.push_back(Reference::parse(name));
    }
    out.push_back(std::move(li));
  }
  return out;
}

}  // namespace

std::vector<LoadedImage> load_images(Store& store, const fs::path& path, const LoadOptions& opts) {
  auto lease = store.lease();
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(fmt::format("{}: no such file or directory", path.string()));
  Contents c;
  try {
    c = fs::is_directory(path) ? read_dir(store, path) : read_tar(store, path);
  } catch (const Error& e) {
    throw Error(fmt::format("loading {}: {}", path.string(), e.what()));
  }
  std::vector<LoadedImage> images;
  try {
    if (c.json.contains("manifest.json"))
      images = load_docker(store, c, opts);
    else if (c.json.contains("index.json"))
      images = load_oci(store, c, path, opts);
    else
      throw Error("neither a `docker save` archive (manifest.json) nor an OCI image layout (index.json, oci-layout)");
    if (opts.tag && images.size() > 1)
      throw Error(fmt::format("it holds {} images; a single tag cannot name them all", images.size()));
    for (auto& li : images) {
      // Every blob the platform's image needs must now be stored and well-formed.
      StoredImage si = store.image(li.top, opts.platform);
      li.manifest_digest = si.manifest_digest;
      for (auto* d : {&si.manifest.config}) {
        if (!store.has_blob(d->digest)) throw Error(fmt::format("config {} is missing", d->digest.to_string()));
      }
      for (auto& l : si.manifest.layers) {
        if (!store.has_blob(l.digest)) throw Error(fmt::format("layer {} is missing", l.digest.to_string()));
        if (store.blob_size(l.digest) != l.size)
          throw Error(fmt::format("layer {} is {} bytes, the manifest says {}", l.digest.to_string(),
                                  store.blob_size(l.digest), l.size));
        (void)layer_compression(l.media_type);
      }
      if (li.refs.empty()) li.refs.push_back(Reference::parse(default_repository(path)));
      for (auto& r : li.refs) store.set_ref(r, li.top);
    }
  } catch (const Error& e) {
    throw Error(fmt::format("loading {}: {}", path.string(), e.what()));
  }
  return images;
}

}  // namespace sm::oci
