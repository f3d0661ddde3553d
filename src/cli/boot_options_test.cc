#include "cli/boot_options.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace sm::cli {
namespace {

// Parses argv (after the program name) with the boot options; returns the CLI11 error or "".
std::string parse(std::vector<std::string> args, BootOptions& o) {
  CLI::App app;
  add_boot_options(app, o);
  std::vector<const char*> argv{"boot"};
  for (auto& a : args) argv.push_back(a.c_str());
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    return e.what();
  }
  return "";
}

TEST(BootOptions, ParsesEveryOption) {
  BootOptions o;
  ASSERT_EQ(parse({"--kernel", "/k", "--initrd", "/i", "--disk", "/a.img", "--disk", "/b.img:ro",
                   "--cmdline", "quiet init=/x", "--cpus", "2", "--memory", "512", "--vsock", "/tmp/v.sock"},
                  o),
            "");
  auto c = to_machine_config(o);
  EXPECT_EQ(c.kernel, "/k");
  ASSERT_TRUE(c.initrd);
  EXPECT_EQ(*c.initrd, "/i");
  ASSERT_EQ(c.disks.size(), 2u);
  EXPECT_EQ(c.disks[0].path, "/a.img");
  EXPECT_FALSE(c.disks[0].read_only);
  EXPECT_EQ(c.disks[1].path, "/b.img");
  EXPECT_TRUE(c.disks[1].read_only);
  EXPECT_EQ(c.cmdline_extra, "quiet init=/x");
  EXPECT_EQ(c.cpus, 2u);
  EXPECT_EQ(c.memory_mib, 512u);
  ASSERT_TRUE(c.vsock_uds);
  EXPECT_EQ(*c.vsock_uds, "/tmp/v.sock");
}

TEST(BootOptions, DefaultsAreOneCpuAnd256MiB) {
  BootOptions o;
  ASSERT_EQ(parse({"--kernel", "/k"}, o), "");
  auto c = to_machine_config(o);
  EXPECT_EQ(c.cpus, 1u);
  EXPECT_EQ(c.memory_mib, 256u);
  EXPECT_FALSE(c.initrd);
  EXPECT_FALSE(c.vsock_uds);
  EXPECT_TRUE(c.disks.empty());
}

TEST(BootOptions, RejectsBadValues) {
  BootOptions o;
  EXPECT_NE(parse({}, o), "");  // --kernel is required
  EXPECT_NE(parse({"--kernel", "/k", "--cpus", "0"}, o), "");
  EXPECT_NE(parse({"--kernel", "/k", "--cpus", "33"}, o), "");
  EXPECT_NE(parse({"--kernel", "/k", "--cpus", "two"}, o), "");
  EXPECT_NE(parse({"--kernel", "/k", "--memory", "16"}, o), "");
  EXPECT_NE(parse({"--kernel", "/k", "--memory", "-5"}, o), "");
  EXPECT_NE(parse({"--kernel", "/k", "--memory", "lots"}, o), "");
  EXPECT_NE(parse({"--kernel", "/k", "--disk", ":ro"}, o).find("no path"), std::string::npos);
}

TEST(DiskSpec, OnlyATrailingModeIsSpecial) {
  EXPECT_EQ(parse_disk_spec("/d:1.img").path, "/d:1.img");
  EXPECT_FALSE(parse_disk_spec("/d:1.img").read_only);
  EXPECT_TRUE(parse_disk_spec("/x:ro").read_only);
  EXPECT_FALSE(parse_disk_spec("/x:rw").read_only);
  EXPECT_EQ(parse_disk_spec("/x:rw").path, "/x");
  EXPECT_THROW((void)parse_disk_spec(""), Error);
  EXPECT_THROW((void)parse_disk_spec(":rw"), Error);
}

}  // namespace
}  // namespace sm::cli
