// sm::Vm: a runtime::ContainerVm without a main process. The agent serves requests until a main
// process ends (docs/agent-protocol.md), so a VM that never starts one stays up, idle, until the
// host powers it off: every exec is an ordinary agent session, none of them can end the VM.
#include <unistd.h>

#include <cstdlib>

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
  fs::path dir;
  std::unique_ptr<runtime::ContainerVm> container;

  explicit Impl(Image img) : image(std::move(img)) {}
  ~Impl() { stop(); }

  void stop() noexcept {
    if (container) {
      try {
        // Nothing in the VM outlives it (the writable layer and scratch disk go with it), so
        // there is nothing for the agent to sync: end the VMM directly.
        if (!container->status()) container->stop(0);
        container->wait();
      } catch (const std::exception& e) {
        spdlog::warn("stopping the VM: {}", e.what());
      }
      container.reset();
    }
    if (!dir.empty()) {
      std::error_code ec;
      fs::remove_all(dir, ec);
      if (ec) spdlog::warn("removing {}: {}", dir.string(), ec.message());
      dir.clear();
    }
  }

  runtime::ContainerVm& vm() const {
    if (!container) throw Error("the VM is stopped");
    if (auto status = container->status())
      throw Error(fmt::format("the VM has ended (status {}); guest console:\n{}", *status, container->console_tail()));
    return *container;
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
  [[noreturn]] void rethrow(const std::vector<std::string>& argv) const {
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
      if (container && container->status())
        throw Error(fmt::format("'{}': the VM ended (status {}) during the request: {}", argv.front(),
                                *container->status(), e.what()));
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
  impl->container = std::make_unique<runtime::ContainerVm>(spec, impl->dir);
  return Vm(std::move(impl));
}

ExecResult Vm::exec(const std::vector<std::string>& argv, const ExecOptions& options) {
  Impl& i = impl();
  agent::ExecRequest req = i.request(argv, options);
  try {
    agent::ExecResult r = i.vm().client().exec(std::move(req), options.stdin_data);
    ExecResult out;
    static_cast<ExecStatus&>(out) = status_of(r.status, r.duration);
    out.out = std::move(r.out);
    out.err = std::move(r.err);
    return out;
  } catch (...) {
    i.rethrow(argv);
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
  try {
    auto start = Clock::now();
    agent::ExecSession session = i.vm().client().start(req);
    agent::ExitStatus s = session.wait(std::move(sio));
    return status_of(s, Clock::now() - start);
  } catch (...) {
    i.rethrow(argv);
  }
}

void Vm::write_file(const std::string& path, std::string_view data, std::uint32_t mode) {
  if (path.empty() || path.front() != '/') throw Error(fmt::format("write_file: '{}' is not an absolute path", path));
  try {
    impl().vm().client().write_file(path, data, mode, /*make_parents=*/true);
  } catch (const Error& e) {
    throw Error(fmt::format("cannot write {} in the VM: {}", path, e.what()));
  }
}

std::string Vm::read_file(const std::string& path) {
  if (path.empty() || path.front() != '/') throw Error(fmt::format("read_file: '{}' is not an absolute path", path));
  try {
    return impl().vm().client().read_file(path);
  } catch (const Error& e) {
    throw Error(fmt::format("cannot read {} in the VM: {}", path, e.what()));
  }
}

void Vm::stop() {
  if (impl_) impl_->stop();
}

bool Vm::running() const { return impl_ && impl_->container && !impl_->container->status(); }

const fs::path& Vm::dir() const { return impl().dir; }

std::string Vm::console_tail(std::size_t max_bytes) const {
  Impl& i = impl();
  return i.container ? i.container->console_tail(max_bytes) : std::string();
}

}  // namespace sm
