// NETWORK (protocol v3): the guest side of supermachine's networking. Configures the VM's
// interface from the host's address plan (src/net/config.h) and writes the container's
// /etc/resolv.conf and /etc/hosts (docs/agent-protocol.md).
//
// Runs on the agent's single server thread (the netlink exchange is a few request/ACK round
// trips with the kernel, bounded by a receive timeout), so it holds no locks. The file contents
// come from pure functions, tested on the host; the kernel steps run only as PID 1 in a VM.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "agent/protocol.h"

namespace sm::agent {

// /etc/resolv.conf: one "nameserver X" line each, then "search a b" and "options x y" when given.
[[nodiscard]] std::string resolv_conf_contents(const NetworkRequest& req);
// /etc/hosts: localhost (IPv4 and IPv6), the guest's own address(es) with `hostname`, then the
// extra hosts in the order given.
[[nodiscard]] std::string hosts_contents(const NetworkRequest& req);

// Writes `contents` to `path` atomically: a temporary file beside it, renamed over it. A symlink
// at `path` (an image's /etc/resolv.conf -> ../run/...) is replaced, not followed. Creates the
// parent directory (0755) when missing. Throws sm::Error naming the step.
void write_file_atomically(const std::filesystem::path& path, const std::string& contents);

struct NetworkOptions {
  // PID 1 in a VM: configure the kernel's interfaces. Without init (tests on a host) the
  // interface steps are skipped: the host's network is not ours to change.
  bool init = false;
  // The container's root, where etc/resolv.conf and etc/hosts are written. Empty: write none
  // (sm-agent --no-init without --users-root must never touch the host's /etc).
  std::filesystem::path root;
};

// Applies `req`: lo up, then the interface (sysctls accept_dad=0 / accept_ra=0, MTU, up, IPv4
// address and default route, IPv6 address with IFA_F_NODAD and default route; what already
// exists is fine), then the two files. Stops at the first failure and returns
// ErrorInfo{kNetworkFailed, "NETWORK: <step>: <strerror> (errno N)"}; nullopt on success.
[[nodiscard]] std::optional<ErrorInfo> apply_network(const NetworkRequest& req, const NetworkOptions& opts);

// Brings `name` up (SIOCSIFFLAGS) if it is not already; returns 0 or an errno.
int interface_up(const std::string& name);

}  // namespace sm::agent
