// Test-only helpers (included by *_test.cc files only): the project's own test images, built
// offline by tests/images/build and cached under ~/.cache/supermachine/test-images/.
#pragma once

#include <cstdio>
#include <filesystem>
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

}  // namespace sm::oci::testing
