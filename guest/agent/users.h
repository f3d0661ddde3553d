// Resolving a container user ("uid", "uid:gid", "name", "name:group", empty = root) against the
// image's /etc/passwd and /etc/group, with runc's rules (libcontainer/user GetExecUser): a name
// must exist; a number need not; supplementary groups come from group membership only when the
// group is implicit. Parsed by hand: a static binary has no NSS, and the files are the image's.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace sm::agent {

struct PasswdEntry {
  std::string name;
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::string home;
  std::string shell;
};

struct GroupEntry {
  std::string name;
  uint32_t gid = 0;
  std::vector<std::string> members;
};

// Lines that do not parse (comments, blanks, NIS "+" entries, bad numbers) are skipped, as libc
// does; the files belong to the image and may be odd, but never crash the agent.
[[nodiscard]] std::vector<PasswdEntry> parse_passwd(std::string_view text);
[[nodiscard]] std::vector<GroupEntry> parse_group(std::string_view text);

struct Credentials {
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::vector<uint32_t> groups;  // supplementary groups for setgroups()
  std::string name;              // empty when the uid has no passwd entry
  std::string home = "/";
};

// Throws sm::Error ("unable to find user NAME: no matching entries in passwd file") when a name
// does not resolve or a number is out of range.
[[nodiscard]] Credentials resolve_user(std::string_view spec, const std::vector<PasswdEntry>& passwd,
                                       const std::vector<GroupEntry>& groups);
// Reads ROOT/etc/passwd and ROOT/etc/group (a missing file counts as empty; each is capped at
// 16 MiB) and resolves `spec`.
[[nodiscard]] Credentials resolve_user_in(std::string_view spec, const std::filesystem::path& root);

}  // namespace sm::agent
