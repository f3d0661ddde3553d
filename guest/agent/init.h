// PID 1 duties inside the VM, before and after the protocol server runs: mount the kernel
// filesystems, assemble the container root (the image read-only as the overlayfs lower layer, a
// writable upper on tmpfs or a scratch disk), move into it, set the hostname, bring up lo, and at
// the end power the VM off with the main process's status through supermachine's exit port.
#pragma once

#include "boot_config.h"

namespace sm::agent {

// Mounts /proc, /sys and /dev in the initramfs so the command line and disks can be read.
void mount_early();
// Builds the overlay root from `config` and switches into it (skipped for sm.root=none), then
// mounts /dev/pts, /dev/shm, /run and /tmp, sets the hostname and brings up lo. Throws sm::Error.
void setup_root(const BootConfig& config);
// Kills every other process, syncs, and writes `status` to I/O port 0x501 (the VMM exits with it).
// Falls back to a reboot (which the VMM reports as status 0) when the port is not available.
[[noreturn]] void power_off(int status);

}  // namespace sm::agent
