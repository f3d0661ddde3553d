#include "runtime/options.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace sm::runtime {
namespace {

using namespace std::chrono_literals;

TEST(Options, Sizes) {
  EXPECT_EQ(parse_size_mib("512m"), 512u);
  EXPECT_EQ(parse_size_mib("2g"), 2048u);
  EXPECT_EQ(parse_size_mib("1G"), 1024u);
  EXPECT_EQ(parse_size_mib("1.5g"), 1536u);
  EXPECT_EQ(parse_size_mib("1048576"), 1u);
  EXPECT_EQ(parse_size_mib("1k"), 1u) << "rounded up";
  EXPECT_EQ(parse_size_mib("256MiB"), 256u);
  for (const char* bad : {"", "m", "-1m", "0", "12x", "2tb5", "2t"}) EXPECT_THROW((void)parse_size_mib(bad), Error) << bad;
}

TEST(Options, CpusAndDurations) {
  EXPECT_EQ(parse_cpus("2"), 2u);
  EXPECT_EQ(parse_cpus("1.5"), 2u);
  EXPECT_EQ(parse_cpus("0.5"), 1u);
  for (const char* bad : {"", "0", "x", "2c", "-1"}) EXPECT_THROW((void)parse_cpus(bad), Error) << bad;
  EXPECT_EQ(parse_duration("500ms"), 500ms);
  EXPECT_EQ(parse_duration("10s"), 10s);
  EXPECT_EQ(parse_duration("3"), 3s);
  EXPECT_EQ(parse_duration("1.5s"), 1500ms);
  EXPECT_EQ(parse_duration("2m"), 120s);
  for (const char* bad : {"", "s", "10d", "x1"}) EXPECT_THROW((void)parse_duration(bad), Error) << bad;
}

TEST(Options, EnvFile) {
  auto lookup = [](const std::string& n) -> std::optional<std::string> {
    if (n == "HOSTVAR") return "from-host";
    return std::nullopt;
  };
  auto env = parse_env_file("# comment\n\nA=1\n  B = spaced\r\nC=\"quoted\"\nHOSTVAR\nUNSET\nD=x=y\n", lookup);
  EXPECT_EQ(env, (std::vector<std::string>{"A=1", "B= spaced", "C=\"quoted\"", "HOSTVAR=from-host", "D=x=y"}));
  EXPECT_THROW((void)parse_env_file("=novalue\n", lookup), Error);
  EXPECT_THROW((void)parse_env_file("two words=1\n", lookup), Error);
}

}  // namespace
}  // namespace sm::runtime
