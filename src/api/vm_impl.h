// What an sm::Vm holds (shared by vm.cc and pool.cc; not part of the public API).
#pragma once

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "api/image_impl.h"
#include "runtime/container.h"
#include "supermachine/supermachine.h"

namespace sm {

// A private directory for a VM's sockets and console, under $TMPDIR (else /tmp).
[[nodiscard]] std::filesystem::path make_vm_dir();
void check_working_dir(const std::string& dir);

struct Vm::Impl {
  Image image;
  VmConfig config;
  // A request holds its own reference to the container for its whole length, so stop() on
  // another thread can take it from here at any time: the machine ends, its vsock connections
  // close, and the request fails with "the VM ended".
  mutable std::mutex mu;  // guards container and dir
  std::shared_ptr<runtime::ContainerVm> container;
  std::filesystem::path dir;
  // Held while the VM lives: a pool counts the VMs it handed out by these.
  std::shared_ptr<void> lease;

  explicit Impl(Image img) : image(std::move(img)) {}
  ~Impl() { stop(); }

  void stop() noexcept {
    std::shared_ptr<runtime::ContainerVm> c;
    std::filesystem::path d;
    {
      std::lock_guard lock(mu);
      c = std::exchange(container, nullptr);
      d = std::exchange(dir, std::filesystem::path());
    }
    if (c) {
      try {
        // Nothing in the VM outlives it (the writable layer and scratch disk go with it), so
        // there is nothing for the agent to sync: end the VMM directly.
        if (!c->status()) c->stop(0);
        c->wait();
      } catch (const std::exception& e) {
        spdlog::warn("stopping the VM: {}", e.what());
      }
    }
    c.reset();  // the last request still running on it destroys it otherwise
    lease.reset();
    if (!d.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
      if (ec) spdlog::warn("removing {}: {}", d.string(), ec.message());
    }
  }

  std::shared_ptr<runtime::ContainerVm> current() const {
    std::lock_guard lock(mu);
    return container;
  }

  std::shared_ptr<runtime::ContainerVm> vm() const {
    auto c = current();
    if (!c) throw Error("the VM is stopped");
    if (auto status = c->status())
      throw Error(fmt::format("the VM has ended (status {}); guest console:\n{}", *status, c->console_tail()));
    return c;
  }

  agent::ExecRequest request(const std::vector<std::string>& argv, const ExecOptions& o) const {
    if (argv.empty() || argv.front().empty()) throw Error("exec needs a command: argv is empty");
    runtime::check_env(o.env);
    const oci::RunConfig& ic = image.impl_->resolved.config;
    agent::ExecRequest r;
    r.argv = argv;
    r.env = runtime::merge_env(runtime::merge_env(ic.env, config.env), o.env);
    if (!o.working_dir.empty()) {
      r.cwd = o.working_dir;
    } else {
      // The VM's default working directory is created when missing, as Docker does for an
      // image's WorkingDir; one given for a single exec must exist.
      r.cwd = config.working_dir.empty() ? ic.working_dir : config.working_dir;
      r.create_cwd = !r.cwd.empty();
    }
    check_working_dir(r.cwd);
    r.user = !o.user.empty() ? o.user : !config.user.empty() ? config.user : ic.user;
    r.timeout = o.timeout;
    return r;
  }

  // An agent refusal as the public ExecError, naming the command; other errors say whether the
  // VM is still there.
  [[noreturn]] static void rethrow(const std::vector<std::string>& argv, const runtime::ContainerVm* c) {
    try {
      throw;
    } catch (const agent::ExecError& e) {
      std::string why;
      switch (e.code()) {
        case agent::ErrorCode::kCommandNotFound: why = "command not found"; break;
        case agent::ErrorCode::kCommandNotExecutable: why = "not executable"; break;
        default: why = e.agent_message(); break;
      }
      std::string detail = why == e.agent_message() || e.agent_message().empty() ? "" : " (" + e.agent_message() + ")";
      throw ExecError(fmt::format("cannot run '{}' in the VM: {}{}", argv.front(), why, detail), e.exit_code());
    } catch (const Error& e) {
      if (auto status = c ? c->status() : std::nullopt)
        throw Error(fmt::format("'{}': the VM ended (status {}) during the request: {}", argv.front(), *status,
                                e.what()));
      throw;
    }
  }
};


}  // namespace sm
