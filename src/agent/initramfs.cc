#include "agent/initramfs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>

#include "common/error.h"
#include "common/unique_fd.h"

namespace sm::agent {

namespace {

void pad4(std::string& out) {
  while (out.size() % 4) out.push_back('\0');
}

// newc header: magic "070701" then 13 fields of 8 hex digits.
void append_header(std::string& out, uint32_t ino, const CpioEntry& e, std::string_view name) {
  char hdr[111];
  std::snprintf(hdr, sizeof hdr, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X", ino, e.mode,
                0u /*uid*/, 0u /*gid*/, (e.mode & S_IFMT) == S_IFDIR ? 2u : 1u, 0u /*mtime*/,
                static_cast<uint32_t>(e.data.size()), 0u, 0u, e.rdev_major, e.rdev_minor,
                static_cast<uint32_t>(name.size() + 1), 0u);
  out.append(hdr, 110);
  out.append(name);
  out.push_back('\0');
  pad4(out);
}

}  // namespace

std::string make_cpio(const std::vector<CpioEntry>& entries) {
  std::string out;
  uint32_t ino = 1;
  for (const auto& e : entries) {
    if (e.name.empty() || e.name[0] == '/') throw Error("cpio entry names must be relative: \"" + e.name + "\"");
    if (e.data.size() > 0xffffffffu) throw Error("cpio entry too large: " + e.name);
    append_header(out, ino++, e, e.name);
    out += e.data;
    pad4(out);
  }
  append_header(out, 0, CpioEntry{"TRAILER!!!", 0, 0, 0, {}}, "TRAILER!!!");
  return out;
}

std::string make_agent_initramfs(const std::filesystem::path& agent_binary) {
  std::ifstream in(agent_binary, std::ios::binary);
  if (!in) throw Error("cannot read the agent binary " + agent_binary.string() + " (build the sm-agent target)");
  std::string agent((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<CpioEntry> e;
  for (const char* d : {"dev", "proc", "sys", "run", "tmp", "sm"}) e.push_back({d, S_IFDIR | 0755, 0, 0, {}});
  e.push_back({"dev/console", S_IFCHR | 0600, 5, 1, {}});
  e.push_back({"init", S_IFREG | 0755, 0, 0, std::move(agent)});
  return make_cpio(e);
}

void write_agent_initramfs(const std::filesystem::path& agent_binary, const std::filesystem::path& out) {
  std::string data = make_agent_initramfs(agent_binary);
  std::string tmp = out.string() + ".tmp-XXXXXX";
  UniqueFd fd(::mkostemp(tmp.data(), O_CLOEXEC));
  if (!fd) throw sys_error("create " + tmp);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd.get(), data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = errno;
      ::unlink(tmp.c_str());
      throw sys_error("write " + tmp, e);
    }
    off += static_cast<size_t>(n);
  }
  ::fchmod(fd.get(), 0644);
  fd.reset();
  if (::rename(tmp.c_str(), out.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw sys_error("rename to " + out.string(), e);
  }
}

}  // namespace sm::agent
