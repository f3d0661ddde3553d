// Test-only helpers (included by *_test.cc files only): the project's own test images, built
// offline by tests/images/build and cached under ~/.cache/supermachine/test-images/.
#pragma once

#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <vector>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace sm::oci::testing {

// The repository root: $SM_ROOT when set, else found from this header's own path.
inline std::filesystem::path source_root() {
  if (const char* r = std::getenv("SM_ROOT"); r && *r) return r;
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
}

inline bool have_tool(const char* name) {
  std::string cmd = std::string("command -v ") + name + " >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

// Runs tests/images/build (a no-op when its cache is warm) and returns the directory it prints.
// Throws with the script's exit status when it fails. Concurrent callers are serialised by the
// script's own lock.
inline std::filesystem::path test_images_dir() {
  static const std::filesystem::path dir = [] {
    std::string cmd = (source_root() / "tests/images/build").string();
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) throw std::runtime_error("cannot run " + cmd);
    std::string out;
    char buf[512];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    int status = ::pclose(p);
    if (status != 0) throw std::runtime_error(cmd + " failed (status " + std::to_string(status) + ")");
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    if (auto nl = out.rfind('\n'); nl != std::string::npos) out = out.substr(nl + 1);
    return std::filesystem::path(out);
  }();
  return dir;
}

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The blob path of `digest` ("sha256:<hex>") in an OCI image layout.
inline std::filesystem::path layout_blob(const std::filesystem::path& layout, const std::string& digest) {
  return layout / "blobs/sha256" / digest.substr(digest.find(':') + 1);
}

// The manifest digest a tag names in an OCI image layout's index.json.
inline std::string layout_manifest(const std::filesystem::path& layout, const std::string& tag) {
  auto index = nlohmann::json::parse(slurp(layout / "index.json"));
  for (const auto& m : index.at("manifests")) {
    if (m.value("annotations", nlohmann::json::object()).value("org.opencontainers.image.ref.name", "") == tag)
      return m.at("digest").get<std::string>();
  }
  throw std::runtime_error("tag " + tag + " not in " + layout.string());
}

// A tree's shape for comparisons: type, mode, owner, link count, device, mtime, and the
// contents of files and symlinks, keyed by path relative to the root ("." for the root).
struct Node {
  std::string type;
  mode_t mode = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  nlink_t nlink = 0;  // non-directories only
  dev_t rdev = 0;
  int64_t mtime = -1;
  std::string content;  // file contents or symlink target
  bool operator==(const Node&) const = default;
};

inline std::map<std::string, Node> snapshot(const std::filesystem::path& root) {
  namespace fs = std::filesystem;
  std::map<std::string, Node> out;
  std::vector<fs::path> paths{root};
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it)
    paths.push_back(it->path());
  for (const fs::path& p : paths) {
    struct stat st{};
    if (::lstat(p.c_str(), &st) != 0) throw std::runtime_error("cannot lstat " + p.string());
    Node n;
    n.mode = st.st_mode & 07777;
    n.uid = st.st_uid;
    n.gid = st.st_gid;
    n.mtime = st.st_mtim.tv_sec;
    if (S_ISDIR(st.st_mode)) {
      n.type = "dir";
    } else {
      n.nlink = st.st_nlink;
      if (S_ISREG(st.st_mode)) {
        n.type = "file";
        n.content = slurp(p);
      } else if (S_ISLNK(st.st_mode)) {
        n.type = "symlink";
        n.content = fs::read_symlink(p).string();
      } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
        n.type = S_ISCHR(st.st_mode) ? "chr" : "blk";
        n.rdev = st.st_rdev;
      } else if (S_ISFIFO(st.st_mode)) {
        n.type = "fifo";
      } else {
        n.type = "other";
      }
    }
    out[p.lexically_relative(root).string()] = n;
  }
  return out;
}

inline std::string describe(const Node& n) {
  return n.type + " mode " + std::to_string(n.mode) + " " + std::to_string(n.uid) + ":" +
         std::to_string(n.gid) + " nlink " + std::to_string(n.nlink) + " mtime " +
         std::to_string(n.mtime) + " [" + n.content.substr(0, 40) + "]";
}

// Every difference between two snapshots, one line each (empty when they match).
inline std::vector<std::string> diff_trees(const std::map<std::string, Node>& want,
                                           std::map<std::string, Node> got, bool compare_nlink = true) {
  std::vector<std::string> out;
  for (const auto& [path, node] : want) {
    auto it = got.find(path);
    if (it == got.end()) {
      out.push_back("missing " + path + " (" + describe(node) + ")");
      continue;
    }
    Node g = it->second;
    if (!compare_nlink) g.nlink = node.nlink;
    if (!(g == node)) out.push_back(path + ": got " + describe(g) + ", want " + describe(node));
    got.erase(it);
  }
  for (const auto& [path, node] : got) out.push_back("extra " + path + " (" + describe(node) + ")");
  return out;
}

}  // namespace sm::oci::testing
