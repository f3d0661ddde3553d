// Where the guest side of a container VM comes from: the project's kernel (guest/kernel/build,
// cached under ~/.cache/supermachine/kernel/current/) and the agent initramfs (built with the
// project, guest/agent). Environment overrides, for installs and tests:
//   SM_KERNEL   a bzImage or vmlinux
//   SM_INITRD   the agent initramfs (cpio)
#pragma once

#include <filesystem>

namespace sm::runtime {

struct GuestAssets {
  std::filesystem::path kernel;
  std::filesystem::path initrd;
};

// The cache root: $SM_CACHE, else $XDG_CACHE_HOME/supermachine, else ~/.cache/supermachine.
[[nodiscard]] std::filesystem::path cache_root();

// Finds both files; throws sm::Error naming the missing one and how to make it (scripts/setup).
[[nodiscard]] GuestAssets find_guest_assets();

}  // namespace sm::runtime
