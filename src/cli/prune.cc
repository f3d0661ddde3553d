// supermachine prune: delete blobs, root filesystem images and partial downloads no tag needs.
#include "cli/command.h"
#include "oci/progress.h"
#include "oci/store.h"

namespace sm::cli {
namespace {

int run_prune() {
  oci::Store store;
  auto st = store.prune();
  std::printf("Deleted %zu blobs, %zu root filesystem images, %zu partial downloads\n", st.blobs_removed,
              st.rootfs_removed, st.partials_removed);
  std::printf("Total reclaimed space: %s\n", oci::human_size(st.bytes_freed).c_str());
  return 0;
}

CommandRegistration reg{{"prune", "Delete image data that no tagged image needs", [](CLI::App&) -> Action {
                           return [] { return run_prune(); };
                         }}};

}  // namespace
}  // namespace sm::cli
