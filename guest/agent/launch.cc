#include "launch.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/close_range.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "log.h"

namespace sm::agent {

namespace {

constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// Where in the child set-up a failure happened; reported with errno through the pipe.
enum Stage : int { kStageSession = 1, kStageStdio, kStageRlimit, kStageCwdCreate, kStageCreds, kStageCwd, kStageExec };

struct ChildFailure {
  int stage;
  int err;
};

// Runs in the child between fork and exec: only async-signal-safe calls, no allocation (all
// strings were prepared by the parent).
[[noreturn]] void child_fail(int pipe_fd, int stage, int err) {
  ChildFailure f{stage, err};
  ssize_t r = ::write(pipe_fd, &f, sizeof f);
  (void)r;
  ::_exit(127);
}

int mkdir_p(char* path) {
  // `path` is a writable copy; walk its components creating each one.
  for (char* p = path + 1; *p; ++p) {
    if (*p != '/') continue;
    *p = '\0';
    if (::mkdir(path, 0755) != 0 && errno != EEXIST) return errno;
    *p = '/';
  }
  if (::mkdir(path, 0755) != 0 && errno != EEXIST) return errno;
  return 0;
}

std::string stage_message(const SpawnSpec& spec, int stage, int err) {
  const std::string& cmd = spec.argv[0];
  switch (stage) {
    case kStageExec:
      if (err == ENOENT) {
        if (cmd.find('/') == std::string::npos)
          return "exec: \"" + cmd + "\": executable file not found in $PATH";
        return "exec: \"" + cmd + "\": no such file or directory";
      }
      return "exec: \"" + cmd + "\": " + std::strerror(err);
    case kStageCwd:
      return "chdir to working directory \"" + spec.cwd + "\" failed: " + std::strerror(err);
    case kStageCwdCreate:
      return "mkdir of cwd \"" + spec.cwd + "\" failed: " + std::strerror(err);
    case kStageCreds:
      return "setting user/groups failed: " + std::string(std::strerror(err));
    case kStageRlimit:
      return "setting rlimits failed: " + std::string(std::strerror(err));
    case kStageStdio:
      return "setting up stdio/terminal failed: " + std::string(std::strerror(err));
    default:
      return "starting the process failed: " + std::string(std::strerror(err));
  }
}

}  // namespace

std::optional<std::string> env_get(const std::vector<std::string>& env, std::string_view key) {
  for (const auto& e : env)
    if (e.size() > key.size() && e.compare(0, key.size(), key) == 0 && e[key.size()] == '=')
      return e.substr(key.size() + 1);
  return std::nullopt;
}

std::optional<int> rlimit_resource(std::string_view name) {
  static constexpr std::array<std::pair<std::string_view, int>, 16> kNames{{
      {"as", RLIMIT_AS},         {"core", RLIMIT_CORE},       {"cpu", RLIMIT_CPU},
      {"data", RLIMIT_DATA},     {"fsize", RLIMIT_FSIZE},     {"locks", RLIMIT_LOCKS},
      {"memlock", RLIMIT_MEMLOCK}, {"msgqueue", RLIMIT_MSGQUEUE}, {"nice", RLIMIT_NICE},
      {"nofile", RLIMIT_NOFILE}, {"nproc", RLIMIT_NPROC},     {"rss", RLIMIT_RSS},
      {"rtprio", RLIMIT_RTPRIO}, {"rttime", RLIMIT_RTTIME},   {"sigpending", RLIMIT_SIGPENDING},
      {"stack", RLIMIT_STACK},
  }};
  for (const auto& [n, r] : kNames)
    if (n == name) return r;
  return std::nullopt;
}

std::variant<pid_t, ErrorInfo> spawn(const SpawnSpec& spec) {
  if (spec.argv.empty()) return ErrorInfo{ErrorCode::kBadRequest, "empty argv"};

  // Everything the child needs is prepared here, before fork.
  std::vector<char*> argv;
  for (const auto& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : spec.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  // Candidate paths for argv[0], in PATH order (execvpe semantics, but with the request's PATH).
  std::vector<std::string> candidates;
  const std::string& file = spec.argv[0];
  if (file.find('/') != std::string::npos) {
    candidates.push_back(file);
  } else {
    std::string path = env_get(spec.env, "PATH").value_or(kDefaultPath);
    size_t start = 0;
    for (;;) {
      size_t colon = path.find(':', start);
      std::string dir = path.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
      if (dir.empty()) dir = ".";
      candidates.push_back(dir + "/" + file);
      if (colon == std::string::npos) break;
      start = colon + 1;
    }
  }
  std::vector<const char*> cand_ptrs;
  for (const auto& c : candidates) cand_ptrs.push_back(c.c_str());
  std::string cwd = spec.cwd.empty() ? "/" : spec.cwd;
  std::string cwd_copy = cwd;  // mkdir_p writes into it
  std::vector<gid_t> groups;
  if (spec.creds)
    for (uint32_t g : spec.creds->groups) groups.push_back(g);

  int err_pipe[2];
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) return ErrorInfo{ErrorCode::kInternal, std::string("pipe2: ") + std::strerror(errno)};

  pid_t pid = ::fork();
  if (pid < 0) {
    int e = errno;
    ::close(err_pipe[0]);
    ::close(err_pipe[1]);
    return ErrorInfo{ErrorCode::kExecFailed, std::string("fork: ") + std::strerror(e)};
  }
  if (pid == 0) {
    int wfd = err_pipe[1];
    // The agent blocks signals for its signalfd and ignores SIGPIPE; a workload starts clean.
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    for (int s = 1; s < NSIG; ++s)
      if (s != SIGKILL && s != SIGSTOP) ::signal(s, SIG_DFL);
    if (::setsid() < 0) child_fail(wfd, kStageSession, errno);

    if (!spec.tty_slave.empty()) {
      // Opened by a session leader without a controlling terminal, it becomes the ctty.
      int t = ::open(spec.tty_slave.c_str(), O_RDWR);
      if (t < 0) child_fail(wfd, kStageStdio, errno);
      if (::ioctl(t, TIOCSCTTY, 0) != 0) child_fail(wfd, kStageStdio, errno);
      for (int fd = 0; fd < 3; ++fd)
        if (::dup2(t, fd) < 0) child_fail(wfd, kStageStdio, errno);
      if (t > 2) ::close(t);
    } else {
      // dup2 clears FD_CLOEXEC on the targets; the originals are close-on-exec.
      if (::dup2(spec.stdin_fd, 0) < 0 || ::dup2(spec.stdout_fd, 1) < 0 || ::dup2(spec.stderr_fd, 2) < 0)
        child_fail(wfd, kStageStdio, errno);
    }

    // Descriptors the agent itself inherited without close-on-exec (in --no-init mode, from
    // whoever started it) must not reach the workload either.
    if (::close_range(3, ~0u, CLOSE_RANGE_CLOEXEC) != 0)
      for (int fd = 3; fd < 4096; ++fd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);

    for (const auto& [res, lim] : spec.rlimits)
      if (::setrlimit(res, &lim) != 0) child_fail(wfd, kStageRlimit, errno);
    ::umask(022);
    if (spec.create_cwd) {
      if (int e = mkdir_p(cwd_copy.data())) child_fail(wfd, kStageCwdCreate, e);
    }
    // The working directory as runc enters it: first with the agent's rights (so `-u 1000` in
    // an image whose WorkingDir is root's 0700 /root still starts there, as in Docker), and
    // only when that is refused, again as the workload's user.
    bool in_cwd = ::chdir(cwd.c_str()) == 0;
    if (!in_cwd && errno != EACCES && errno != EPERM) child_fail(wfd, kStageCwd, errno);
    if (spec.creds) {
      if (::setgroups(groups.size(), groups.data()) != 0) child_fail(wfd, kStageCreds, errno);
      if (::setgid(spec.creds->gid) != 0) child_fail(wfd, kStageCreds, errno);
      if (::setuid(spec.creds->uid) != 0) child_fail(wfd, kStageCreds, errno);
    }
    if (!in_cwd && ::chdir(cwd.c_str()) != 0) child_fail(wfd, kStageCwd, errno);

    bool saw_eacces = false;
    int last = ENOENT;
    for (const char* c : cand_ptrs) {
      ::execve(c, argv.data(), envp.data());
      last = errno;
      if (last == EACCES) {
        saw_eacces = true;
        continue;
      }
      if (last == ENOENT || last == ENOTDIR || last == ESTALE || last == ENODEV || last == ETIMEDOUT) continue;
      break;  // found but not runnable (ENOEXEC, E2BIG, ...): stop, as execvp does
    }
    if (saw_eacces && (last == ENOENT || last == ENOTDIR)) last = EACCES;
    child_fail(wfd, kStageExec, last);
  }

  ::close(err_pipe[1]);
  ChildFailure f{};
  ssize_t n;
  do {
    n = ::read(err_pipe[0], &f, sizeof f);
  } while (n < 0 && errno == EINTR);
  ::close(err_pipe[0]);
  if (n == 0) return pid;  // the pipe closed on a successful exec

  // The child failed before exec and is exiting; reap it here so the caller never sees it.
  int st;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (n != static_cast<ssize_t>(sizeof f)) return ErrorInfo{ErrorCode::kInternal, "short read from the exec status pipe"};
  ErrorCode code = ErrorCode::kExecFailed;
  if (f.stage == kStageExec) code = f.err == ENOENT || f.err == ENOTDIR ? ErrorCode::kCommandNotFound : ErrorCode::kCommandNotExecutable;
  return ErrorInfo{code, stage_message(spec, f.stage, f.err)};
}

}  // namespace sm::agent
