// Options of `supermachine boot`, kept apart from the command so the parsing is unit-tested.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "arch/x86_64/layout.h"
#include "common/error.h"
#include "runtime/net_options.h"
#include "vmm/machine_config.h"

namespace sm::cli {

struct BootOptions {
  std::string kernel;
  std::string initrd;
  std::vector<std::string> disks;
  std::string cmdline;
  unsigned cpus = 1;
  uint64_t memory_mib = 256;
  std::string vsock;
  std::string network = "none";       // none, user or tap:NAME (the guest configures eth0 itself)
  std::vector<std::string> publish;  // -p, user mode
  bool allow_host_loopback = false;
};

// "PATH" or "PATH:ro" / "PATH:rw". Only a trailing ":ro"/":rw" is special, so paths with other
// colons still work. Throws sm::Error for an empty path.
inline vmm::DiskConfig parse_disk_spec(const std::string& spec) {
  vmm::DiskConfig d;
  std::string path = spec;
  auto ends_with = [&](const char* suffix) {
    return path.size() >= 3 && path.compare(path.size() - 3, 3, suffix) == 0;
  };
  if (ends_with(":ro")) {
    d.read_only = true;
    path.resize(path.size() - 3);
  } else if (ends_with(":rw")) {
    path.resize(path.size() - 3);
  }
  if (path.empty()) throw Error(fmt::format("--disk {}: no path given (expected PATH or PATH:ro)", spec));
  d.path = path;
  return d;
}

inline void add_boot_options(CLI::App& app, BootOptions& o) {
  app.add_option("--kernel", o.kernel, "Linux kernel: an ELF vmlinux or a bzImage")->required();
  app.add_option("--initrd", o.initrd, "initramfs to load with the kernel");
  app.add_option("--disk", o.disks, "virtio-blk disk PATH[:ro], repeatable; the first is /dev/vda")
      ->check([](const std::string& s) -> std::string {
        try {
          (void)parse_disk_spec(s);
          return {};
        } catch (const Error& e) {
          return e.what();
        }
      });
  app.add_option("--cmdline", o.cmdline, "extra kernel command line, appended to the VMM's own");
  app.add_option("--cpus", o.cpus, "number of vCPUs")
      ->check(CLI::Range(1u, vmm::kMaxCpus))
      ->capture_default_str();
  app.add_option("--memory", o.memory_mib, "guest memory in MiB (at least 32, at most the host's RAM)")
      ->check(CLI::Range(vmm::kMinMemoryMib, x86::kMaxRamBytes >> 20))
      ->capture_default_str();
  app.add_option("--vsock", o.vsock,
                 "Unix socket for the host side of virtio-vsock (guest CID 3; see docs/vsock.md)");
  app.add_option("--network", o.network,
                 "virtio-net on none (default), user (NAT; the guest is 10.0.2.15/24, gateway 10.0.2.2) or tap:NAME")
      ->capture_default_str();
  app.add_option("-p,--publish", o.publish, "Publish a port (user mode): [HOST_IP:][HOST_PORT:]GUEST_PORT[/udp]");
  app.add_flag("--allow-host-loopback", o.allow_host_loopback, "Let the guest reach the host's 127.0.0.1 at 10.0.2.2");
}

inline vmm::MachineConfig to_machine_config(const BootOptions& o) {
  vmm::MachineConfig c;
  c.kernel = o.kernel;
  if (!o.initrd.empty()) c.initrd = o.initrd;
  for (const auto& d : o.disks) c.disks.push_back(parse_disk_spec(d));
  c.cmdline_extra = o.cmdline;
  c.cpus = o.cpus;
  c.memory_mib = o.memory_mib;
  if (!o.vsock.empty()) c.vsock_uds = o.vsock;
  net::NetworkConfig n;
  runtime::parse_network_mode(o.network, n);
  for (const auto& p : o.publish) n.publish.push_back(runtime::parse_publish(p));
  if (!n.publish.empty() && n.mode != net::Mode::user) throw Error("-p/--publish needs --network user");
  n.policy.allow_host_loopback = o.allow_host_loopback;
  if (n.mode != net::Mode::none) c.network = n;
  return c;
}

}  // namespace sm::cli
