#include "runtime/container.h"

#include <fcntl.h>
#include <unistd.h>

#include <sys/random.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/run_tool.h"
#include "common/unique_fd.h"
#include "common/build_id.h"
#include "net/backend.h"
#include "oci/digest.h"
#include "runtime/assets.h"
#include "snapshot/format.h"
#include "vmm/machine.h"
#include "vmm/machine_shape.h"

namespace sm::runtime {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// The guest-to-host vsock port the agent announces readiness on (boot option sm.notify).
constexpr uint32_t kNotifyPort = 1025;

std::string_view env_name(std::string_view kv) { return kv.substr(0, kv.find('=')); }

// The section of a snapshot that holds what the runtime knows of the VM (SnapshotInfo).
constexpr const char* kContainerSection = "container";
constexpr size_t kMaxStrings = 4096;

std::vector<std::byte> encode_info(const SnapshotInfo& i) {
  nlohmann::json j = {
      {"rootfs", i.rootfs.string()},
      {"image_reference", i.image_reference},
      {"image_digest", i.image_digest},
      {"cpus", i.cpus},
      {"memory_mib", i.memory_mib},
      {"entrypoint", i.image.entrypoint},
      {"cmd", i.image.cmd},
      {"env", i.image.env},
      {"working_dir", i.image.working_dir},
      {"user", i.image.user},
      {"network", i.network},
  };
  std::string text = j.dump();
  auto b = std::as_bytes(std::span(text.data(), text.size()));
  return {b.begin(), b.end()};
}

SnapshotInfo decode_info(std::span<const std::byte> bytes, const fs::path& dir) {
  auto bad = [&](const std::string& why) {
    return snapshot::SnapshotError(fmt::format("snapshot {}: its container section is damaged ({})", dir.string(), why));
  };
  nlohmann::json j = nlohmann::json::parse(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
                                           nullptr, false);
  if (!j.is_object()) throw bad("not a JSON object");
  auto str = [&](const char* k) {
    if (!j.contains(k) || !j[k].is_string()) throw bad(fmt::format("'{}' is not a string", k));
    return j[k].get<std::string>();
  };
  auto strings = [&](const char* k) {
    if (!j.contains(k) || !j[k].is_array() || j[k].size() > kMaxStrings) throw bad(fmt::format("'{}' is not a list", k));
    std::vector<std::string> out;
    for (const auto& e : j[k]) {
      if (!e.is_string()) throw bad(fmt::format("'{}' holds a non-string", k));
      out.push_back(e.get<std::string>());
    }
    return out;
  };
  auto number = [&](const char* k) {
    if (!j.contains(k) || !j[k].is_number_unsigned()) throw bad(fmt::format("'{}' is not a number", k));
    return j[k].get<uint64_t>();
  };
  SnapshotInfo i;
  i.rootfs = str("rootfs");
  i.image_reference = str("image_reference");
  i.image_digest = str("image_digest");
  i.cpus = static_cast<unsigned>(number("cpus"));
  i.memory_mib = number("memory_mib");
  i.image.entrypoint = strings("entrypoint");
  i.image.cmd = strings("cmd");
  i.image.env = strings("env");
  i.image.working_dir = str("working_dir");
  i.image.user = str("user");
  if (j.contains("network")) {
    if (!j["network"].is_boolean()) throw bad("'network' is not a boolean");
    i.network = j["network"].get<bool>();
  }
  return i;
}

// The host side of a container VM, the same for a boot and a restore of the same VM.
vmm::MachineConfig machine_config(const SnapshotInfo& info, const net::NetworkConfig& network, const fs::path& vsock,
                                  const fs::path& console_path) {
  GuestAssets assets = find_guest_assets();
  vmm::MachineConfig cfg;
  cfg.kernel = assets.kernel;
  cfg.initrd = assets.initrd;
  cfg.cpus = info.cpus;
  cfg.memory_mib = info.memory_mib;
  cfg.disks.push_back({info.rootfs, true});
  cfg.vsock_uds = vsock;
  if (info.network) cfg.network = network;
  if (!info.image_digest.empty()) cfg.identity.emplace_back("image", info.image_digest);
  auto console = std::make_shared<UniqueFd>(
      ::open(console_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!*console) throw sys_error("cannot create " + console_path.string());
  cfg.console = [console](std::span<const std::byte> bytes) {
    // Best effort: a full disk must not stop the VM.
    [[maybe_unused]] ssize_t n = ::write(console->get(), bytes.data(), bytes.size());
  };
  return cfg;
}

void check_hostname(const std::string& hostname) {
  if (!agent::valid_hostname(hostname))
    throw Error(fmt::format("bad hostname '{}': use 1 to 64 letters, digits, '-', '_' and '.'", hostname));
}

// What the agent is asked to configure (interface, routes, resolv.conf, hosts); mtu 0: the plan's.
agent::NetworkRequest network_request(const net::NetworkConfig& network, const std::string& hostname, unsigned mtu) {
  agent::NetworkRequest req;
  if (network.mode != net::Mode::none) {
    const net::AddressPlan& p = network.plan;
    agent::NetworkInterface i;
    i.mac = fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", p.guest_mac[0], p.guest_mac[1], p.guest_mac[2],
                        p.guest_mac[3], p.guest_mac[4], p.guest_mac[5]);
    i.mtu = mtu != 0 ? mtu : p.mtu;
    i.ipv4 = p.guest_ipv4;
    i.ipv4_prefix = p.ipv4_prefix;
    i.gateway4 = p.gateway_ipv4;
    i.ipv6 = p.guest_ipv6;
    i.ipv6_prefix = p.ipv6_prefix;
    i.gateway6 = p.gateway_ipv6;
    req.interface = i;
  }
  req.nameservers = net::guest_nameservers(network);
  req.hosts = network.extra_hosts;
  req.hostname = hostname;
  return req;
}

// The network settings the guest will be given, checked before anything boots, with the rules
// the agent applies (so a bad --add-host or --dns fails at once, not after a boot).
void check_network(const net::NetworkConfig& network, const std::string& hostname) {
  net::validate(network);
  if (std::string why = agent::network_problem(network_request(network, hostname, 0)); !why.empty())
    throw Error(fmt::format("bad network settings: {}", why));
}

}  // namespace

std::optional<fs::path> bake_path(const fs::path& rootfs_dir, const ContainerSpec& spec) {
  if (spec.disk_size_mib > 0 || spec.image_digest.empty()) return std::nullopt;
  GuestAssets assets = find_guest_assets();
  // Everything that shapes the captured state; the machine checks the same facts again when it
  // restores, so a stale bake is refused even if a key collided.
  oci::Sha256 h;
  auto line = [&](const std::string& k, const std::string& v) { h.update(k + "=" + v + "\n"); };
  line("snapshot format", std::to_string(snapshot::kFormatVersion));
  line("vmm", build_identity());
  line("image", spec.image_digest);
  line("rootfs", vmm::file_fingerprint(spec.rootfs.string()));
  line("kernel", vmm::file_fingerprint(assets.kernel.string()));
  line("initramfs", vmm::file_fingerprint(assets.initrd.string()));
  line("cpus", std::to_string(spec.cpus));
  line("memory", std::to_string(spec.memory_mib));
  line("writable layer", "tmpfs");
  // Whether there is a network device (its addresses are the fixed plan; ports and policy are
  // the clone's own and not captured).
  line("network", spec.network.mode == net::Mode::none ? "none" : "nic");
  auto digest = oci::Digest::parse(spec.image_digest);
  return rootfs_dir / fmt::format("{}.bake-{}", digest.file_name(), h.finish().hex().substr(0, 16));
}

SnapshotInfo read_snapshot_info(const fs::path& dir) {
  auto file = snapshot::StateFile::read(dir / "state");
  return decode_info(file.section(kContainerSection), dir);
}

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
  check_hostname(spec.hostname);
  check_network(spec.network, spec.hostname);
  info_.rootfs = spec.rootfs;
  info_.image_reference = spec.image_reference;
  info_.image_digest = spec.image_digest;
  info_.image = spec.image;
  info_.cpus = spec.cpus;
  info_.memory_mib = spec.memory_mib;
  info_.network = spec.network.mode != net::Mode::none;

  std::optional<fs::path> bake = spec.disk_size_mib > 0 ? std::nullopt : spec.bake;
  if (bake && fs::exists(*bake / "state")) {
    try {
      RestoreSettings rs;
      rs.hostname = spec.hostname;
      rs.network = spec.network;
      rs.timeout = std::min<std::chrono::seconds>(spec.boot_timeout, std::chrono::seconds(30));
      start_restored(*bake, rs);
      return;
    } catch (const net::PublishError&) {
      throw;  // the caller's ports, not the bake, are at fault
    } catch (const Error& e) {
      // A bake that no longer fits (another build, a damaged file) is made again.
      spdlog::warn("the bake {} could not be restored ({}); booting and baking again", bake->string(), e.what());
      machine_.reset();
      std::error_code ec;
      fs::remove_all(*bake, ec);
      fs::remove(vsock_, ec);
    }
  }

  vmm::MachineConfig cfg = machine_config(info_, spec.network, vsock_, console_path_);
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
  // The bake is captured before the network is configured: every clone configures its own.
  if (bake) make_bake(*bake);
  try {
    agent::Client c = client();
    configure_network(c, spec.network, spec.hostname);
  } catch (const Error& e) {
    machine_->stop(vmm::Machine::kStatusError, "the network could not be configured");
    machine_->wait();
    throw Error(fmt::format("the VM started but its network could not be configured: {}", e.what()));
  }
}

void ContainerVm::configure_network(agent::Client& c, const net::NetworkConfig& network, const std::string& hostname) {
  const net::Backend* b = machine_->network();
  c.configure_network(network_request(network, hostname, b ? b->mtu() : 0));
}

net::Backend* ContainerVm::network() const { return machine_->network(); }

UniqueFd ContainerVm::connect(uint16_t guest_port, std::chrono::milliseconds timeout) const {
  return agent::connect_tcp(vsock_, guest_port, timeout);
}

void ContainerVm::make_bake(const fs::path& bake) {
  // Into a private directory first, renamed into place whole: a concurrent baker of the same
  // key loses the rename and drops its copy; a reader never sees half a bake.
  fs::path tmp = bake.string() + fmt::format(".tmp-{}", ::getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    snapshot(tmp);
    fs::rename(tmp, bake, ec);
    if (ec) spdlog::debug("the bake {} appeared meanwhile ({}); keeping that one", bake.string(), ec.message());
    else baked_ = true;
  } catch (const Error& e) {
    spdlog::warn("could not bake {}: {}; this VM runs on, later runs boot too", bake.string(), e.what());
  }
  fs::remove_all(tmp, ec);
}

void ContainerVm::snapshot(const fs::path& snapshot_dir) {
  vmm::Machine::SnapshotOptions o;
  o.extra.push_back({kContainerSection, encode_info(info_)});
  machine_->snapshot(snapshot_dir, o);
}

std::unique_ptr<ContainerVm> ContainerVm::restore(const fs::path& snapshot_dir, const RestoreSettings& settings,
                                                  fs::path dir) {
  return std::unique_ptr<ContainerVm>(new ContainerVm(RestoreTag{}, snapshot_dir, settings, std::move(dir)));
}

ContainerVm::ContainerVm(RestoreTag, const fs::path& snapshot_dir, const RestoreSettings& settings, fs::path dir)
    : dir_(std::move(dir)), vsock_(dir_ / "vm.vsock"), console_path_(dir_ / "console.log") {
  start_restored(snapshot_dir, settings);
}

void ContainerVm::start_restored(const fs::path& snapshot_dir, const RestoreSettings& settings) {
  check_hostname(settings.hostname);
  if (settings.network) check_network(*settings.network, settings.hostname);
  const auto t0 = Clock::now();
  info_ = read_snapshot_info(snapshot_dir);
  net::NetworkConfig network;
  if (settings.network) network = *settings.network;
  else if (!info_.network) network.mode = net::Mode::none;
  const bool wants_network = network.mode != net::Mode::none;
  if (info_.network != wants_network)
    throw Error(info_.network ? fmt::format("the snapshot {} has a network device: restore it with a network "
                                            "(--network user or tap:NAME), not --network none",
                                            snapshot_dir.string())
                              : fmt::format("the snapshot {} has no network device (it was made with --network "
                                            "none): restore it with --network none",
                                            snapshot_dir.string()));
  machine_ = std::make_unique<vmm::Machine>(machine_config(info_, network, vsock_, console_path_),
                                            snapshot_dir);
  const auto t_built = Clock::now();
  machine_->start();
  restored_from_ = snapshot_dir;
  try {
    // The agent's listener survived the capture; the transport reset dropped its old
    // connections. Poll it briefly, then hand it the clone's own facts.
    agent::ClientOptions o;
    o.io_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(settings.timeout);
    o.ready_poll_max = std::chrono::milliseconds(2);
    agent::Client c = client(o);
    hello_ = c.wait_ready(Clock::now() + settings.timeout);
    const auto t_ready = Clock::now();
    agent::RestoreRequest req;
    req.realtime_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
    req.entropy.resize(64);
    if (::getrandom(req.entropy.data(), req.entropy.size(), 0) != static_cast<ssize_t>(req.entropy.size()))
      throw sys_error("getrandom");
    req.hostname = settings.hostname;
    c.restore(req);
    hello_.hostname = settings.hostname;
    configure_network(c, network, settings.hostname);
    auto ms = [](Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
    spdlog::debug("restored {}: state read + platform built {:.2f} ms, agent answering {:.2f} ms later, RESTORE "
                  "{:.2f} ms",
                  snapshot_dir.string(), ms(t_built - t0), ms(t_ready - t_built), ms(Clock::now() - t_ready));
  } catch (const Error& e) {
    machine_->stop(vmm::Machine::kStatusError, "the restored agent did not answer");
    int status = machine_->wait();
    std::string tail = console_tail();
    throw Error(fmt::format("the VM restored from {} did not come up: {} (VM status {}){}", snapshot_dir.string(),
                            e.what(), status, tail.empty() ? std::string() : "; guest console:\n" + tail));
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
