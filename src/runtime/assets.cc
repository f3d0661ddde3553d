#include "runtime/assets.h"

#include <cstdlib>

#include "common/error.h"

namespace sm::runtime {
namespace fs = std::filesystem;

namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

fs::path pick(const char* env_name, const fs::path& fallback, const char* what) {
  fs::path p = env(env_name) ? fs::path(env(env_name)) : fallback;
  std::error_code ec;
  if (!fs::is_regular_file(p, ec))
    throw Error(fmt::format("the guest {} {} is missing{}; run scripts/setup to build it", what, p.string(),
                            env(env_name) ? fmt::format(" (from ${})", env_name) : std::string()));
  return p;
}

}  // namespace

fs::path cache_root() {
  if (const char* c = env("SM_CACHE")) return c;
  if (const char* x = env("XDG_CACHE_HOME")) return fs::path(x) / "supermachine";
  const char* home = env("HOME");
  return fs::path(home ? home : "/root") / ".cache/supermachine";
}

GuestAssets find_guest_assets() {
  GuestAssets a;
  a.kernel = pick("SM_KERNEL", cache_root() / "kernel/current/bzImage", "kernel");
  a.initrd = pick("SM_INITRD", SM_AGENT_INITRAMFS_PATH, "agent initramfs");
  return a;
}

}  // namespace sm::runtime
