#include "vmm/machine.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <termios.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <array>
#include <cstring>
#include <fstream>

#include "arch/x86_64/boot_cpu.h"
#include "arch/x86_64/boot_params.h"
#include "arch/x86_64/cpuid.h"
#include "arch/x86_64/kernel_loader.h"
#include "arch/x86_64/layout.h"
#include "arch/x86_64/mptable.h"
#include "common/error.h"
#include "devices/i8042.h"
#include "devices/power.h"
#include "devices/serial.h"
#include "devices/virtio/blk.h"
#include "devices/virtio/mmio.h"
#include "devices/virtio/rng.h"
#include "devices/virtio/vsock.h"
#include "devices/virtio/net.h"
#include "net/make_backend.h"
#include "common/build_id.h"

namespace sm::vmm {
namespace {

// A file mapped read-only for the time it takes to copy it into guest memory.
class MappedFile {
 public:
  MappedFile(const std::filesystem::path& path, const char* what) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) throw sys_error(fmt::format("opening {} {}", what, path.string()));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) throw sys_error(fmt::format("stat {} {}", what, path.string()));
    size_ = static_cast<size_t>(st.st_size);
    if (size_ == 0) return;
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (p == MAP_FAILED) throw sys_error(fmt::format("mapping {} {}", what, path.string()));
    data_ = static_cast<const std::byte*>(p);
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  [[nodiscard]] std::span<const std::byte> bytes() const { return {data_, size_}; }

 private:
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

template <class... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <class... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

namespace fs = std::filesystem;
using snapshot::SnapshotError;

// How long snapshot() waits for every vCPU and the I/O thread to stop.
constexpr auto kPauseTimeout = std::chrono::seconds(10);

std::vector<std::byte> encoded(const auto& state) {
  snapshot::Encoder e;
  save(e, state);
  return e.take();
}

}  // namespace

// Host console input: the fd, the TTY mode to put back, and bytes the UART had no room for.
struct Machine::ConsoleInput {
  int fd = -1;
  bool registered = false;  // the fd is in the event loop
  bool eof = false;
  std::optional<termios> saved_tty;
  std::vector<std::byte> pending;
  UniqueFd retry_timer;  // re-offers `pending` while the guest drains its FIFO
};

Machine::Machine(MachineConfig cfg) : cfg_(std::move(cfg)) {
  validate(cfg_, host_ram_bytes());
  hv_ = hv::Hypervisor::open();
  mem_.emplace(GuestMemory::create(x86::memory_layout(cfg_.memory_mib << 20)));
  build_platform();
  boot_kernel();
  mmio_bus_.freeze();
  pio_bus_.freeze();
}

// What restoring needs from the snapshot, decoded and checked before anything uses it.
struct Machine::Restore {
  const snapshot::StateFile& file;
  MachineShape shape;
  fs::path dir;
};

Machine::Machine(MachineConfig cfg, const fs::path& dir) : cfg_(std::move(cfg)) {
  validate(cfg_, host_ram_bytes());
  auto file = std::make_unique<snapshot::StateFile>(snapshot::StateFile::read(dir / "state"));
  snapshot::Decoder md(file->section("machine"), "machine");
  Restore r{*file, load_machine_shape(md), dir};
  const auto layout = x86::memory_layout(cfg_.memory_mib << 20);
  {
    // The memory check first: it says "memory differs" rather than "the file has the wrong size".
    MachineShape wanted = r.shape;
    wanted.memory.clear();
    for (const auto& region : layout) wanted.memory.emplace_back(region.gpa, region.size);
    if (auto why = shape_mismatch(r.shape, wanted))
      throw SnapshotError(fmt::format("cannot restore {}: {}", dir.string(), *why));
  }
  hv_ = hv::Hypervisor::open();
  mem_.emplace(GuestMemory::map_private(dir / "memory", layout));
  build_platform();
  setup_devices(&r);
  cmdline_ = r.shape.cmdline;
  restore_state(r);
  mmio_bus_.freeze();
  pio_bus_.freeze();
  restored_state_ = std::move(file);
}

void Machine::build_platform() {
  vm_ = hv_->create_vm();
  vm_->map_memory(*mem_);
  vm_->create_irqchip();
}

void Machine::boot_kernel() {
  const uint64_t ram = cfg_.memory_mib << 20;
  x86::LoadedKernel kernel;
  try {
    MappedFile file(cfg_.kernel, "kernel");
    kernel = x86::load_kernel(*mem_, file.bytes());
  } catch (const Error& e) {
    throw Error(fmt::format("kernel {}: {}", cfg_.kernel.string(), e.what()));
  }
  std::optional<x86::InitrdPlacement> initrd;
  if (cfg_.initrd) {
    try {
      MappedFile file(*cfg_.initrd, "initrd");
      initrd = x86::load_initrd(*mem_, file.bytes(), kernel, ram);
    } catch (const Error& e) {
      throw Error(fmt::format("initrd {}: {}", cfg_.initrd->string(), e.what()));
    }
  }

  setup_devices(nullptr);

  std::vector<VirtioMmioSlot> slots;
  for (size_t i = 0; i < transports_.size(); ++i)
    slots.push_back({x86::virtio_mmio_addr(static_cast<unsigned>(i)), x86::virtio_irq(static_cast<unsigned>(i))});
  cmdline_ = kernel_cmdline(slots, cfg_.cmdline_extra);
  x86::write_boot_params(*mem_, kernel, cmdline_, initrd, ram);
  x86::write_mp_table(*mem_, cfg_.cpus);
  x86::write_boot_tables(*mem_);
  spdlog::debug("kernel entry {:#x}, command line: {}", kernel.entry, cmdline_);

  const auto supported = hv_->supported_cpuid();
  const auto msrs = x86::boot_msrs();
  for (unsigned i = 0; i < cfg_.cpus; ++i) {
    auto vcpu = vm_->create_vcpu(i);
    auto cpuid = supported;
    x86::apply_cpuid_policy(cpuid, i, cfg_.cpus);
    vcpu->set_cpuid(cpuid);
    vcpu->set_msrs(msrs);
    vcpu->setup_lapic_lints();
    // Only the BSP starts at the kernel; the others wait in KVM for the guest's INIT/SIPI.
    if (i == 0) vcpu->set_boot_state(x86::boot_cpu_state(kernel.entry));
    vcpus_.push_back(std::move(vcpu));
  }
}

void Machine::restore_state(const Restore& r) {
  const auto supported = hv_->supported_cpuid();
  std::vector<x86::VcpuState> states;
  for (unsigned i = 0; i < cfg_.cpus; ++i) {
    std::string name = fmt::format("vcpu.{}", i);
    snapshot::Decoder d(r.file.section(name), name);
    states.push_back(x86::load_vcpu_state(d));
    d.finish();
    // The guest saw these CPU features at boot and may use any of them: this host must offer
    // exactly the same set (what the policy gives here), or the guest could fault on restore.
    auto cpuid = supported;
    x86::apply_cpuid_policy(cpuid, i, cfg_.cpus);
    if (cpuid != states.back().cpuid)
      throw SnapshotError(fmt::format(
          "cannot restore {}: the CPU feature set differs from the one the snapshot was made on (CPUID of vCPU {}); "
          "make the snapshot again on this host",
          r.dir.string(), i));
  }
  for (unsigned i = 0; i < cfg_.cpus; ++i) vcpus_.push_back(vm_->create_vcpu(i));
  {
    snapshot::Decoder d(r.file.section("platform"), "platform");
    x86::PlatformState platform = x86::load_platform_state(d);
    d.finish();
    vm_->restore_platform(platform);
  }
  for (unsigned i = 0; i < cfg_.cpus; ++i) vcpus_[i]->restore_state(states[i]);
  // The clone's vsock has no host connections: tell the guest so it drops its own, before it
  // runs (its listeners survive; the host reconnects).
  for (auto& t : transports_)
    if (auto* vsock = dynamic_cast<virtio::Vsock*>(&t->device())) vsock->send_transport_reset();
  // A queue notification the guest made just before the capture may still have been in its
  // ioeventfd, which the clone does not have: look at every queue once (a spurious notify is
  // harmless), or a request the guest already queued would wait for a kick that never comes.
  for (auto& t : transports_)
    for (size_t q = 0; q < t->num_queues(); ++q) t->queue_notify(static_cast<uint16_t>(q));
}

MachineShape Machine::shape() const {
  MachineShape s;
  for (const auto& region : mem_->regions()) s.memory.emplace_back(region.gpa, region.size);
  s.cpus = cfg_.cpus;
  for (size_t i = 0; i < transports_.size(); ++i) {
    auto& dev = transports_[i]->device();
    s.devices.push_back({dev.device_id(), x86::virtio_mmio_addr(static_cast<unsigned>(i)),
                         x86::virtio_irq(static_cast<unsigned>(i)),
                         static_cast<uint32_t>(dev.queue_max_sizes().size())});
  }
  s.cmdline = cmdline_;
  s.identity = identities();
  return s;
}

std::vector<std::pair<std::string, std::string>> Machine::identities() const {
  std::vector<std::pair<std::string, std::string>> id;
  id.emplace_back("VMM build", build_identity());
  id.emplace_back("kernel", file_fingerprint(cfg_.kernel.string()));
  if (cfg_.initrd) id.emplace_back("initramfs", file_fingerprint(cfg_.initrd->string()));
  for (size_t i = 0; i < cfg_.disks.size(); ++i)
    id.emplace_back(fmt::format("disk {}", i), file_fingerprint(cfg_.disks[i].path.string()));
  for (const auto& kv : cfg_.identity) id.push_back(kv);
  return id;
}

void Machine::setup_devices(const Restore* r) {
  auto line = [&](uint32_t gsi) { return std::shared_ptr<Interrupt>(vm_->irq(gsi)); };
  auto decoder = [&](const std::string& name) { return snapshot::Decoder(r->file.section(name), name); };

  auto on_reset = [this] { stop(kStatusReset, "guest reset (i8042)"); };
  if (r) {
    auto d = decoder("serial");
    auto serial_state = devices::load_serial_state(d);
    d.finish();
    serial_ = std::make_shared<devices::Serial>(line(x86::kSerialIrq), cfg_.console, serial_state);
    auto d2 = decoder("i8042");
    auto i8042_state = devices::load_i8042_state(d2);
    d2.finish();
    i8042_ = std::make_shared<devices::I8042>(line(x86::kI8042Irq), on_reset, i8042_state);
  } else {
    serial_ = std::make_shared<devices::Serial>(line(x86::kSerialIrq), cfg_.console);
    i8042_ = std::make_shared<devices::I8042>(line(x86::kI8042Irq), on_reset);
  }
  pio_bus_.add(x86::kCom1Port, x86::kCom1PortCount, serial_);
  pio_bus_.add(x86::kI8042DataPort, devices::I8042::kPortCount, i8042_);
  pio_bus_.add(x86::kExitPort, devices::ExitDevice::kPortCount,
               std::make_shared<devices::ExitDevice>(
                   [this](uint8_t n) { stop(n, fmt::format("guest exit status {}", n)); }));

  // Disks first so the guest names them vda, vdb, ... in the order given.
  std::vector<std::shared_ptr<virtio::VirtioDevice>> devs;
  for (const auto& d : cfg_.disks) {
    virtio::BlkOptions o;
    o.read_only = d.read_only;
    devs.push_back(std::make_shared<virtio::Blk>(d.path.string(), o));
  }
  devs.push_back(std::make_shared<virtio::Rng>());
  if (cfg_.vsock_uds) devs.push_back(virtio::Vsock::create(loop_, cfg_.vsock_cid, cfg_.vsock_uds->string()));
  if (has_network(cfg_)) {
    // A fresh backend for a restored VM too: same guest addresses, its own NAT and ports.
    // Published ports are bound here, so a taken one fails before the guest runs.
    net_backend_ = net::make_backend(*cfg_.network);
    virtio::NetOptions o;
    o.mac = cfg_.network->plan.guest_mac;
    o.mtu = net_backend_->mtu();  // the plan's, or a TAP interface's
    devs.push_back(virtio::Net::create(loop_, net_backend_, o));
  }

  if (r) {
    // The devices this configuration gives must be the ones the snapshot holds, slot by slot,
    // before any of their state is read.
    MachineShape wanted = r->shape;
    wanted.devices.clear();
    for (size_t i = 0; i < devs.size(); ++i)
      wanted.devices.push_back({devs[i]->device_id(), x86::virtio_mmio_addr(static_cast<unsigned>(i)),
                                x86::virtio_irq(static_cast<unsigned>(i)),
                                static_cast<uint32_t>(devs[i]->queue_max_sizes().size())});
    wanted.cpus = cfg_.cpus;
    wanted.identity = identities();
    if (auto why = shape_mismatch(r->shape, wanted))
      throw SnapshotError(fmt::format("cannot restore {}: {}", r->dir.string(), *why));
  }

  for (size_t i = 0; i < devs.size(); ++i) {
    const uint64_t addr = x86::virtio_mmio_addr(static_cast<unsigned>(i));
    const size_t nqueues = devs[i]->queue_max_sizes().size();
    auto irq = line(x86::virtio_irq(static_cast<unsigned>(i)));
    std::shared_ptr<virtio::MmioTransport> t;
    if (r) {
      auto d = decoder(fmt::format("virtio.{}", i));
      auto state = virtio::load_mmio_transport_state(d);
      d.finish();
      t = std::make_shared<virtio::MmioTransport>(*mem_, devs[i], std::move(irq), state);
    } else {
      t = std::make_shared<virtio::MmioTransport>(*mem_, devs[i], std::move(irq));
    }
    mmio_bus_.add(addr, virtio::MmioTransport::kSize, t);
    // Queue notifications go straight from KVM to the event loop, without a vCPU exit.
    for (size_t q = 0; q < nqueues; ++q) {
      UniqueFd fd = vm_->ioeventfd(addr + virtio::MmioTransport::kQueueNotifyOffset, 4, q);
      int raw = fd.get();
      virtio::MmioTransport* tp = t.get();  // transports_ outlives the loop's callbacks
      loop_.add(raw, EPOLLIN, [raw, tp, q](uint32_t) {
        uint64_t v;
        if (::read(raw, &v, sizeof v) == sizeof v) tp->queue_notify(static_cast<uint16_t>(q));
      });
      ioeventfds_.push_back(std::move(fd));
    }
    transports_.push_back(std::move(t));
  }
}

void Machine::setup_console_input() {
  const int fd = cfg_.console_input_fd;
  if (fd < 0) return;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return;
  const bool tty = ::isatty(fd) != 0;
  if (!tty && !S_ISFIFO(st.st_mode) && !S_ISSOCK(st.st_mode)) {
    spdlog::debug("console input fd {} is neither a TTY nor a pipe; not attached", fd);
    return;
  }
  input_ = std::make_unique<ConsoleInput>();
  input_->fd = fd;
  if (tty) {
    // Bytes go to the guest as typed and the guest echoes them; ISIG stays on so ^C still
    // stops the VM through SIGINT.
    termios t{};
    if (::tcgetattr(fd, &t) == 0) {
      input_->saved_tty = t;
      t.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
      t.c_cc[VMIN] = 1;
      t.c_cc[VTIME] = 0;
      ::tcsetattr(fd, TCSANOW, &t);
    }
  }
  input_->retry_timer.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!input_->retry_timer) throw sys_error("timerfd_create");
  loop_.add(input_->retry_timer.get(), EPOLLIN, [this](uint32_t) { on_input_retry(); });
  loop_.add(fd, EPOLLIN, [this](uint32_t) { on_console_input(); });
  input_->registered = true;
}

void Machine::on_console_input() {
  std::array<std::byte, 4096> buf;
  ssize_t n = ::read(input_->fd, buf.data(), buf.size());
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n <= 0) {  // end of input (or an error): the guest just gets no more
    loop_.remove(input_->fd);
    input_->registered = false;
    input_->eof = true;
    return;
  }
  input_->pending.insert(input_->pending.end(), buf.begin(), buf.begin() + n);
  deliver_console_input();
}

void Machine::on_input_retry() {
  uint64_t expirations;
  [[maybe_unused]] auto r = ::read(input_->retry_timer.get(), &expirations, sizeof expirations);
  deliver_console_input();
}

void Machine::deliver_console_input() {
  auto& p = input_->pending;
  // Until the guest opens its console (and while it throttles us) input waits here; the UART
  // would drop it otherwise (Serial::accepting_input).
  if (serial_->accepting_input()) {
    size_t took = serial_->enqueue_input(p);
    spdlog::debug("console input: {} of {} bytes to the guest", took, p.size());
    p.erase(p.begin(), p.begin() + static_cast<ptrdiff_t>(took));
  }
  if (!p.empty()) {
    // Stop reading (back-pressure on the writer) and offer the rest again shortly.
    if (input_->registered) {
      loop_.remove(input_->fd);
      input_->registered = false;
    }
    itimerspec its{};
    its.it_value.tv_nsec = 10'000'000;
    ::timerfd_settime(input_->retry_timer.get(), 0, &its, nullptr);
  } else if (!input_->registered && !input_->eof) {
    loop_.add(input_->fd, EPOLLIN, [this](uint32_t) { on_console_input(); });
    input_->registered = true;
  }
}

void Machine::setup_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  // Blocked here, before any thread starts, so every thread inherits the mask and the signals
  // arrive only through the signalfd on the event loop.
  if (int err = pthread_sigmask(SIG_BLOCK, &set, &old_sigmask_); err != 0)
    throw sys_error("pthread_sigmask", err);
  signals_blocked_ = true;
  signal_fd_.reset(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signal_fd_) throw sys_error("signalfd");
  loop_.add(signal_fd_.get(), EPOLLIN, [this](uint32_t) {
    signalfd_siginfo si{};
    if (::read(signal_fd_.get(), &si, sizeof si) != sizeof si) return;
    int sig = static_cast<int>(si.ssi_signo);
    stop(128 + sig, fmt::format("stopped by {}", sig == SIGINT ? "SIGINT" : "SIGTERM"));
  });
}

void Machine::start() {
  if (started_) throw Error("machine already started");
  started_ = true;
  try {
    if (cfg_.stop_on_signals) setup_signals();
    setup_console_input();
    loop_thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "sm-io");
      try {
        loop_.run();
      } catch (const std::exception& e) {
        fail(fmt::format("I/O thread failed: {}", e.what()));
      }
    });
    for (auto& v : vcpus_) vcpu_threads_.emplace_back([this, &v] { vcpu_thread(*v); });
  } catch (const std::exception& e) {
    stop(kStatusError, e.what());
    join_all();
    restore_host_state();
    throw;
  }
}

void Machine::vcpu_thread(hv::Vcpu& vcpu) {
  pthread_setname_np(pthread_self(), fmt::format("sm-vcpu{}", vcpu.id()).c_str());
  try {
    while (!stopping_.load(std::memory_order_acquire)) {
      if (pause_requested_.load(std::memory_order_acquire)) {
        park(vcpu);
        continue;
      }
      hv::Exit e = vcpu.run();
      handle_exit(vcpu, e);
    }
  } catch (const std::exception& e) {
    fail(fmt::format("vCPU {}: {}", vcpu.id(), e.what()));
  }
}

// On the vCPU's own thread, out of run(): hand the guest the result of the access it exited
// for, save its state if a capture asked for it, then wait for resume() (or the end).
void Machine::park(hv::Vcpu& vcpu) {
  // A string I/O instruction may need several exits to complete; each is handled as usual.
  for (int i = 0; i < 4096 && !stopping_.load(); ++i) {
    hv::Exit e = vcpu.finish_pending_io();
    if (std::holds_alternative<hv::exit::Interrupted>(e)) break;
    handle_exit(vcpu, e);
  }
  std::unique_lock lock(pause_mu_);
  const uint64_t gen = pause_gen_;
  if (pause_capture_) {
    lock.unlock();
    std::optional<x86::VcpuState> st;
    std::string err;
    try {
      st = vcpu.save_state();
    } catch (const std::exception& e) {
      err = fmt::format("saving vCPU {}: {}", vcpu.id(), e.what());
    }
    lock.lock();
    if (st && vcpu.id() < captured_.size()) captured_[vcpu.id()] = std::move(st);
    if (!err.empty()) capture_error_ = err;
  }
  ++vcpus_parked_;
  pause_cv_.notify_all();
  pause_cv_.wait(lock, [&] { return resumed_gen_ >= gen || stopping_.load(); });
}

void Machine::pause(bool capture) {
  uint64_t gen;
  {
    std::lock_guard lock(pause_mu_);
    gen = ++pause_gen_;
    pause_capture_ = capture;
    vcpus_parked_ = 0;
    io_parked_ = false;
    captured_.assign(vcpus_.size(), std::nullopt);
    capture_error_.clear();
    pause_requested_.store(true, std::memory_order_release);
  }
  // The I/O thread parks in a task of its own: no device callback runs (none writes guest
  // memory) until resume().
  loop_.post([this, gen] {
    std::unique_lock lock(pause_mu_);
    io_parked_ = true;
    pause_cv_.notify_all();
    pause_cv_.wait(lock, [&] { return resumed_gen_ >= gen || stopping_.load(); });
  });
  for (auto& v : vcpus_) v->kick();
  std::unique_lock lock(pause_mu_);
  bool all = pause_cv_.wait_for(lock, kPauseTimeout, [&] {
    return (vcpus_parked_ == vcpus_.size() && io_parked_) || stopping_.load();
  });
  std::string error;
  if (stopping_.load()) error = "the VM ended while it was being paused";
  else if (!all)
    error = fmt::format("the VM did not pause within {} s ({} of {} vCPUs and {} I/O thread stopped)",
                        kPauseTimeout.count(), vcpus_parked_, vcpus_.size(), io_parked_ ? "the" : "not the");
  else if (!capture_error_.empty()) error = capture_error_;
  lock.unlock();
  if (!error.empty()) {
    resume();
    throw Error(error);
  }
}

void Machine::resume() {
  {
    std::lock_guard lock(pause_mu_);
    pause_requested_.store(false, std::memory_order_release);
    resumed_gen_ = pause_gen_;
  }
  pause_cv_.notify_all();
}

Machine::SnapshotStats Machine::snapshot(const fs::path& dir, const SnapshotOptions& options) {
  std::lock_guard one(snapshot_mu_);
  if (!started_ || stopping_.load()) throw Error("cannot snapshot the VM: it is not running");
  for (const auto& d : cfg_.disks)
    if (!d.read_only)
      throw Error(fmt::format("cannot snapshot a VM with a writable disk ({}): the disk would have to be captured "
                              "with it, which supermachine does not do yet",
                              d.path.string()));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(fmt::format("cannot create the snapshot directory {}: {}", dir.string(), ec.message()));
  const fs::path mem_file = dir / "memory", state_file = dir / "state";
  if (fs::exists(mem_file) || fs::exists(state_file))
    throw Error(fmt::format("{} already holds a snapshot; remove it or choose another directory", dir.string()));

  const auto t0 = std::chrono::steady_clock::now();
  pause(true);
  SnapshotStats stats;
  try {
    std::vector<snapshot::Section> sections;
    sections.push_back({"machine", encoded(shape())});
    sections.push_back({"platform", encoded(vm_->save_platform())});
    for (size_t i = 0; i < vcpus_.size(); ++i) {
      std::lock_guard lock(pause_mu_);
      if (!captured_[i]) throw Error(fmt::format("vCPU {} was not captured", i));
      sections.push_back({fmt::format("vcpu.{}", i), encoded(*captured_[i])});
    }
    sections.push_back({"serial", encoded(serial_->save_state())});
    sections.push_back({"i8042", encoded(i8042_->save_state())});
    for (size_t i = 0; i < transports_.size(); ++i)
      sections.push_back({fmt::format("virtio.{}", i), encoded(transports_[i]->save_state())});
    for (const auto& extra : options.extra) sections.push_back(extra);
    // Memory first, the state file last: a directory with a state file holds a whole snapshot.
    stats.memory_bytes = mem_->save_to(mem_file);
    snapshot::write_state_file(state_file, sections);
  } catch (...) {
    fs::remove(mem_file, ec);
    fs::remove(state_file, ec);
    resume();
    throw;
  }
  stats.paused = std::chrono::steady_clock::now() - t0;
  spdlog::debug("snapshot {}: {} MiB of memory data, paused {} ms", dir.string(), stats.memory_bytes >> 20,
                std::chrono::duration_cast<std::chrono::milliseconds>(stats.paused).count());
  if (options.resume) resume();
  return stats;
}

void Machine::log_guest_error(const char* where, const std::exception& e) {
  uint64_t n = guest_errors_.fetch_add(1);
  if (n < 10) spdlog::warn("{}: guest error: {}", where, e.what());
  else if (n == 10) spdlog::warn("more guest errors follow from this VM; not logging them");
}

void Machine::handle_exit(hv::Vcpu& vcpu, hv::Exit& exit) {
  std::visit(
      Overloaded{
          [&](hv::exit::Mmio& m) {
            try {
              bool claimed = m.is_write ? mmio_bus_.write(m.addr, m.data) : mmio_bus_.read(m.addr, m.data);
              if (!claimed) spdlog::debug("vCPU {}: unclaimed MMIO {}", vcpu.id(), hv::describe(exit));
            } catch (const GuestError& e) {
              log_guest_error("MMIO", e);
            }
          },
          [&](hv::exit::Pio& p) {
            if (p.size == 0) return;
            try {
              // rep ins/outs: one access of p.size bytes after another.
              for (size_t off = 0; off + p.size <= p.data.size(); off += p.size) {
                auto chunk = p.data.subspan(off, p.size);
                if (p.is_write) pio_bus_.write(p.port, chunk);
                else pio_bus_.read(p.port, chunk);
              }
            } catch (const GuestError& e) {
              log_guest_error("port I/O", e);
            }
          },
          [&](hv::exit::Hlt&) { stop(kStatusReset, fmt::format("vCPU {} halted", vcpu.id())); },
          [&](hv::exit::Shutdown&) { stop(kStatusReset, "guest reset (triple fault or shutdown)"); },
          [&](hv::exit::SystemEvent& s) {
            using K = hv::exit::SystemEvent::Kind;
            if (s.kind == K::kShutdown || s.kind == K::kReset) stop(kStatusReset, "guest shutdown/reset event");
            else if (s.kind == K::kCrash) fail("the guest reported a crash");
            else spdlog::debug("vCPU {}: ignoring system event {}", vcpu.id(), s.raw);
          },
          [&](hv::exit::InternalError& ie) { fail(ie.detail); },
          [&](hv::exit::Interrupted&) {},
      },
      exit);
}

void Machine::stop(int status, std::string reason) {
  {
    std::lock_guard lock(stop_mu_);
    if (status_) return;
    status_ = status;
    reason_ = std::move(reason);
    spdlog::debug("VM stopping with status {}: {}", status, reason_);
  }
  stopping_.store(true, std::memory_order_release);
  for (auto& v : vcpus_) v->kick();
  loop_.stop();
  stop_cv_.notify_all();
  {
    std::lock_guard lock(pause_mu_);  // a parked thread sees stopping_ before it waits again
  }
  pause_cv_.notify_all();
}

void Machine::fail(const std::string& reason) {
  // Only the first failure is worth a message; later ones are fallout of the first stop.
  if (!stopping_.load()) spdlog::error("{}", reason);
  stop(kStatusError, reason);
}

std::string Machine::stop_reason() const {
  std::lock_guard lock(stop_mu_);
  return reason_;
}

std::optional<int> Machine::status() const {
  std::lock_guard lock(stop_mu_);
  return status_;
}

int Machine::wait() {
  if (!started_) throw Error("machine not started");
  {
    std::unique_lock lock(stop_mu_);
    stop_cv_.wait(lock, [&] { return status_.has_value(); });
  }
  join_all();
  restore_host_state();
  if (!devices_stopped_) {
    // A host process blocked on a vsock connection gets EOF now, not when this is destroyed.
    for (auto& t : transports_) t->device().on_machine_stopped();
    devices_stopped_ = true;
  }
  std::lock_guard lock(stop_mu_);
  return *status_;
}

void Machine::join_all() {
  if (joined_) return;
  for (auto& t : vcpu_threads_)
    if (t.joinable()) t.join();
  if (loop_thread_.joinable()) loop_thread_.join();
  joined_ = true;
}

void Machine::restore_host_state() {
  if (input_) {
    if (input_->registered) loop_.remove(input_->fd);
    input_->registered = false;
    if (input_->saved_tty) ::tcsetattr(input_->fd, TCSANOW, &*input_->saved_tty);
    input_->saved_tty.reset();
  }
  if (signal_fd_) {
    loop_.remove(signal_fd_.get());
    signal_fd_.reset();
  }
  if (signals_blocked_) {
    // Swallow a SIGINT/SIGTERM that arrived after the VM ended, so unblocking it does not kill
    // the process we are about to return to.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    timespec zero{};
    while (::sigtimedwait(&set, nullptr, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &old_sigmask_, nullptr);
    signals_blocked_ = false;
  }
}

Machine::~Machine() {
  if (started_ && !joined_) {
    stop(kStatusError, "machine destroyed while running");
    join_all();
  }
  restore_host_state();
}

}  // namespace sm::vmm
