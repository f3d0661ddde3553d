#include "runtime/image.h"

#include <fmt/format.h>

#include "common/error.h"
#include "oci/reference.h"
#include "oci/rootfs.h"
#include "oci/store.h"

namespace sm::runtime {

PullPolicy parse_pull_policy(std::string_view s) {
  if (s == "missing") return PullPolicy::kMissing;
  if (s == "always") return PullPolicy::kAlways;
  if (s == "never") return PullPolicy::kNever;
  throw Error(fmt::format("bad pull policy '{}': use missing, always or never", s));
}

ResolvedImage resolve_image(const std::string& reference, const ResolveOptions& o) {
  oci::Reference ref = oci::Reference::parse(reference);
  oci::Store store = o.store_root ? oci::Store(*o.store_root) : oci::Store();
  std::optional<oci::Digest> top = store.resolve(ref);
  if (o.pull == PullPolicy::kAlways || (!top && o.pull == PullPolicy::kMissing)) {
    top = oci::pull(store, ref, o.pull_options).top;
  } else if (!top) {
    throw Error(fmt::format("image {} is not in the local store ({}) and --pull=never was given; pull or load it first",
                            ref.familiar(), store.root().string()));
  }
  oci::StoredImage img = store.image(*top, o.pull_options.platform);
  oci::Rootfs fs = oci::ensure_rootfs(store, img.manifest_digest);
  return {ref.str(), img.manifest_digest, fs.image, fs.config};
}

}  // namespace sm::runtime
