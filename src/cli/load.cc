// supermachine load -i FILE|DIR: import a `docker save` archive or an OCI image layout.
#include <memory>

#include "cli/command.h"
#include "oci/import.h"
#include "oci/store.h"

namespace sm::cli {
namespace {

struct LoadArgs {
  std::string input;
  std::string platform;
  std::string tag;
  bool quiet = false;
};

int run_load(const LoadArgs& a) {
  oci::Store store;
  oci::LoadOptions opts;
  if (!a.platform.empty()) opts.platform = oci::Platform::parse(a.platform);
  if (!a.tag.empty()) opts.tag = oci::Reference::parse(a.tag);
  for (auto& img : oci::load_images(store, a.input, opts))
    for (auto& r : img.refs) std::printf(a.quiet ? "%s\n" : "Loaded image: %s\n", r.familiar().c_str());
  return 0;
}

CommandRegistration reg{{"load", "Load images from a `docker save` archive or an OCI image layout",
                         [](CLI::App& sub) -> Action {
                           auto a = std::make_shared<LoadArgs>();
                           sub.add_option("-i,--input", a->input,
                                          "docker save tarball (.tar, .tar.gz), OCI layout directory or tar")
                               ->required();
                           sub.add_option("-t,--tag", a->tag, "Name the loaded image (when the archive holds one)");
                           sub.add_option("--platform", a->platform,
                                          "os/arch[/variant] to check in a multi-platform layout (default: this host)");
                           sub.add_flag("-q,--quiet", a->quiet, "Print only the loaded names");
                           return [a] { return run_load(*a); };
                         }}};

}  // namespace
}  // namespace sm::cli
