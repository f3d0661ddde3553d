#include "users.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace sm::agent {
namespace {

// Shaped like Alpine's files, plus the odd lines real images carry.
constexpr const char* kPasswd =
    "root:x:0:0:root:/root:/bin/ash\n"
    "# a comment\n"
    "\n"
    "daemon:x:2:2:daemon:/sbin:/sbin/nologin\n"
    "broken line without colons\n"
    "baduid:x:notanumber:1::/:\n"
    "app:x:1000:1000:App:/home/app:/bin/sh\r\n"
    "nohome:x:1001:1001\n"
    "+nisuser::::::\n";
constexpr const char* kGroup =
    "root:x:0:root\n"
    "bin:x:1:root,bin,daemon\n"
    "wheel:x:10:root,app\n"
    "app:x:1000:\n"
    "audio:x:18:,app,\n"
    "staff:x:50\n"
    "bad:x:-3:app\n";

Credentials resolve(std::string_view spec) { return resolve_user(spec, parse_passwd(kPasswd), parse_group(kGroup)); }

TEST(AgentUsers, ParsesAndSkipsOddLines) {
  auto pw = parse_passwd(kPasswd);
  ASSERT_EQ(pw.size(), 4u);
  EXPECT_EQ(pw[2].name, "app");
  EXPECT_EQ(pw[2].home, "/home/app");
  EXPECT_EQ(pw[2].shell, "/bin/sh") << "CRLF line endings are tolerated";
  EXPECT_EQ(pw[3].home, "");
  auto gr = parse_group(kGroup);
  ASSERT_EQ(gr.size(), 6u);
  EXPECT_EQ(gr[1].members, (std::vector<std::string>{"root", "bin", "daemon"}));
  EXPECT_EQ(gr[4].members, (std::vector<std::string>{"app"}));
}

TEST(AgentUsers, EmptyMeansRootWithItsGroups) {
  auto c = resolve("");
  EXPECT_EQ(c.uid, 0u);
  EXPECT_EQ(c.gid, 0u);
  EXPECT_EQ(c.name, "root");
  EXPECT_EQ(c.home, "/root");
  EXPECT_EQ(c.groups, (std::vector<uint32_t>{0, 1, 10}));
}

TEST(AgentUsers, NameResolvesUidGidHomeAndSupplementaryGroups) {
  auto c = resolve("app");
  EXPECT_EQ(c.uid, 1000u);
  EXPECT_EQ(c.gid, 1000u);
  EXPECT_EQ(c.home, "/home/app");
  EXPECT_EQ(c.groups, (std::vector<uint32_t>{10, 18}));
}

TEST(AgentUsers, NumericUserWithEntryUsesIt) {
  auto c = resolve("1000");
  EXPECT_EQ(c.name, "app");
  EXPECT_EQ(c.gid, 1000u);
  EXPECT_EQ(c.groups, (std::vector<uint32_t>{10, 18}));
}

TEST(AgentUsers, NumericUserWithoutEntryIsAllowed) {
  auto c = resolve("4242");
  EXPECT_EQ(c.uid, 4242u);
  EXPECT_EQ(c.gid, 0u) << "runc's default group for an unknown uid";
  EXPECT_EQ(c.home, "/");
  EXPECT_TRUE(c.groups.empty());
}

TEST(AgentUsers, ExplicitGroupReplacesSupplementaryGroups) {
  auto c = resolve("1000:1000");
  EXPECT_EQ(c.uid, 1000u);
  EXPECT_EQ(c.gid, 1000u);
  EXPECT_TRUE(c.groups.empty());
  auto n = resolve("app:wheel");
  EXPECT_EQ(n.gid, 10u);
  auto u = resolve("4242:777");
  EXPECT_EQ(u.gid, 777u) << "a numeric group needs no entry";
  auto r = resolve(":wheel");
  EXPECT_EQ(r.uid, 0u);
  EXPECT_EQ(r.gid, 10u);
}

TEST(AgentUsers, UnknownNamesAreClearErrors) {
  try {
    (void)resolve("nosuch");
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "unable to find user nosuch: no matching entries in passwd file");
  }
  EXPECT_THROW((void)resolve("app:nosuchgroup"), Error);
  EXPECT_THROW((void)resolve("4294967295"), Error) << "(uid_t)-1 is not an identity";
  EXPECT_THROW((void)resolve("99999999999"), Error);
}

TEST(AgentUsers, MissingFilesMeanNumericOnly) {
  auto c = resolve_user_in("123:456", "/nonexistent-root");
  EXPECT_EQ(c.uid, 123u);
  EXPECT_EQ(c.gid, 456u);
  EXPECT_THROW((void)resolve_user_in("app", "/nonexistent-root"), Error);
}

}  // namespace
}  // namespace sm::agent
