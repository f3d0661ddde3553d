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

std::vector<std::string> split_command_args(const CLI::App& sub, std::vector<std::string> args, size_t first,
                                            int positionals) {
  auto takes_value = [&](const std::string& name) {
    const CLI::Option* opt = sub.get_option_no_throw(name);
    return opt != nullptr && opt->get_expected_min() > 0;  // flags expect 0 values
  };
  int seen = 0;
  for (size_t i = first; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") return args;
    if (a.size() > 1 && a[0] == '-') {
      if (a.starts_with("--")) {
        if (a.find('=') == std::string::npos && takes_value(a)) ++i;
      } else {
        // Short options, possibly bundled ("-it", "-eK=V", "-e", "K=V").
        for (size_t c = 1; c < a.size(); ++c) {
          if (takes_value(std::string("-") + a[c])) {
            if (c + 1 == a.size()) ++i;
            break;
          }
        }
      }
      continue;
    }
    if (++seen == positionals) {
      args.insert(args.begin() + static_cast<std::ptrdiff_t>(i) + 1, "--");
      return args;
    }
  }
  return args;
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
    // One value per occurrence, as in Docker (`-e A=1 -e B=2`): a repeatable option must not
    // swallow the positional arguments after it (`run -e A=1 IMAGE`).
    for (CLI::Option* opt : sub->get_options([](const CLI::Option* o) { return !o->get_positional(); }))
      opt->allow_extra_args(false);
  }

  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].starts_with("-")) continue;  // global flags before the subcommand
    for (size_t k = 0; k < cmds.size(); ++k)
      if (cmds[k].name == args[i] && cmds[k].command_after_positionals > 0)
        args = split_command_args(*actions[k].first, std::move(args), i + 1, cmds[k].command_after_positionals);
    break;
  }

  try {
    std::reverse(args.begin(), args.end());
    app.parse(args);
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
    } catch (const ExitWith& e) {
      return e.code;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "supermachine %s: error: %s\n", sub->get_name().c_str(), e.what());
      return kExitRuntimeError;
    }
  }
  return kExitRuntimeError;
}
