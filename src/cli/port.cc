// supermachine port VM [GUEST_PORT[/PROTO]]: the VM's published ports, as `docker port` lists them.
#include <cstdio>
#include <memory>

#include "cli/command.h"
#include "common/error.h"
#include "runtime/state.h"

namespace sm::cli {
namespace {

int port(const std::string& ref, const std::string& filter) {
  runtime::VmRegistry reg;
  runtime::VmRecord r = reg.find(ref);
  if (runtime::VmRegistry::state(r) != runtime::VmState::kRunning)
    throw Error(fmt::format("VM {} is not running", ref));
  // "80" matches "80/tcp"; "80/udp" only itself.
  std::string want = filter.empty() || filter.find('/') != std::string::npos ? filter : filter + "/tcp";
  bool any = false;
  for (const auto& line : r.ports) {
    if (!want.empty() && !line.starts_with(want + " ")) continue;
    std::printf("%s\n", line.c_str());
    any = true;
  }
  if (!want.empty() && !any) throw Error(fmt::format("no public port '{}' published for {}", filter, ref));
  return 0;
}

const CommandRegistration kPort{{"port", "List a VM's published ports (HOST_IP:HOST_PORT for each guest port)",
                                 [](CLI::App& sub) -> Action {
                                   auto vm = std::make_shared<std::string>();
                                   auto filter = std::make_shared<std::string>();
                                   sub.add_option("vm", *vm, "VM name or id")->required();
                                   sub.add_option("port", *filter, "Only this guest port (PORT or PORT/udp)");
                                   return [=] { return port(*vm, *filter); };
                                 }}};

}  // namespace
}  // namespace sm::cli
