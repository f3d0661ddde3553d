#include "runtime/container.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace sm::runtime {
namespace {

using V = std::vector<std::string>;

ContainerSpec spec_with(V entrypoint, V cmd) {
  ContainerSpec s;
  s.image.entrypoint = std::move(entrypoint);
  s.image.cmd = std::move(cmd);
  s.image.env = {"PATH=/bin", "GREETING=hello"};
  s.image.working_dir = "/data";
  s.image.user = "1000:1000";
  return s;
}

TEST(MainRequest, ImageEntrypointAndCmd) {
  auto r = main_request(spec_with({"/bin/sh", "-c"}, {"cat /data/file"}));
  EXPECT_EQ(r.argv, (V{"/bin/sh", "-c", "cat /data/file"}));
  EXPECT_EQ(r.env, (V{"PATH=/bin", "GREETING=hello"}));
  EXPECT_EQ(r.cwd, "/data");
  EXPECT_TRUE(r.create_cwd);
  EXPECT_EQ(r.user, "1000:1000");
  EXPECT_TRUE(r.main);
}

TEST(MainRequest, CmdReplacesImageCmdButKeepsEntrypoint) {
  auto s = spec_with({"/bin/sh", "-c"}, {"cat /data/file"});
  s.cmd = {"echo hi"};
  EXPECT_EQ(main_request(s).argv, (V{"/bin/sh", "-c", "echo hi"}));
}

TEST(MainRequest, EntrypointOverrideDropsImageCmd) {
  auto s = spec_with({"/bin/sh", "-c"}, {"cat /data/file"});
  s.entrypoint = V{"/bin/echo"};
  EXPECT_EQ(main_request(s).argv, (V{"/bin/echo"}));
  s.cmd = {"a", "b"};
  EXPECT_EQ(main_request(s).argv, (V{"/bin/echo", "a", "b"}));
  s.entrypoint = V{};  // --entrypoint "" clears it
  EXPECT_EQ(main_request(s).argv, (V{"a", "b"}));
}

TEST(MainRequest, OverridesWin) {
  auto s = spec_with({}, {"sh"});
  s.env = {"GREETING=bye", "NEW=1"};
  s.working_dir = "/tmp";
  s.user = "root";
  auto r = main_request(s);
  EXPECT_EQ(r.env, (V{"PATH=/bin", "GREETING=bye", "NEW=1"}));
  EXPECT_EQ(r.cwd, "/tmp");
  EXPECT_EQ(r.user, "root");
}

TEST(MainRequest, NoCommandOrBadEnvIsAClearError) {
  EXPECT_THROW((void)main_request(spec_with({}, {})), Error);
  auto s = spec_with({}, {"sh"});
  s.env = {"NOEQUALS"};
  EXPECT_THROW((void)main_request(s), Error);
  s.env = {"=x"};
  EXPECT_THROW((void)main_request(s), Error);
}

TEST(MergeEnv, ReplacesByNameInPlace) {
  EXPECT_EQ(merge_env({"A=1", "B=2"}, {"B=3", "C=4", "A="}), (V{"A=", "B=3", "C=4"}));
}

}  // namespace
}  // namespace sm::runtime
