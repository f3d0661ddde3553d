// supermachine run [OPTIONS] IMAGE [COMMAND [ARG...]]: Docker's `run`, each container in its own
// microVM. The VM runs inside this process (or, with -d, inside a background process forked
// from it), which supervises it: it streams the main process's stdio, forwards signals, records
// the exit status for `ps`, and removes everything with --rm.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>

#include <spdlog/spdlog.h>

#include "cli/attach.h"
#include "cli/command.h"
#include "cli/control.h"
#include "common/error.h"
#include "common/unique_fd.h"
#include "oci/progress.h"
#include "runtime/container.h"
#include "runtime/image.h"
#include "runtime/net_options.h"
#include "runtime/options.h"
#include "net/backend.h"
#include "runtime/state.h"

namespace sm::cli {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct RunArgs {
  std::string image;
  std::vector<std::string> command;
  bool rm = false;
  bool detach = false;
  bool interactive = false;
  bool tty = false;
  std::vector<std::string> env;
  std::vector<std::string> env_files;
  std::string workdir;
  bool workdir_set = false;
  std::string user;
  bool user_set = false;
  std::string entrypoint;
  bool entrypoint_set = false;
  std::string cpus = "1";
  std::string memory;
  std::string disk_size;
  std::string name;
  std::string hostname;
  std::string pull = "missing";
  bool quiet = false;
  bool no_snapshot = false;
  std::string restore_from;  // `restore DIR`: a clone of this snapshot instead of a new VM
  // Network (docs/networking.md).
  std::vector<std::string> publish;
  std::string network;  // empty: user (run), the snapshot's (restore)
  std::vector<std::string> dns;
  std::vector<std::string> add_host;
  std::string egress = "allow";
  std::vector<std::string> allow;
  std::vector<std::string> deny;
  bool allow_host_loopback = false;
};

net::NetworkConfig network_config(const RunArgs& a, bool snapshot_has_network) {
  net::NetworkConfig n;
  if (a.network.empty()) n.mode = snapshot_has_network ? net::Mode::user : net::Mode::none;
  else runtime::parse_network_mode(a.network, n);
  for (const auto& p : a.publish) n.publish.push_back(runtime::parse_publish(p));
  if (!n.publish.empty() && n.mode != net::Mode::user)
    throw Error("-p/--publish needs --network user (ports are forwarded by the user-mode NAT)");
  for (const auto& d : a.dns) {
    if (!runtime::is_ip_literal(d)) throw Error(fmt::format("bad --dns '{}': give the server's IP address", d));
    n.dns.push_back(d);
  }
  for (const auto& h : a.add_host) n.extra_hosts.push_back(runtime::parse_add_host(h, n.plan));
  n.policy.default_allow = runtime::parse_egress(a.egress);
  for (const auto& r : a.allow) n.policy.rules.push_back({true, r});
  for (const auto& r : a.deny) n.policy.rules.push_back({false, r});
  n.policy.allow_host_loopback = a.allow_host_loopback;
  return n;
}

void add_network_options(CLI::App& sub, RunArgs* a, bool restoring) {
  sub.add_option("-p,--publish", a->publish, "Publish a port: [HOST_IP:][HOST_PORT:]GUEST_PORT[/tcp|/udp]");
  sub.add_option("--network", a->network,
                 restoring ? "none, user or tap:NAME (default: user if the snapshot has a network device)"
                           : "none, user (default: NAT, no root needed) or tap:NAME");
  sub.add_option("--dns", a->dns, "The guest's DNS server (default: the host's resolvers, through the NAT)");
  sub.add_option("--add-host", a->add_host, "Add NAME:IP to the guest's /etc/hosts");
  sub.add_option("--egress", a->egress, "What the guest may reach when no rule matches: allow or deny")
      ->capture_default_str();
  sub.add_option("--allow", a->allow, "Let the guest reach this CIDR or domain (and its subdomains)");
  sub.add_option("--deny", a->deny, "Keep the guest from this CIDR or domain (refused at once)");
  sub.add_flag("--allow-host-loopback", a->allow_host_loopback,
               "Let the guest reach services on this host's 127.0.0.1 (at the gateway address, 10.0.2.2)");
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Tells the foreground `run -d` how the detached supervisor's start went: "ok\n", or
// "<exit code> <message>".
class StartReport {
 public:
  explicit StartReport(int fd) : fd_(fd) {}
  void ok() { send("ok\n"); }
  void failed(int code, const std::string& msg) { send(std::to_string(code) + " " + msg); }

 private:
  void send(const std::string& s) {
    if (fd_ < 0) return;
    write_all(fd_, s);
    ::close(fd_);
    fd_ = -1;
  }
  int fd_;
};

// Runs the container to its end in this process; returns the exit code `run` exits with.
int supervise(const RunArgs& a, runtime::ContainerSpec spec, runtime::VmRegistry& reg, runtime::VmRecord rec,
              StartReport& report) {
  SignalForwarder signals;  // before the VM's threads exist, so they inherit the blocked mask
  spec.cancel_boot = [&signals] { return signals.interrupted(); };
  auto finish = [&](int code) {
    rec.exit_code = code;
    rec.finished = unix_now();
    try {
      if (rec.auto_remove) reg.remove(rec);
      else reg.save(rec);
    } catch (const std::exception& e) {
      spdlog::warn("recording the end of VM {}: {}", rec.short_id(), e.what());
    }
    return code;
  };
  auto fail = [&](int code, const std::string& msg) {
    report.failed(code, msg);
    if (!a.detach) std::fprintf(stderr, "supermachine run: error: %s\n", msg.c_str());
    return finish(code);
  };

  agent::ExecRequest req;
  std::unique_ptr<runtime::ContainerVm> vm;
  const bool restoring = !a.restore_from.empty();
  try {
    if (!restoring || !a.command.empty()) req = runtime::main_request(spec);
    rec.env = req.env;
    rec.user = req.user;
    rec.working_dir = req.cwd;
    reg.save(rec);
    if (restoring) {
      runtime::RestoreSettings rs;
      rs.hostname = spec.hostname;
      rs.network = spec.network;
      vm = runtime::ContainerVm::restore(a.restore_from, rs, reg.dir(rec));
    } else {
      vm = std::make_unique<runtime::ContainerVm>(spec, reg.dir(rec));
    }
    if (!vm->restored_from().empty())
      spdlog::debug("restored from the {} {}", restoring ? "snapshot" : "bake", vm->restored_from().string());
    else if (vm->baked()) spdlog::debug("booted and made the bake {}", spec.bake->string());
    else spdlog::debug("booted (no bake: {})", spec.bake ? "baking failed" : "--no-snapshot or a scratch disk");
    if (net::Backend* n = vm->network()) {
      for (const auto& m : n->published()) rec.ports.push_back(runtime::format_port(m));
      reg.save(rec);
    }
  } catch (const Error& e) {
    if (int sig = signals.first_signal()) return finish(128 + sig);
    return fail(kExitRuntimeError, e.what());
  }
  // `supermachine snapshot VM DIR` reaches this process here.
  std::optional<ControlServer> control;
  try {
    control.emplace(reg.dir(rec) / "control.sock", [&vm](const fs::path& dir) { vm->snapshot(dir); });
  } catch (const Error& e) {
    spdlog::warn("snapshots of this VM will not be possible: {}", e.what());
  }

  if (restoring && a.command.empty()) {
    // The clone carries on with what it held: its main process, if the snapshot had one, still
    // ends it with its status (the agent powers the VM off); otherwise it runs until stopped.
    report.ok();
    int status = vm->wait();
    vm.reset();
    return finish(status);
  }

  req.attach_stdin = a.interactive && !a.detach;
  if (a.tty) req.tty = terminal_size();
  std::optional<agent::ExecSession> session;
  try {
    session.emplace(vm->client().start(req));
  } catch (const agent::ExecError& e) {
    vm->power_off(e.exit_code());
    return fail(e.exit_code(), e.what());
  } catch (const Error& e) {
    vm->power_off(kExitRuntimeError);
    return fail(kExitRuntimeError, e.what());
  }
  report.ok();

  runtime::OutputLogWriter log(reg.dir(rec) / "output.log");
  AttachOptions io;
  io.interactive = req.attach_stdin;
  io.tty = a.tty;
  io.terminal_output = !a.detach;
  io.log = &log;
  std::optional<int> code;
  try {
    code = attach(*session, signals, io).code;
  } catch (const Error& e) {
    // The connection broke: the VM went down under the process (stop, kill -9, a guest crash).
    spdlog::debug("main process stream ended: {}", e.what());
  }
  // The agent powers the VM off once the main process has ended; give it a moment.
  for (auto deadline = std::chrono::steady_clock::now() + 10s;
       !vm->status() && std::chrono::steady_clock::now() < deadline;)
    std::this_thread::sleep_for(10ms);
  if (!vm->status()) vm->stop(code.value_or(kExitRuntimeError));
  int vm_status = vm->wait();
  if (!code) {
    // Without the main process's own status the VM's stands in: a power-off's (137 from kill),
    // or for a reset (status 0: the guest kernel panicked, or something inside rebooted it) the
    // runtime's failure, never a success.
    code = vm_status;
    if (vm_status == 0) {
      code = kExitRuntimeError;
      if (!a.detach) {
        std::string tail = vm->console_tail(1500);
        std::fprintf(stderr,
                     "supermachine run: the VM ended before its main process reported an exit status (the guest "
                     "reset: a kernel panic or a reboot from inside)%s%s\n",
                     tail.empty() ? "" : "; the end of the guest console:\n", tail.c_str());
      }
    }
  }
  vm.reset();
  return finish(*code);
}

int start_supervised(const RunArgs& a, runtime::ContainerSpec spec, runtime::VmRegistry& reg, runtime::VmRecord rec);

int run_container(const RunArgs& a) {
  if (a.detach && a.rm && a.interactive) spdlog::debug("-i has no effect with -d");
  if (a.tty && a.interactive && !::isatty(STDIN_FILENO))
    throw Error("the input device is not a TTY: -t with -i needs a terminal on stdin (drop -t to pipe input)");

  runtime::ContainerSpec spec;
  spec.cpus = runtime::parse_cpus(a.cpus);
  if (!a.memory.empty()) spec.memory_mib = runtime::parse_size_mib(a.memory);
  if (!a.disk_size.empty()) spec.disk_size_mib = runtime::parse_size_mib(a.disk_size);
  for (const auto& f : a.env_files)
    for (auto& kv : runtime::read_env_file(f)) spec.env.push_back(std::move(kv));
  for (auto& kv : runtime::resolve_env_args(a.env)) spec.env.push_back(std::move(kv));
  if (a.workdir_set) {
    if (!a.workdir.starts_with("/")) throw Error(fmt::format("the working directory '{}' is not absolute", a.workdir));
    spec.working_dir = a.workdir;
  }
  if (a.user_set) spec.user = a.user;
  if (a.entrypoint_set) spec.entrypoint = a.entrypoint.empty() ? std::vector<std::string>{} : std::vector{a.entrypoint};
  spec.cmd = a.command;
  if (a.restore_from.empty()) spec.network = network_config(a, true);

  std::string image_name = a.image;
  if (!a.restore_from.empty()) {
    runtime::SnapshotInfo info = runtime::read_snapshot_info(a.restore_from);
    spec.rootfs = info.rootfs;
    spec.image = info.image;
    spec.image_reference = image_name = info.image_reference;
    spec.cpus = info.cpus;
    spec.memory_mib = info.memory_mib;
    spec.network = network_config(a, info.network);
    runtime::VmRegistry reg;
    std::vector<std::string> shown = a.command.empty() ? std::vector<std::string>{"(restored)"} : a.command;
    runtime::VmRecord rec = reg.create(a.name, image_name, shown, a.rm);
    spec.hostname = a.hostname.empty() ? rec.short_id() : a.hostname;
    return start_supervised(a, std::move(spec), reg, rec);
  }

  runtime::ResolveOptions ro;
  ro.pull = runtime::parse_pull_policy(a.pull);
  std::unique_ptr<oci::TerminalProgress> progress;
  if (!a.quiet) {
    progress = oci::TerminalProgress::for_stderr();
    ro.pull_options.progress = progress.get();
  }
  runtime::ResolvedImage img = runtime::resolve_image(a.image, ro);
  progress.reset();
  spec.rootfs = img.rootfs;
  spec.image = img.config;
  spec.image_reference = img.reference;
  spec.image_digest = img.manifest.to_string();
  // Fail on a missing command before anything is created.
  (void)runtime::main_request(spec);

  runtime::VmRegistry reg;
  runtime::VmRecord rec = reg.create(a.name, a.image, runtime::main_request(spec).argv, a.rm);
  spec.hostname = a.hostname.empty() ? rec.short_id() : a.hostname;
  // Restore the image's bake (or boot and make it): the rootfs directory of the store holds it.
  if (!a.no_snapshot) spec.bake = runtime::bake_path(spec.rootfs.parent_path(), spec);
  return start_supervised(a, std::move(spec), reg, rec);
}

// In this process, or (-d) in a background supervisor forked from it.
int start_supervised(const RunArgs& a, runtime::ContainerSpec spec, runtime::VmRegistry& reg, runtime::VmRecord rec) {
  if (!a.detach) {
    StartReport none(-1);
    return supervise(a, std::move(spec), reg, rec, none);
  }

  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) throw sys_error("pipe");
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) throw sys_error("fork");
  if (pid == 0) {
    // The supervisor: its own session, no terminal, its diagnostics in the VM's directory.
    ::close(pipefd[0]);
    ::setsid();
    int null = ::open("/dev/null", O_RDWR);
    int logfd = ::open((reg.dir(rec) / "supervisor.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    ::dup2(null, STDIN_FILENO);
    ::dup2(logfd >= 0 ? logfd : null, STDOUT_FILENO);
    ::dup2(logfd >= 0 ? logfd : null, STDERR_FILENO);
    if (null > 2) ::close(null);
    if (logfd > 2) ::close(logfd);
    rec.pid = ::getpid();
    rec.pid_start = runtime::process_start_time(rec.pid);
    StartReport report(pipefd[1]);
    int code = kExitRuntimeError;
    try {
      reg.save(rec);
      code = supervise(a, std::move(spec), reg, rec, report);
    } catch (const std::exception& e) {
      report.failed(kExitRuntimeError, e.what());
      std::fprintf(stderr, "supervisor: %s\n", e.what());
    }
    std::fflush(nullptr);
    ::_exit(code & 0xff);
  }
  ::close(pipefd[1]);
  UniqueFd rd(pipefd[0]);
  std::string msg;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(rd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    msg.append(buf, static_cast<size_t>(n));
  }
  if (msg == "ok\n") {
    std::printf("%s\n", rec.id.c_str());
    return 0;
  }
  if (msg.empty()) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    throw Error("the VM's supervisor process ended before the VM started; see " +
                (reg.dir(rec) / "supervisor.log").string());
  }
  auto sp = msg.find(' ');
  int code = std::atoi(msg.substr(0, sp).c_str());
  std::fprintf(stderr, "supermachine run: error: %s\n", sp == std::string::npos ? msg.c_str() : msg.c_str() + sp + 1);
  return code > 0 ? code : kExitRuntimeError;
}

const CommandRegistration kRun{{
    "run",
    "Run a command in a new container, in its own microVM",
    [](CLI::App& sub) -> Action {
      auto a = std::make_shared<RunArgs>();
      sub.set_help_flag("--help", "Print this help message and exit");  // -h is --hostname, as in Docker
      sub.add_option("image", a->image, "Image reference (pulled when not stored)")->required();
      sub.add_option("command", a->command, "Command and arguments (default: the image's Entrypoint + Cmd)");
      sub.add_flag("--rm", a->rm, "Remove the VM and its files when it ends");
      sub.add_flag("-d,--detach", a->detach, "Run in the background and print the VM id");
      sub.add_flag("-i,--interactive", a->interactive, "Stream stdin to the main process");
      sub.add_flag("-t,--tty", a->tty, "Run the main process on a pseudo-terminal");
      sub.add_option("-e,--env", a->env, "Set an environment variable (NAME=value, or NAME from this shell)");
      sub.add_option("--env-file", a->env_files, "Read environment variables from a file");
      sub.add_option("-w,--workdir", a->workdir, "Working directory inside the container")
          ->each([a](const std::string&) { a->workdir_set = true; });
      sub.add_option("-u,--user", a->user, "User: name, uid, name:group or uid:gid")
          ->each([a](const std::string&) { a->user_set = true; });
      sub.add_option("--entrypoint", a->entrypoint, "Override the image's Entrypoint (\"\" clears it)")
          ->each([a](const std::string&) { a->entrypoint_set = true; });
      sub.add_option("--cpus", a->cpus, "Number of vCPUs (fractions round up)")->capture_default_str();
      sub.add_option("-m,--memory", a->memory, "Guest memory, e.g. 512m or 2g (default 512m)");
      sub.add_option("--disk-size", a->disk_size,
                     "Give the writable layer a scratch disk this large (default: a tmpfs in guest memory)");
      sub.add_option("--name", a->name, "Name the VM (default: a generated one)");
      sub.add_option("-h,--hostname", a->hostname, "Guest hostname (default: the short VM id)");
      sub.add_option("--pull", a->pull, "Pull the image: missing, always or never")->capture_default_str();
      sub.add_flag("-q,--quiet", a->quiet, "Do not show pull progress");
      sub.add_flag("--no-snapshot", a->no_snapshot,
                   "Boot the VM instead of restoring the image's bake (and do not make one)");
      add_network_options(sub, a.get(), false);
      return [a] { return run_container(*a); };
    },
    /*command_after_positionals=*/1,
}};

const CommandRegistration kRestore{{
    "restore",
    "Start a VM from a snapshot (supermachine snapshot, or sm::Vm::snapshot), in milliseconds",
    [](CLI::App& sub) -> Action {
      auto a = std::make_shared<RunArgs>();
      sub.set_help_flag("--help", "Print this help message and exit");
      sub.add_option("snapshot", a->restore_from, "The snapshot's directory")->required()->check(CLI::ExistingDirectory);
      sub.add_option("command", a->command,
                     "A command to run as the clone's main process (default: none; the clone keeps what it held)");
      sub.add_flag("--rm", a->rm, "Remove the VM and its files when it ends");
      sub.add_flag("-d,--detach", a->detach, "Run in the background and print the VM id");
      sub.add_flag("-i,--interactive", a->interactive, "Stream stdin to the main process");
      sub.add_flag("-t,--tty", a->tty, "Run the main process on a pseudo-terminal");
      sub.add_option("-e,--env", a->env, "Set an environment variable for the command");
      sub.add_option("--name", a->name, "Name the VM (default: a generated one)");
      sub.add_option("-h,--hostname", a->hostname, "The clone's hostname (default: the short VM id)");
      add_network_options(sub, a.get(), true);
      return [a] {
        a->restore_from = fs::absolute(a->restore_from).string();
        return run_container(*a);
      };
    },
    /*command_after_positionals=*/1,
}};

}  // namespace
}  // namespace sm::cli
