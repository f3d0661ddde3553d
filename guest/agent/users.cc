#include "users.h"

#include <charconv>
#include <fstream>
#include <limits>
#include <optional>

#include "common/error.h"

namespace sm::agent {

namespace {

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    size_t p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string_view::npos ? std::string_view::npos : p - start));
    if (p == std::string_view::npos) break;
    start = p + 1;
  }
  return out;
}

std::optional<uint32_t> parse_id(std::string_view s) {
  uint32_t v = 0;
  if (s.empty() || s.size() > 10) return std::nullopt;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  // (uid_t)-1 means "no change" to setuid/chown; never hand it out as an identity.
  if (v == std::numeric_limits<uint32_t>::max()) return std::nullopt;
  return v;
}

template <typename F>
void for_each_line(std::string_view text, F&& f) {
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    std::string_view line = text.substr(start, nl == std::string_view::npos ? std::string_view::npos : nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty() && line[0] != '#' && line[0] != '+' && line[0] != '-') f(line);
    if (nl == std::string_view::npos) break;
    start = nl + 1;
  }
}

std::string read_capped(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return {};
  std::string s;
  constexpr size_t kCap = 16 << 20;
  char buf[65536];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    s.append(buf, static_cast<size_t>(in.gcount()));
    if (s.size() > kCap) throw Error(p.string() + " is larger than 16 MiB; refusing to parse it");
  }
  return s;
}

}  // namespace

std::vector<PasswdEntry> parse_passwd(std::string_view text) {
  std::vector<PasswdEntry> out;
  for_each_line(text, [&](std::string_view line) {
    auto f = split(line, ':');
    if (f.size() < 4 || f[0].empty()) return;
    auto uid = parse_id(f[2]);
    auto gid = parse_id(f[3]);
    if (!uid || !gid) return;
    PasswdEntry e;
    e.name = std::string(f[0]);
    e.uid = *uid;
    e.gid = *gid;
    if (f.size() > 5) e.home = std::string(f[5]);
    if (f.size() > 6) e.shell = std::string(f[6]);
    out.push_back(std::move(e));
  });
  return out;
}

std::vector<GroupEntry> parse_group(std::string_view text) {
  std::vector<GroupEntry> out;
  for_each_line(text, [&](std::string_view line) {
    auto f = split(line, ':');
    if (f.size() < 3 || f[0].empty()) return;
    auto gid = parse_id(f[2]);
    if (!gid) return;
    GroupEntry e;
    e.name = std::string(f[0]);
    e.gid = *gid;
    if (f.size() > 3 && !f[3].empty())
      for (auto m : split(f[3], ','))
        if (!m.empty()) e.members.emplace_back(m);
    out.push_back(std::move(e));
  });
  return out;
}

Credentials resolve_user(std::string_view spec, const std::vector<PasswdEntry>& passwd,
                         const std::vector<GroupEntry>& groups) {
  std::string_view user_part = spec, group_part;
  if (auto colon = spec.find(':'); colon != std::string_view::npos) {
    user_part = spec.substr(0, colon);
    group_part = spec.substr(colon + 1);
  }
  if (user_part.empty()) user_part = "0";  // "" and ":group" mean root, as in Docker

  Credentials c;
  const PasswdEntry* pw = nullptr;
  if (auto uid = parse_id(user_part)) {
    c.uid = *uid;
    for (const auto& e : passwd)
      if (e.uid == *uid) {
        pw = &e;
        break;
      }
  } else {
    for (const auto& e : passwd)
      if (e.name == user_part) {
        pw = &e;
        break;
      }
    if (!pw) throw Error("unable to find user " + std::string(user_part) + ": no matching entries in passwd file");
    c.uid = pw->uid;
  }
  if (pw) {
    c.name = pw->name;
    c.gid = pw->gid;
    if (!pw->home.empty()) c.home = pw->home;
  }

  if (!group_part.empty()) {
    // An explicit group sets the gid and, as in runc, no supplementary groups.
    auto gid = parse_id(group_part);
    const GroupEntry* match = nullptr;
    for (const auto& g : groups)
      if (gid ? g.gid == *gid : g.name == group_part) {
        match = &g;
        break;
      }
    if (match) c.gid = match->gid;
    else if (gid) c.gid = *gid;
    else throw Error("unable to find group " + std::string(group_part) + ": no matching entries in group file");
  } else if (!c.name.empty()) {
    for (const auto& g : groups)
      for (const auto& m : g.members)
        if (m == c.name) {
          c.groups.push_back(g.gid);
          break;
        }
  }
  return c;
}

Credentials resolve_user_in(std::string_view spec, const std::filesystem::path& root) {
  return resolve_user(spec, parse_passwd(read_capped(root / "etc/passwd")),
                      parse_group(read_capped(root / "etc/group")));
}

}  // namespace sm::agent
