// What the agent needs to know at boot, read from the kernel command line (/proc/cmdline).
// Keys are sm.*: the kernel treats dotted keys as (unused) module parameters, so they are not
// passed on to the agent's environment or argv. Everything else a container needs (argv, env,
// user, cwd) arrives later over the control protocol. See docs/agent-protocol.md.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace sm::agent {

struct BootConfig {
  std::string root = "/dev/vda";   // sm.root: the image's read-only root filesystem; "none" keeps
                                   // the initramfs as the root (agent-only VMs and tests)
  std::string rootfstype = "auto";  // sm.rootfstype: erofs, ext4, or auto (try erofs, then ext4)
  std::string scratch;              // sm.scratch: an ext4 device for the writable layer (default
                                    // tmpfs)
  std::string hostname = "supermachine";  // sm.hostname
  uint32_t port = 1024;             // sm.port: vsock port the agent listens on
  uint32_t notify_port = 0;         // sm.notify: when set, the agent connects to the host (CID 2)
                                    // on this vsock port once it listens, sends HELLO, closes
  bool debug = false;               // sm.debug=1: log every request on the console
};

// Parses a kernel command line. Unknown sm.* keys and malformed values are ignored with a
// warning in `warnings` (a typo must not stop the VM from booting).
[[nodiscard]] BootConfig parse_boot_config(std::string_view cmdline, std::string* warnings = nullptr);

}  // namespace sm::agent
