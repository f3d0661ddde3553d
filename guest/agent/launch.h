// Starting one exec'd process: fork, then in the child set up the session, terminal, stdio,
// rlimits, credentials and working directory, and exec argv[0] looked up in the request's own
// PATH (not the agent's). Failures in the child come back through a close-on-exec pipe as
// (stage, errno), so the host can tell "command not found" (127) from "cannot execute" (126).
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "agent/protocol.h"
#include "users.h"

namespace sm::agent {

struct SpawnSpec {
  std::vector<std::string> argv;
  std::vector<std::string> env;  // final environment, KEY=VALUE
  std::string cwd = "/";
  bool create_cwd = false;
  std::optional<Credentials> creds;  // nullopt: keep the agent's identity
  std::vector<std::pair<int, struct rlimit>> rlimits;
  // Child stdio: with tty_slave set, it is the terminal for all three (and the controlling tty).
  int stdin_fd = -1, stdout_fd = -1, stderr_fd = -1;
  std::string tty_slave;
};

// The pid of the started process (a new session and process group leader), or why it did not
// start (code kCommandNotFound / kCommandNotExecutable / kExecFailed).
[[nodiscard]] std::variant<pid_t, ErrorInfo> spawn(const SpawnSpec& spec);

// Docker's --ulimit names ("nofile", "nproc", ...) to RLIMIT_* values; nullopt if unknown.
[[nodiscard]] std::optional<int> rlimit_resource(std::string_view name);

// The value of KEY in a KEY=VALUE list, or nullopt.
[[nodiscard]] std::optional<std::string> env_get(const std::vector<std::string>& env, std::string_view key);

}  // namespace sm::agent
