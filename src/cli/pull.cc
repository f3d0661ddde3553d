// supermachine pull [--platform P] [--insecure-registry H]... IMAGE
#include <memory>

#include "cli/command.h"
#include <unistd.h>

#include "oci/registry.h"
#include "oci/rootfs.h"
#include "oci/store.h"

namespace sm::cli {
namespace {

struct PullArgs {
  std::string image;
  std::string platform;
  std::vector<std::string> insecure;
  bool quiet = false;
  bool no_rootfs = false;
};

int run_pull(const PullArgs& a) {
  oci::Reference ref = oci::Reference::parse(a.image);
  oci::Store store;
  oci::PullOptions opts;
  if (!a.platform.empty()) opts.platform = oci::Platform::parse(a.platform);
  opts.registry.insecure_registries = a.insecure;
  std::unique_ptr<oci::TerminalProgress> progress;
  if (!a.quiet) {
    progress = oci::TerminalProgress::for_stderr();
    opts.progress = progress.get();
  }
  auto r = oci::pull(store, ref, opts);
  // Unpack the layers into the read-only root filesystem image now, so the first run starts
  // at once. It needs root (layers carry ownership and device nodes).
  if (!a.no_rootfs) {
    if (::geteuid() == 0) {
      auto fs = oci::ensure_rootfs(store, r.manifest_digest);
      if (!a.quiet) std::fprintf(stderr, "Root filesystem: %s\n", fs.image.c_str());
    } else if (!a.quiet) {
      std::fprintf(stderr, "Note: not root, so the root filesystem image is built on first run\n");
    }
  }
  if (!a.quiet) {
    std::fprintf(stderr, "Digest: %s\n", r.top.to_string().c_str());
    if (r.from_cache_offline)
      std::fprintf(stderr, "Status: Using the stored image for %s (registry unreachable)\n", ref.familiar().c_str());
    else if (r.bytes_downloaded == 0)
      std::fprintf(stderr, "Status: Image is up to date for %s\n", ref.familiar().c_str());
    else
      std::fprintf(stderr, "Status: Downloaded newer image for %s\n", ref.familiar().c_str());
  }
  std::printf("%s\n", ref.str().c_str());
  return 0;
}

CommandRegistration reg{{"pull", "Pull an image from a registry into the local image store",
                         [](CLI::App& sub) -> Action {
                           auto a = std::make_shared<PullArgs>();
                           sub.add_option("image", a->image,
                                          "Image reference: alpine, alpine:3.20, localhost:5000/app@sha256:...")
                               ->required();
                           sub.add_option("--platform", a->platform,
                                          "os/arch[/variant] to take from a multi-platform image (default: this host)");
                           sub.add_option("--insecure-registry", a->insecure,
                                          "Registry host[:port] to reach over plain HTTP (repeatable; loopback "
                                          "registries always are)");
                           sub.add_flag("-q,--quiet", a->quiet, "Print only the pulled reference");
                           sub.add_flag("--no-rootfs", a->no_rootfs,
                                        "Only download; build the root filesystem image on first run");
                           return [a] { return run_pull(*a); };
                         }}};

}  // namespace
}  // namespace sm::cli
