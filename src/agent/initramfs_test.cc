#include "agent/initramfs.h"

#include <sys/stat.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/error.h"

namespace sm::agent {
namespace {

struct Parsed {
  std::string name;
  uint32_t mode, rdev_major, rdev_minor;
  std::string data;
};

uint32_t hex_field(const std::string& a, size_t off) { return static_cast<uint32_t>(std::stoul(a.substr(off, 8), nullptr, 16)); }

// An independent newc reader (Documentation/driver-api/early-userspace/buffer-format.rst).
std::vector<Parsed> parse(const std::string& a) {
  std::vector<Parsed> out;
  size_t pos = 0;
  for (;;) {
    EXPECT_EQ(pos % 4, 0u) << "every header starts 4-byte aligned";
    EXPECT_EQ(a.substr(pos, 6), "070701");
    uint32_t mode = hex_field(a, pos + 14);
    uint32_t size = hex_field(a, pos + 54);
    uint32_t rmaj = hex_field(a, pos + 78), rmin = hex_field(a, pos + 86);
    uint32_t namesize = hex_field(a, pos + 94);
    std::string name = a.substr(pos + 110, namesize - 1);
    EXPECT_EQ(a[pos + 110 + namesize - 1], '\0');
    pos += 110 + namesize;
    pos = (pos + 3) & ~size_t{3};
    if (name == "TRAILER!!!") break;
    out.push_back({name, mode, rmaj, rmin, a.substr(pos, size)});
    pos += size;
    pos = (pos + 3) & ~size_t{3};
  }
  EXPECT_EQ(pos, a.size());
  return out;
}

TEST(AgentInitramfs, NewcLayout) {
  auto a = make_cpio({{"dir", S_IFDIR | 0755, 0, 0, {}}, {"dir/f", S_IFREG | 0644, 0, 0, "abcde"},
                      {"dev", S_IFDIR | 0755, 0, 0, {}}, {"dev/console", S_IFCHR | 0600, 5, 1, {}}});
  auto e = parse(a);
  ASSERT_EQ(e.size(), 4u);
  EXPECT_EQ(e[1].name, "dir/f");
  EXPECT_EQ(e[1].data, "abcde");
  EXPECT_EQ(e[1].mode, S_IFREG | 0644u);
  EXPECT_EQ(e[3].mode, S_IFCHR | 0600u);
  EXPECT_EQ(e[3].rdev_major, 5u);
  EXPECT_EQ(e[3].rdev_minor, 1u);
  EXPECT_THROW((void)make_cpio({{"/abs", S_IFREG | 0644, 0, 0, {}}}), Error);
}

TEST(AgentInitramfs, HoldsTheAgentAsInit) {
  std::filesystem::path bin = std::filesystem::temp_directory_path() / "sm-initramfs-test-bin";
  std::ofstream(bin, std::ios::binary) << std::string("\x7f" "ELF-pretend", 12);
  auto e = parse(make_agent_initramfs(bin));
  std::filesystem::remove(bin);
  bool init = false, console = false;
  for (const auto& x : e) {
    if (x.name == "init") {
      init = true;
      EXPECT_EQ(x.mode, S_IFREG | 0755u);
      EXPECT_EQ(x.data.size(), 12u);
    }
    if (x.name == "dev/console") console = x.rdev_major == 5 && x.rdev_minor == 1;
  }
  EXPECT_TRUE(init);
  EXPECT_TRUE(console);
  EXPECT_THROW((void)make_agent_initramfs("/nonexistent/sm-agent"), Error);
}

// The archive the build produces is one the system's cpio tool reads, with the real agent.
TEST(AgentInitramfs, BuiltArchiveListsWithCpio) {
  std::filesystem::path built = std::filesystem::path(SM_AGENT_BINARY).parent_path() / "initramfs.cpio";
  if (!std::filesystem::exists(built) || std::system("command -v cpio >/dev/null") != 0)
    GTEST_SKIP() << "no built initramfs or no cpio tool";
  std::string cmd = "cpio -it --quiet < " + built.string() + " > " + built.string() + ".list";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ifstream l(built.string() + ".list");
  std::string all((std::istreambuf_iterator<char>(l)), std::istreambuf_iterator<char>());
  std::filesystem::remove(built.string() + ".list");
  EXPECT_NE(all.find("init\n"), std::string::npos) << all;
  EXPECT_NE(all.find("dev/console\n"), std::string::npos) << all;
}

}  // namespace
}  // namespace sm::agent
