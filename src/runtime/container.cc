#include "runtime/container.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/run_tool.h"
#include "common/unique_fd.h"
#include "runtime/assets.h"
#include "vmm/machine.h"

namespace sm::runtime {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// The guest-to-host vsock port the agent announces readiness on (boot option sm.notify).
constexpr uint32_t kNotifyPort = 1025;

std::string_view env_name(std::string_view kv) { return kv.substr(0, kv.find('=')); }

}  // namespace

void check_env(const std::vector<std::string>& env) {
  for (const auto& kv : env)
    if (env_name(kv).empty() || kv.find('=') == std::string::npos)
      throw Error(fmt::format("bad environment entry '{}': expected NAME=value", kv));
}

std::vector<std::string> merge_env(std::vector<std::string> base, const std::vector<std::string>& over) {
  for (const auto& kv : over) {
    bool replaced = false;
    for (auto& b : base) {
      if (env_name(b) == env_name(kv)) {
        b = kv;
        replaced = true;
      }
    }
    if (!replaced) base.push_back(kv);
  }
  return base;
}

agent::ExecRequest main_request(const ContainerSpec& spec) {
  agent::ExecRequest r;
  if (spec.entrypoint) {
    r.argv = *spec.entrypoint;
    r.argv.insert(r.argv.end(), spec.cmd.begin(), spec.cmd.end());
  } else {
    r.argv = spec.image.entrypoint;
    const auto& cmd = spec.cmd.empty() ? spec.image.cmd : spec.cmd;
    r.argv.insert(r.argv.end(), cmd.begin(), cmd.end());
  }
  if (r.argv.empty())
    throw Error("no command to run: the image has no Entrypoint or Cmd; give one after the image name");
  check_env(spec.env);
  r.env = merge_env(spec.image.env, spec.env);
  r.cwd = spec.working_dir.value_or(spec.image.working_dir);
  // Docker creates the working directory when it is missing, from the image or from -w.
  r.create_cwd = !r.cwd.empty();
  r.user = spec.user.value_or(spec.image.user);
  r.rlimits = spec.rlimits;
  r.main = true;
  return r;
}

ContainerVm::ContainerVm(const ContainerSpec& spec, fs::path dir)
    : dir_(std::move(dir)), vsock_(dir_ / "vm.vsock"), console_path_(dir_ / "console.log") {
  GuestAssets assets = find_guest_assets();
  for (char c : spec.hostname)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_')
      throw Error(fmt::format("bad hostname '{}': use letters, digits, '-', '_' and '.'", spec.hostname));

  vmm::MachineConfig cfg;
  cfg.kernel = assets.kernel;
  cfg.initrd = assets.initrd;
  cfg.cpus = spec.cpus;
  cfg.memory_mib = spec.memory_mib;
  cfg.disks.push_back({spec.rootfs, true});
  std::string cmdline = fmt::format("quiet sm.hostname={} sm.notify={}", spec.hostname, kNotifyPort);
  if (spec.disk_size_mib > 0) {
    scratch_ = dir_ / "scratch.ext4";
    {
      UniqueFd fd(::open(scratch_->c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
      if (!fd || ::ftruncate(fd.get(), static_cast<off_t>(spec.disk_size_mib << 20)) != 0)
        throw sys_error("cannot create the scratch disk " + scratch_->string());
    }
    run_tool({"mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard", scratch_->string()}, dir_ / "mke2fs.log",
             "install e2fsprogs (scripts/setup does)");
    fs::remove(dir_ / "mke2fs.log");
    cfg.disks.push_back({*scratch_, false});
    cmdline += " sm.scratch=/dev/vdb";
  }
  cfg.cmdline_extra = cmdline;
  cfg.vsock_uds = vsock_;

  auto console = std::make_shared<UniqueFd>(
      ::open(console_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!*console) throw sys_error("cannot create " + console_path_.string());
  cfg.console = [console](std::span<const std::byte> bytes) {
    // Best effort: a full disk must not stop the VM.
    [[maybe_unused]] ssize_t n = ::write(console->get(), bytes.data(), bytes.size());
  };

  agent::ReadyListener ready(vsock_.string() + "_" + std::to_string(kNotifyPort));
  machine_ = std::make_unique<vmm::Machine>(std::move(cfg));
  machine_->start();
  try {
    hello_ = ready.wait(Clock::now() + spec.boot_timeout, [&] {
      return machine_->status().has_value() || (spec.cancel_boot && spec.cancel_boot());
    });
  } catch (const Error& e) {
    machine_->stop(vmm::Machine::kStatusError, "the agent did not come up");
    int status = machine_->wait();
    std::string tail = console_tail();
    throw Error(fmt::format("the VM did not start: {} (VM status {}){}", e.what(), status,
                            tail.empty() ? std::string() : "; guest console:\n" + tail));
  }
}

ContainerVm::~ContainerVm() {
  if (machine_) {
    try {
      if (!final_status_) {
        machine_->stop(vmm::Machine::kStatusError, "the container VM was destroyed while running");
        machine_->wait();
      }
    } catch (const std::exception& e) {
      spdlog::warn("stopping the VM: {}", e.what());
    }
    machine_.reset();
  }
  std::error_code ec;
  fs::remove(vsock_, ec);
  fs::remove(vsock_.string() + "_" + std::to_string(kNotifyPort), ec);
  if (scratch_) fs::remove(*scratch_, ec);
}

agent::Client ContainerVm::client(agent::ClientOptions options) const {
  return agent::Client(agent::Endpoint::vsock(vsock_), options);
}

int ContainerVm::wait() {
  if (!final_status_) final_status_ = machine_->wait();
  return *final_status_;
}

void ContainerVm::stop(int status) { machine_->stop(status, "stopped by the host"); }

int ContainerVm::power_off(int status) {
  if (!machine_->status()) {
    try {
      agent::ClientOptions o;
      o.io_timeout = std::chrono::seconds(5);
      client(o).power_off(status);
    } catch (const Error& e) {
      spdlog::debug("power off through the agent failed ({}); stopping the VM", e.what());
      stop(status);
    }
  }
  return wait();
}

std::optional<int> ContainerVm::status() const { return machine_->status(); }

std::string ContainerVm::console_tail(size_t max_bytes) const {
  std::ifstream in(console_path_, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.size() > max_bytes) text = "..." + text.substr(text.size() - max_bytes);
  return text;
}

}  // namespace sm::runtime
