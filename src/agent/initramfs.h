// The agent's initramfs: a cpio archive ("newc", the only format the kernel unpacks; see
// Documentation/driver-api/early-userspace/buffer-format.rst) holding the static sm-agent as
// /init, a /dev/console node (so the kernel can give init a console before devtmpfs is
// mounted) and the directories the agent mounts on. Uncompressed: the kernel copies it faster
// than it would inflate it, and the guest kernel needs no decompressor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace sm::agent {

struct CpioEntry {
  std::string name;  // relative, no leading '/'
  uint32_t mode = 0;  // type bits included (S_IFDIR | 0755, S_IFREG | 0755, S_IFCHR | 0600, ...)
  uint32_t rdev_major = 0, rdev_minor = 0;
  std::string data;  // regular files only
};

// Serialises entries plus the trailer.
[[nodiscard]] std::string make_cpio(const std::vector<CpioEntry>& entries);

// The agent initramfs around the sm-agent binary at `agent_binary`.
[[nodiscard]] std::string make_agent_initramfs(const std::filesystem::path& agent_binary);
// Writes it to `out` atomically (temporary file + rename).
void write_agent_initramfs(const std::filesystem::path& agent_binary, const std::filesystem::path& out);

}  // namespace sm::agent
