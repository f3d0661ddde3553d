// libFuzzer target: arbitrary bytes as an image layer (a tar archive, maybe gzip or zstd
// compressed) applied onto a fresh root directory (src/oci/layer.h). Acceptable outcomes: the
// layer applies, or sm::Error names the entry it refused. After every input nothing outside the
// root may have appeared or changed: a file beside the root keeps its content, and the world
// directory holds only what it held. Build and run: scripts/fuzz.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "oci/layer.h"

namespace fs = std::filesystem;

namespace {

constexpr const char* kSentinelText = "outside the root: must never change\n";

struct World {
  fs::path dir = [] {
    char d[] = "/dev/shm/sm-layer-fuzz-XXXXXX";  // tmpfs: every input is cheap to apply and drop
    if (!::mkdtemp(d)) std::abort();
    return fs::path(d);
  }();
  fs::path sentinel = dir / "sentinel";
  World() { std::ofstream(sentinel) << kSentinelText; }
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* w = [] {
    spdlog::set_level(spdlog::level::err);
    return new World();
  }();
  const fs::path layer = w->dir / "layer", root = w->dir / "root";
  {
    std::ofstream out(layer, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  fs::create_directory(root);
  sm::oci::LayerLimits limits;
  limits.max_entries = 4096;  // keep one input cheap; the caps themselves are under test
  limits.max_total_size = 64u << 20;
  try {
    (void)sm::oci::apply_layer(root, layer, limits);
  } catch (const sm::Error&) {
  }
  fs::remove_all(root);
  fs::remove(layer);
  // Nothing escaped the root.
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(w->dir)) names.insert(e.path().filename().string());
  if (names != std::set<std::string>{"sentinel"} || slurp(w->sentinel) != kSentinelText) {
    std::fprintf(stderr, "layer_fuzz: an entry reached outside the root (%s)\n", w->dir.c_str());
    std::abort();
  }
  return 0;
}
