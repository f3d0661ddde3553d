// supermachine rmi IMAGE...: untag, then delete whatever no tag needs any more.
#include <algorithm>
#include <memory>

#include "cli/command.h"
#include "common/error.h"
#include "oci/progress.h"
#include "oci/store.h"

namespace sm::cli {
namespace {

struct RmiArgs {
  std::vector<std::string> images;
  bool force = false;
};

bool is_id_prefix(std::string s) {
  if (s.starts_with("sha256:")) s = s.substr(7);
  return s.size() >= 4 && s.size() <= 64 &&
         std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)) || (c >= 'a' && c <= 'f'); });
}

int run_rmi(const RmiArgs& a) {
  oci::Store store;
  for (auto& name : a.images) {
    std::vector<oci::Reference> victims;
    auto refs = store.list_refs();
    std::optional<oci::Reference> ref;
    try {
      ref = oci::Reference::parse(name);
    } catch (const Error&) {
      if (!is_id_prefix(name)) throw;
    }
    if (ref && std::any_of(refs.begin(), refs.end(), [&](auto& e) { return e.ref == *ref; })) {
      victims.push_back(*ref);
    } else if (is_id_prefix(name)) {
      // An image ID (config digest) or digest prefix, as `docker images` shows it.
      std::string hex = name.starts_with("sha256:") ? name.substr(7) : name;
      for (auto& e : refs) {
        std::string id;
        try {
          id = store.image(e.digest).manifest.config.digest.hex();
        } catch (const Error&) {
        }
        if (id.starts_with(hex) || e.digest.hex().starts_with(hex)) victims.push_back(e.ref);
      }
      if (victims.size() > 1 && !a.force)
        throw Error(fmt::format("image {} is tagged as {} and more; name one tag, or use --force to remove all {} tags",
                                name, victims[0].familiar(), victims.size()));
    }
    if (victims.empty()) throw Error(fmt::format("no such image: {} (see `supermachine images`)", name));
    for (auto& v : victims) {
      (void)store.remove_ref(v);
      std::printf("Untagged: %s\n", v.familiar().c_str());
    }
  }
  auto st = store.prune();
  if (st.blobs_removed || st.rootfs_removed)
    std::printf("Deleted: %zu blobs, %zu root filesystem images (%s)\n", st.blobs_removed, st.rootfs_removed,
                oci::human_size(st.bytes_freed).c_str());
  return 0;
}

CommandRegistration reg{{"rmi", "Remove images from the local store", [](CLI::App& sub) -> Action {
                           auto a = std::make_shared<RmiArgs>();
                           sub.add_option("image", a->images, "Image references or image IDs")->required();
                           sub.add_flag("-f,--force", a->force, "Remove every tag of an image named by ID");
                           return [a] { return run_rmi(*a); };
                         }}};

}  // namespace
}  // namespace sm::cli
