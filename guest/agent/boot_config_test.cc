#include "boot_config.h"

#include <gtest/gtest.h>

namespace sm::agent {
namespace {

TEST(AgentBootConfig, DefaultsWithoutSmKeys) {
  auto c = parse_boot_config("console=ttyS0 quiet panic=-1 reboot=k\n");
  EXPECT_EQ(c.root, "/dev/vda");
  EXPECT_EQ(c.rootfstype, "auto");
  EXPECT_EQ(c.scratch, "");
  EXPECT_EQ(c.hostname, "supermachine");
  EXPECT_EQ(c.port, 1024u);
  EXPECT_EQ(c.notify_port, 0u);
  EXPECT_FALSE(c.debug);
}

TEST(AgentBootConfig, ReadsSmKeys) {
  auto c = parse_boot_config(
      "console=ttyS0 sm.root=/dev/vdb sm.rootfstype=ext4 sm.scratch=/dev/vdc sm.hostname=web-1 "
      "sm.port=2000 sm.notify=1025 sm.debug=1");
  EXPECT_EQ(c.root, "/dev/vdb");
  EXPECT_EQ(c.rootfstype, "ext4");
  EXPECT_EQ(c.scratch, "/dev/vdc");
  EXPECT_EQ(c.hostname, "web-1");
  EXPECT_EQ(c.port, 2000u);
  EXPECT_EQ(c.notify_port, 1025u);
  EXPECT_TRUE(c.debug);
}

TEST(AgentBootConfig, BadValuesAreIgnoredWithAWarning) {
  std::string w;
  auto c = parse_boot_config("sm.port=abc sm.port=0 sm.notify=99999999999 sm.hostname=bad/name "
                             "sm.rootfstype=xfs sm.bogus=1 sm.root=",
                             &w);
  EXPECT_EQ(c.port, 1024u);
  EXPECT_EQ(c.notify_port, 0u);
  EXPECT_EQ(c.hostname, "supermachine");
  EXPECT_EQ(c.rootfstype, "auto");
  EXPECT_EQ(c.root, "/dev/vda");
  for (const char* k : {"sm.port=abc", "sm.notify", "sm.hostname", "sm.rootfstype", "sm.bogus", "sm.root="})
    EXPECT_NE(w.find(k), std::string::npos) << k;
}

TEST(AgentBootConfig, LastValueWins) {
  EXPECT_EQ(parse_boot_config("sm.hostname=a sm.hostname=b").hostname, "b");
  EXPECT_EQ(parse_boot_config("sm.root=none").root, "none");
}

}  // namespace
}  // namespace sm::agent
