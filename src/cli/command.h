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

// Thrown by an action that has already said what went wrong: main() exits with `code` and prints
// nothing more.
struct ExitWith {
  int code;
};

// setup() adds the subcommand's options to `app` and returns the action run when it is chosen.
// The action returns the process exit status.
using Action = std::function<int()>;
struct Command {
  std::string name;
  std::string description;
  std::function<Action(CLI::App& sub)> setup;
  // Docker's `run IMAGE CMD...` / `exec VM CMD...`: after this many positional arguments, the
  // rest is the command, options included (`run img sh -c 'exit 7'`). 0: parse normally.
  int command_after_positionals = 0;
};

// Rewrites argv so that everything after `sub`'s first `positionals` positional arguments is
// positional: inserts "--" there. Knows which of sub's options take a value.
[[nodiscard]] std::vector<std::string> split_command_args(const CLI::App& sub, std::vector<std::string> args,
                                                          size_t first, int positionals);

std::vector<Command>& commands();

struct CommandRegistration {
  explicit CommandRegistration(Command c) { commands().push_back(std::move(c)); }
};

}  // namespace sm::cli
