// sm::Vm: a runtime::ContainerVm without a main process. The agent serves requests until a main
// process ends (docs/agent-protocol.md), so a VM that never starts one stays up, idle, until the
// host powers it off: every exec is an ordinary agent session, none of them can end the VM.
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "api/image_impl.h"
#include "common/error.h"
#include "runtime/container.h"

namespace sm {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// A private directory for the VM's sockets and console, under $TMPDIR (else /tmp).
fs::path make_vm_dir() {
  const char* t = std::getenv("TMPDIR");
  std::string tmpl = (fs::path(t && *t ? t : "/tmp") / "sm-vm.XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) throw sys_error("cannot create a directory for the VM in " + tmpl);
  return tmpl;
}

void check_working_dir(const std::string& dir) {
  if (!dir.empty() && dir.front() != '/') throw Error(fmt::format("the working directory '{}' is not absolute", dir));
}

}  // namespace

struct Vm::Impl {
  Image image;
  VmConfig config;
  // A request holds its own reference to the container for its whole length, so stop() on
  // another thread can take it from here at any time: the machine ends, its vsock connections
  // close, and the request fails with "the VM ended".
  mutable std::mutex mu;  // guards container and dir
  std::shared_ptr<runtime::ContainerVm> container;
  fs::path dir;

  explicit Impl(Image img) : image(std::move(img)) {}
  ~Impl() { stop(); }

  void stop() noexcept {
    std::shared_ptr<runtime::ContainerVm> c;
    fs::path d;
    {
      std::lock_guard lock(mu);
      c = std::exchange(container, nullptr);
      d = std::exchange(dir, fs::path());
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
    if (!d.empty()) {
      std::error_code ec;
      fs::remove_all(d, ec);
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

namespace {

ExecStatus status_of(const agent::ExitStatus& s, Clock::duration d) {
  ExecStatus r;
  r.exit_code = s.code;
  if (s.signal) r.signal = s.signal;
  r.timed_out = s.timed_out;
  r.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(d);
  return r;
}

}  // namespace

Vm::Vm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Vm::Vm(Vm&&) noexcept = default;
Vm& Vm::operator=(Vm&&) noexcept = default;
Vm::~Vm() = default;

Vm::Impl& Vm::impl() const {
  if (!impl_) throw Error("this sm::Vm was moved from");
  return *impl_;
}

Vm Vm::start(const Image& image, const VmConfig& config) {
  runtime::check_env(config.env);
  check_working_dir(config.working_dir);
  auto impl = std::make_unique<Impl>(image);
  impl->config = config;
  runtime::ContainerSpec spec;
  spec.rootfs = image.impl_->resolved.rootfs;
  spec.image = image.impl_->resolved.config;
  spec.hostname = config.hostname;
  spec.cpus = config.cpus;
  spec.memory_mib = config.memory_mib;
  spec.disk_size_mib = config.disk_size_mib;
  spec.boot_timeout = config.boot_timeout;
  impl->dir = make_vm_dir();
  // On failure ~Impl removes the directory.
  impl->container = std::make_shared<runtime::ContainerVm>(spec, impl->dir);
  return Vm(std::move(impl));
}

ExecResult Vm::exec(const std::vector<std::string>& argv, const ExecOptions& options) {
  Impl& i = impl();
  agent::ExecRequest req = i.request(argv, options);
  std::shared_ptr<runtime::ContainerVm> vm;
  try {
    vm = i.vm();
    agent::ExecResult r = vm->client().exec(std::move(req), options.stdin_data);
    ExecResult out;
    static_cast<ExecStatus&>(out) = status_of(r.status, r.duration);
    out.out = std::move(r.out);
    out.err = std::move(r.err);
    return out;
  } catch (...) {
    Impl::rethrow(argv, vm.get());
  }
}

ExecStatus Vm::exec_stream(const std::vector<std::string>& argv, const ExecStream& io, const ExecOptions& options) {
  Impl& i = impl();
  agent::ExecRequest req = i.request(argv, options);
  req.attach_stdin = io.stdin_fd >= 0 || io.stdin_source;
  agent::StreamIo sio;
  sio.stdin_fd = io.stdin_fd;
  sio.stdin_source = io.stdin_source;
  sio.on_stdout = io.on_stdout;
  sio.on_stderr = io.on_stderr;
  std::shared_ptr<runtime::ContainerVm> vm;
  try {
    auto start = Clock::now();
    vm = i.vm();
    agent::ExecSession session = vm->client().start(req);
    agent::ExitStatus s = session.wait(std::move(sio));
    return status_of(s, Clock::now() - start);
  } catch (...) {
    Impl::rethrow(argv, vm.get());
  }
}

void Vm::write_file(const std::string& path, std::string_view data, std::uint32_t mode) {
  if (path.empty() || path.front() != '/') throw Error(fmt::format("write_file: '{}' is not an absolute path", path));
  try {
    impl().vm()->client().write_file(path, data, mode, /*make_parents=*/true);
  } catch (const Error& e) {
    throw Error(fmt::format("cannot write {} in the VM: {}", path, e.what()));
  }
}

std::string Vm::read_file(const std::string& path) {
  if (path.empty() || path.front() != '/') throw Error(fmt::format("read_file: '{}' is not an absolute path", path));
  try {
    return impl().vm()->client().read_file(path);
  } catch (const Error& e) {
    throw Error(fmt::format("cannot read {} in the VM: {}", path, e.what()));
  }
}

void Vm::stop() {
  if (impl_) impl_->stop();
}

bool Vm::running() const {
  auto c = impl_ ? impl_->current() : nullptr;
  return c && !c->status();
}

const fs::path& Vm::dir() const { return impl().dir; }

std::string Vm::console_tail(std::size_t max_bytes) const {
  auto c = impl().current();
  return c ? c->console_tail(max_bytes) : std::string();
}

}  // namespace sm
