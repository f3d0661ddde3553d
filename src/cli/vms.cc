// Managing the VMs `run` started, as Docker manages containers: ps, stop, kill, rm, logs.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>
#include <thread>

#include "cli/attach.h"
#include "cli/command.h"
#include "common/error.h"
#include "runtime/output_log.h"
#include "runtime/state.h"

namespace sm::cli {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

agent::Client client_for(const runtime::VmRegistry& reg, const runtime::VmRecord& r) {
  agent::ClientOptions o;
  o.io_timeout = 10s;
  return agent::Client(agent::Endpoint::vsock(reg.dir(r) / "vm.vsock"), o);
}

bool running(const runtime::VmRecord& r) { return runtime::VmRegistry::state(r) == runtime::VmState::kRunning; }

// Waits until the VM's supervisor has ended (it records the exit status first); false on timeout.
bool wait_ended(const runtime::VmRegistry& reg, runtime::VmRecord& r, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (!running(r)) {
      try {
        r = reg.reload(r);
      } catch (const Error&) {
        // Removed by its supervisor (--rm).
      }
      return true;
    }
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
}

// SIGTERM / "TERM" / "15" -> 15.
int parse_signal(std::string s) {
  if (!s.empty() && std::isdigit(static_cast<unsigned char>(s[0]))) {
    int n = std::atoi(s.c_str());
    if (n > 0 && n < 65) return n;
  } else {
    for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (s.starts_with("SIG")) s = s.substr(3);
    for (int n = 1; n < 32; ++n)
      if (const char* abbrev = ::sigabbrev_np(n); abbrev && s == abbrev) return n;
  }
  throw Error(fmt::format("unknown signal '{}': use a name (TERM, KILL, HUP) or a number", s));
}

std::string ago(int64_t t) {
  int64_t d = std::max<int64_t>(0, std::time(nullptr) - t);
  if (d < 60) return fmt::format("{} seconds ago", d);
  if (d < 3600) return fmt::format("{} minutes ago", d / 60);
  if (d < 86400) return fmt::format("{} hours ago", d / 3600);
  return fmt::format("{} days ago", d / 86400);
}

std::string status_text(const runtime::VmRecord& r) {
  switch (runtime::VmRegistry::state(r)) {
    case runtime::VmState::kRunning: return "Up since " + ago(r.created);
    case runtime::VmState::kExited: return fmt::format("Exited ({}) {}", *r.exit_code, ago(r.finished));
    case runtime::VmState::kCreated: return "Created";
    case runtime::VmState::kDead: return "Dead (its supervisor process is gone)";
  }
  return "?";
}

std::string command_text(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  if (s.size() > 30) s = s.substr(0, 27) + "...";
  return "\"" + s + "\"";
}

int ps(bool all, bool quiet) {
  runtime::VmRegistry reg;
  auto vms = reg.list();
  if (!quiet) std::printf("%-12s  %-28s  %-32s  %-18s  %-36s  %s\n", "VM ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES");
  for (const auto& r : vms) {
    if (!all && !running(r)) continue;
    if (quiet) {
      std::printf("%s\n", r.short_id().c_str());
      continue;
    }
    std::printf("%-12s  %-28s  %-32s  %-18s  %-36s  %s\n", r.short_id().c_str(), r.image.c_str(),
                command_text(r.command).c_str(), ago(r.created).c_str(), status_text(r).c_str(), r.name.c_str());
  }
  return 0;
}

// Stops one VM: its stop signal to the main process, then after `grace` a power-off with 137
// (SIGKILL's status); the supervisor is killed as a last resort.
void stop_one(const runtime::VmRegistry& reg, runtime::VmRecord r, std::chrono::milliseconds grace, int signo) {
  if (!running(r)) return;
  try {
    client_for(reg, r).signal_main(signo);
  } catch (const Error&) {
    // No agent or no main process: power off below.
  }
  if (wait_ended(reg, r, grace)) return;
  try {
    client_for(reg, r).power_off(128 + SIGKILL);
  } catch (const Error&) {
  }
  if (wait_ended(reg, r, 10s)) return;
  ::kill(r.pid, SIGKILL);
  wait_ended(reg, r, 5s);
}

int for_each_vm(const std::vector<std::string>& refs, const char* verb,
                const std::function<void(runtime::VmRegistry&, runtime::VmRecord&)>& fn) {
  runtime::VmRegistry reg;
  int rc = 0;
  for (const auto& ref : refs) {
    try {
      runtime::VmRecord r = reg.find(ref);
      fn(reg, r);
      std::printf("%s\n", ref.c_str());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "supermachine %s: error: %s\n", verb, e.what());
      rc = 1;
    }
  }
  return rc;
}

int logs(const std::string& ref, bool follow) {
  runtime::VmRegistry reg;
  runtime::VmRecord r = reg.find(ref);
  auto path = reg.dir(r) / "output.log";
  auto sink = [](runtime::Stream s, std::string_view d) {
    write_all(s == runtime::Stream::kStdout ? STDOUT_FILENO : STDERR_FILENO, d);
  };
  uint64_t off = runtime::read_output_log(path, 0, sink);
  while (follow && running(r)) {
    std::this_thread::sleep_for(100ms);
    off = runtime::read_output_log(path, off, sink);
  }
  if (follow) runtime::read_output_log(path, off, sink);
  return 0;
}

const CommandRegistration kPs{{"ps", "List VMs (running ones; -a for all)", [](CLI::App& sub) -> Action {
                                 auto all = std::make_shared<bool>(false);
                                 auto quiet = std::make_shared<bool>(false);
                                 sub.add_flag("-a,--all", *all, "Show all VMs, not only running ones");
                                 sub.add_flag("-q,--quiet", *quiet, "Only print VM ids");
                                 return [=] { return ps(*all, *quiet); };
                               }}};

const CommandRegistration kStop{{"stop", "Stop running VMs: the stop signal, then a power-off after a grace period",
                                 [](CLI::App& sub) -> Action {
                                   auto vms = std::make_shared<std::vector<std::string>>();
                                   auto secs = std::make_shared<unsigned>(10);
                                   auto sig = std::make_shared<std::string>("TERM");
                                   sub.add_option("vm", *vms, "VM names or ids")->required();
                                   sub.add_option("-t,--time", *secs, "Seconds to wait before killing")->capture_default_str();
                                   sub.add_option("-s,--signal", *sig, "Signal to send first")->capture_default_str();
                                   return [=] {
                                     int signo = parse_signal(*sig);
                                     return for_each_vm(*vms, "stop", [&](runtime::VmRegistry& reg, runtime::VmRecord& r) {
                                       stop_one(reg, r, std::chrono::seconds(*secs), signo);
                                     });
                                   };
                                 }}};

const CommandRegistration kKill{{"kill", "Send a signal (default KILL) to the main process of running VMs",
                                 [](CLI::App& sub) -> Action {
                                   auto vms = std::make_shared<std::vector<std::string>>();
                                   auto sig = std::make_shared<std::string>("KILL");
                                   sub.add_option("vm", *vms, "VM names or ids")->required();
                                   sub.add_option("-s,--signal", *sig, "Signal name or number")->capture_default_str();
                                   return [=] {
                                     int signo = parse_signal(*sig);
                                     return for_each_vm(*vms, "kill", [&](runtime::VmRegistry& reg, runtime::VmRecord& r) {
                                       if (!running(r)) throw Error(fmt::format("VM {} is not running", r.name));
                                       client_for(reg, r).signal_main(signo);
                                     });
                                   };
                                 }}};

const CommandRegistration kRm{{"rm", "Remove stopped VMs (-f stops running ones first)", [](CLI::App& sub) -> Action {
                                 auto vms = std::make_shared<std::vector<std::string>>();
                                 auto force = std::make_shared<bool>(false);
                                 sub.add_option("vm", *vms, "VM names or ids")->required();
                                 sub.add_flag("-f,--force", *force, "Stop a running VM (power off) and remove it");
                                 return [=] {
                                   return for_each_vm(*vms, "rm", [&](runtime::VmRegistry& reg, runtime::VmRecord& r) {
                                     if (running(r)) {
                                       if (!*force)
                                         throw Error(fmt::format("VM {} is running: stop it first or use rm -f", r.name));
                                       stop_one(reg, r, 0ms, SIGKILL);
                                     }
                                     reg.remove(r);
                                   });
                                 };
                               }}};

const CommandRegistration kLogs{{"logs", "Print the output of a VM's main process", [](CLI::App& sub) -> Action {
                                   auto vm = std::make_shared<std::string>();
                                   auto follow = std::make_shared<bool>(false);
                                   sub.add_option("vm", *vm, "VM name or id")->required();
                                   sub.add_flag("-f,--follow", *follow, "Keep printing until the VM ends");
                                   return [=] { return logs(*vm, *follow); };
                                 }}};

}  // namespace
}  // namespace sm::cli
