// supermachine snapshot VM DIR: capture a running VM (through its supervisor's control socket);
// supermachine bake IMAGE: make an image's bake ahead of its first run.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include <spdlog/spdlog.h>

#include "cli/command.h"
#include "cli/control.h"
#include "common/error.h"
#include "oci/progress.h"
#include "runtime/container.h"
#include "runtime/image.h"
#include "runtime/options.h"
#include "runtime/state.h"

namespace sm::cli {
namespace {

namespace fs = std::filesystem;

int snapshot_vm(const std::string& vm, const std::string& dir) {
  runtime::VmRegistry reg;
  runtime::VmRecord r = reg.find(vm);
  if (runtime::VmRegistry::state(r) != runtime::VmState::kRunning)
    throw Error(fmt::format("VM {} is not running", vm));
  fs::path target = fs::absolute(dir);
  control_snapshot(reg.dir(r) / "control.sock", target);
  std::printf("%s\n", target.c_str());
  return 0;
}

int bake_image(const std::string& image, const std::string& cpus, const std::string& memory, bool quiet) {
  runtime::ContainerSpec spec;
  spec.cpus = runtime::parse_cpus(cpus);
  if (!memory.empty()) spec.memory_mib = runtime::parse_size_mib(memory);
  runtime::ResolveOptions ro;
  std::unique_ptr<oci::TerminalProgress> progress;
  if (!quiet) {
    progress = oci::TerminalProgress::for_stderr();
    ro.pull_options.progress = progress.get();
  }
  runtime::ResolvedImage img = runtime::resolve_image(image, ro);
  progress.reset();
  spec.rootfs = img.rootfs;
  spec.image = img.config;
  spec.image_reference = img.reference;
  spec.image_digest = img.manifest.to_string();
  spec.bake = runtime::bake_path(spec.rootfs.parent_path(), spec);
  if (fs::exists(*spec.bake / "state")) {
    std::printf("%s\n", spec.bake->c_str());
    return 0;
  }
  fs::path dir = runtime::VmRegistry().root() / fmt::format("bake-{}", ::getpid());
  fs::create_directories(dir);
  int rc = 0;
  {
    runtime::ContainerVm vm(spec, dir);
    if (!vm.baked() && !fs::exists(*spec.bake / "state")) {
      std::fprintf(stderr, "supermachine bake: error: the VM booted but its bake could not be made (run with -v)\n");
      rc = kExitRuntimeError;
    }
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (rc == 0) std::printf("%s\n", spec.bake->c_str());
  return rc;
}

const CommandRegistration kSnapshot{{"snapshot", "Capture a running VM into a directory it can be restored from",
                                     [](CLI::App& sub) -> Action {
                                       auto vm = std::make_shared<std::string>();
                                       auto dir = std::make_shared<std::string>();
                                       sub.add_option("vm", *vm, "VM name or id")->required();
                                       sub.add_option("dir", *dir, "Where to write the snapshot (must not hold one)")
                                           ->required();
                                       return [vm, dir] { return snapshot_vm(*vm, *dir); };
                                     }}};

const CommandRegistration kBake{{"bake",
                                 "Boot an image once and capture it, so its runs restore in milliseconds",
                                 [](CLI::App& sub) -> Action {
                                   auto image = std::make_shared<std::string>();
                                   auto cpus = std::make_shared<std::string>("1");
                                   auto memory = std::make_shared<std::string>();
                                   auto quiet = std::make_shared<bool>(false);
                                   sub.add_option("image", *image, "Image reference (pulled when not stored)")->required();
                                   sub.add_option("--cpus", *cpus, "vCPUs the runs will use")->capture_default_str();
                                   sub.add_option("-m,--memory", *memory, "Memory the runs will use (default 512m)");
                                   sub.add_flag("-q,--quiet", *quiet, "Do not show pull progress");
                                   return [=] { return bake_image(*image, *cpus, *memory, *quiet); };
                                 }}};

}  // namespace
}  // namespace sm::cli
