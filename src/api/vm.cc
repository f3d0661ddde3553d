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

#include "api/vm_impl.h"
#include "net/backend.h"
#include "common/error.h"
#include "runtime/container.h"

namespace sm {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

fs::path make_vm_dir() {
  const char* t = std::getenv("TMPDIR");
  std::string tmpl = (fs::path(t && *t ? t : "/tmp") / "sm-vm.XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) throw sys_error("cannot create a directory for the VM in " + tmpl);
  return tmpl;
}

void check_working_dir(const std::string& dir) {
  if (!dir.empty() && dir.front() != '/') throw Error(fmt::format("the working directory '{}' is not absolute", dir));
}


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
  spec.network = net::from_public(config.network);
  spec.cpus = config.cpus;
  spec.memory_mib = config.memory_mib;
  spec.disk_size_mib = config.disk_size_mib;
  spec.boot_timeout = config.boot_timeout;
  spec.image_reference = image.reference();
  spec.image_digest = image.digest();
  // The bake lives beside the image's root filesystem in the store (runtime::bake_path).
  if (config.snapshot) spec.bake = runtime::bake_path(spec.rootfs.parent_path(), spec);
  impl->dir = make_vm_dir();
  // On failure ~Impl removes the directory.
  impl->container = std::make_shared<runtime::ContainerVm>(spec, impl->dir);
  return Vm(std::move(impl));
}

Vm Vm::restore(const fs::path& snapshot, const RestoreOptions& options) {
  runtime::check_env(options.env);
  check_working_dir(options.working_dir);
  runtime::SnapshotInfo info = runtime::read_snapshot_info(snapshot);
  auto image = std::make_shared<Image::Impl>();
  image->resolved.reference = info.image_reference;
  if (!info.image_digest.empty()) image->resolved.manifest = oci::Digest::parse(info.image_digest);
  image->resolved.rootfs = info.rootfs;
  image->resolved.config = info.image;
  image->digest = info.image_digest;
  auto impl = std::make_unique<Impl>(Image(std::move(image)));
  impl->config.cpus = info.cpus;
  impl->config.memory_mib = info.memory_mib;
  impl->config.hostname = options.hostname;
  impl->config.env = options.env;
  impl->config.working_dir = options.working_dir;
  impl->config.user = options.user;
  runtime::RestoreSettings rs;
  rs.hostname = options.hostname;
  rs.timeout = options.timeout;
  if (options.network) {
    rs.network = net::from_public(*options.network);
    impl->config.network = *options.network;
  } else {
    impl->config.network.mode = info.network ? NetworkConfig::Mode::user : NetworkConfig::Mode::none;
  }
  impl->dir = make_vm_dir();
  impl->container = runtime::ContainerVm::restore(snapshot, rs, impl->dir);
  return Vm(std::move(impl));
}

fs::path Vm::snapshot(const fs::path& dir) {
  try {
    impl().vm()->snapshot(dir);
  } catch (const Error& e) {
    throw Error(fmt::format("cannot snapshot the VM into {}: {}", dir.string(), e.what()));
  }
  return dir;
}

bool Vm::restored() const {
  auto c = impl().current();
  return c && !c->restored_from().empty();
}

namespace {

net::Backend& user_network(const runtime::ContainerVm& vm) {
  net::Backend* b = vm.network();
  if (!b) throw Error("the VM has no network (it was started with network mode none)");
  return *b;
}

}  // namespace

PortMapping Vm::publish(const PortMapping& port) { return user_network(*impl().vm()).publish(port); }

bool Vm::unpublish(const PortMapping& port) { return user_network(*impl().vm()).unpublish(port); }

std::vector<PortMapping> Vm::ports() const {
  auto vm = impl().vm();
  net::Backend* b = vm->network();
  return b ? b->published() : std::vector<PortMapping>{};
}

int Vm::connect(std::uint16_t guest_port) { return impl().vm()->connect(guest_port).release(); }

NetStats Vm::net_stats() const {
  auto c = impl().current();
  if (!c) throw Error("the VM is stopped");
  net::Backend* b = c->network();
  return b ? b->stats() : NetStats{};
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
