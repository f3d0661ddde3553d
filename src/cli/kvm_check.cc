// supermachine kvm-check: exit 0 when this host's KVM can run a standard Linux guest, else say
// why and exit 1. scripts/test uses it to choose between running VM tests directly and through
// scripts/nested.
#include <cstdio>

#include "cli/command.h"
#include "common/error.h"
#include "hypervisor/hypervisor.h"

namespace sm::cli {
namespace {

const CommandRegistration kKvmCheck{{
    "kvm-check",
    "Check that this host's KVM can run a standard Linux guest (exit 0) or say why not (exit 1)",
    [](CLI::App&) -> Action {
      return [] {
        try {
          auto hv = hv::Hypervisor::open();
          auto vm = hv->create_vm();  // proves we may create VMs, not just open the device
          std::printf("ok: %s\n", hv->describe().c_str());
          return 0;
        } catch (const Error& e) {
          std::fprintf(stderr, "supermachine kvm-check: %s\n", e.what());
          return 1;
        }
      };
    },
}};

}  // namespace
}  // namespace sm::cli
