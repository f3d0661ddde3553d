// Subcommands register themselves: each src/cli/<name>.cc defines one static CommandRegistration,
// so commands can be added without editing main.cc. CLI sources are linked straight into the
// executable (not through the static library), so the registrations are never dropped.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace sm::cli {

// Exit codes follow Docker's conventions for the runtime's own failures.
inline constexpr int kExitRuntimeError = 125;

// setup() adds the subcommand's options to `app` and returns the action run when it is chosen.
// The action returns the process exit status.
using Action = std::function<int()>;
struct Command {
  std::string name;
  std::string description;
  std::function<Action(CLI::App& sub)> setup;
};

std::vector<Command>& commands();

struct CommandRegistration {
  explicit CommandRegistration(Command c) { commands().push_back(std::move(c)); }
};

}  // namespace sm::cli
