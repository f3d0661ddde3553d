#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <exception>

#include "cli/command.h"
#include "supermachine_version.h"

namespace sm::cli {
std::vector<Command>& commands() {
  static std::vector<Command> all;
  return all;
}
}  // namespace sm::cli

int main(int argc, char** argv) {
  using namespace sm::cli;
  CLI::App app{"supermachine: run OCI images as hardware-isolated microVMs"};
  app.set_version_flag("--version", std::string("supermachine ") + SUPERMACHINE_VERSION);
  app.require_subcommand(1);
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "Log debug detail to stderr");

  auto& cmds = commands();
  std::sort(cmds.begin(), cmds.end(), [](const Command& a, const Command& b) { return a.name < b.name; });
  std::vector<std::pair<CLI::App*, Action>> actions;
  for (auto& c : cmds) {
    CLI::App* sub = app.add_subcommand(c.name, c.description);
    actions.emplace_back(sub, c.setup(*sub));
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    // Bad usage is the runtime's own failure, as in Docker; --help and --version are not.
    return rc == 0 ? 0 : kExitRuntimeError;
  }
  spdlog::set_level(verbose ? spdlog::level::debug : spdlog::level::warn);
  spdlog::set_pattern("supermachine: %l: %v");

  for (auto& [sub, action] : actions) {
    if (!sub->parsed()) continue;
    try {
      return action();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "supermachine %s: error: %s\n", sub->get_name().c_str(), e.what());
      return kExitRuntimeError;
    }
  }
  return kExitRuntimeError;
}
