// supermachine exec [OPTIONS] VM COMMAND [ARG...]: run another process in a running VM, beside
// its main process, with the main process's environment, user and working directory unless
// overridden (Docker's `exec`).
#include <unistd.h>

#include <cstdio>
#include <memory>

#include "cli/attach.h"
#include "cli/command.h"
#include "common/error.h"
#include "runtime/container.h"
#include "runtime/options.h"
#include "runtime/state.h"

namespace sm::cli {
namespace {

struct ExecArgs {
  std::string vm;
  std::vector<std::string> command;
  bool interactive = false;
  bool tty = false;
  std::vector<std::string> env;
  std::vector<std::string> env_files;
  std::string workdir;
  std::string user;
  std::string timeout;
};

// Exit status when --timeout expired, as timeout(1) has it.
constexpr int kExitTimedOut = 124;

int exec_in_vm(const ExecArgs& a) {
  runtime::VmRegistry reg;
  runtime::VmRecord rec = reg.find(a.vm);
  if (runtime::VmRegistry::state(rec) != runtime::VmState::kRunning)
    throw Error(fmt::format("VM {} ({}) is not running", rec.name, rec.short_id()));
  if (a.tty && a.interactive && !::isatty(STDIN_FILENO))
    throw Error("the input device is not a TTY: -t with -i needs a terminal on stdin (drop -t to pipe input)");

  agent::ExecRequest req;
  req.argv = a.command;
  std::vector<std::string> env;
  for (const auto& f : a.env_files)
    for (auto& kv : runtime::read_env_file(f)) env.push_back(std::move(kv));
  for (auto& kv : runtime::resolve_env_args(a.env)) env.push_back(std::move(kv));
  req.env = runtime::merge_env(rec.env, env);
  req.cwd = a.workdir.empty() ? rec.working_dir : a.workdir;
  req.user = a.user.empty() ? rec.user : a.user;
  if (!a.timeout.empty()) req.timeout = runtime::parse_duration(a.timeout);
  req.attach_stdin = a.interactive;
  if (a.tty) req.tty = terminal_size();

  SignalForwarder signals;
  agent::Client client(agent::Endpoint::vsock(reg.dir(rec) / "vm.vsock"));
  agent::ExecSession session = [&] {
    try {
      return client.start(req);
    } catch (const agent::ExecError& e) {
      std::fprintf(stderr, "supermachine exec: error: %s\n", e.what());
      throw ExitWith{e.exit_code()};
    }
  }();
  AttachOptions io;
  io.interactive = req.attach_stdin;
  io.tty = a.tty;
  agent::ExitStatus st = attach(session, signals, io);
  if (st.timed_out) {
    std::fprintf(stderr, "supermachine exec: %s timed out after %s and was killed\n", a.command[0].c_str(),
                 a.timeout.c_str());
    return kExitTimedOut;
  }
  return st.code;
}

const CommandRegistration kExec{{
    "exec",
    "Run a command in a running VM",
    [](CLI::App& sub) -> Action {
      auto a = std::make_shared<ExecArgs>();
      sub.add_option("vm", a->vm, "VM name or id (prefix)")->required();
      sub.add_option("command", a->command, "Command and arguments")->required();
      sub.add_flag("-i,--interactive", a->interactive, "Stream stdin to the process");
      sub.add_flag("-t,--tty", a->tty, "Run the process on a pseudo-terminal");
      sub.add_option("-e,--env", a->env, "Set an environment variable (NAME=value, or NAME from this shell)");
      sub.add_option("--env-file", a->env_files, "Read environment variables from a file");
      sub.add_option("-w,--workdir", a->workdir, "Working directory (default: the main process's)");
      sub.add_option("-u,--user", a->user, "User: name, uid, name:group or uid:gid (default: the main process's)");
      sub.add_option("--timeout", a->timeout, "Kill the process after this long (500ms, 10s, 2m); exit 124");
      return [a] { return exec_in_vm(*a); };
    },
    /*command_after_positionals=*/1,
}};

}  // namespace
}  // namespace sm::cli
