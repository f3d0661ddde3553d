#include "oci/image_config.h"

#include <gtest/gtest.h>

#include <string>

#include "common/error.h"
#include "oci/manifest.h"
#include "oci/test_images.h"

namespace sm::oci {
namespace {

const std::string kDiff1 = "sha256:" + std::string(64, 'a');
const std::string kDiff2 = "sha256:" + std::string(64, 'b');

// What `docker inspect` style configs look like, nulls included.
std::string docker_config() {
  return R"({
    "architecture": "amd64", "os": "linux",
    "config": {
      "Hostname": "", "User": "nginx:nginx", "Env": ["PATH=/usr/bin:/bin", "EMPTY="],
      "Cmd": null, "Entrypoint": ["/docker-entrypoint.sh", "nginx"], "WorkingDir": "/srv",
      "ExposedPorts": {"80/tcp": {}, "443": {}, "53/udp": {}}, "StopSignal": "SIGQUIT",
      "Labels": {"a": "b"}, "Volumes": null, "OnBuild": null
    },
    "rootfs": {"type": "layers", "diff_ids": [")" + kDiff1 + R"(", ")" + kDiff2 + R"("]},
    "history": [{"created_by": "x"}]
  })";
}

TEST(RunConfig, ParsesADockerConfig) {
  auto rc = RunConfig::parse(docker_config());
  EXPECT_EQ(rc.entrypoint, (std::vector<std::string>{"/docker-entrypoint.sh", "nginx"}));
  EXPECT_TRUE(rc.cmd.empty());
  EXPECT_EQ(rc.env, (std::vector<std::string>{"PATH=/usr/bin:/bin", "EMPTY="}));
  EXPECT_EQ(rc.working_dir, "/srv");
  EXPECT_EQ(rc.user, "nginx:nginx");
  EXPECT_EQ(rc.stop_signal, "SIGQUIT");
  EXPECT_EQ(rc.exposed_ports, (std::vector<std::string>{"443/tcp", "53/udp", "80/tcp"}));
  EXPECT_EQ(rc.os, "linux");
  EXPECT_EQ(rc.architecture, "amd64");
  ASSERT_EQ(rc.diff_ids.size(), 2u);
  EXPECT_EQ(rc.diff_ids[1].str(), kDiff2);
  EXPECT_EQ(rc.argv(), rc.entrypoint);
}

TEST(RunConfig, MinimalConfigHasEmptyFields) {
  auto rc = RunConfig::parse(R"({"rootfs": {"type": "layers", "diff_ids": []}})");
  EXPECT_TRUE(rc.argv().empty());
  EXPECT_TRUE(rc.env.empty());
  EXPECT_EQ(rc.working_dir, "");
  EXPECT_TRUE(rc.diff_ids.empty());
  rc = RunConfig::parse(R"({"config": null})");
  EXPECT_TRUE(rc.argv().empty());
}

TEST(RunConfig, ParsesTheProjectsTestImages) {
  if (!testing::have_tool("umoci")) GTEST_SKIP() << "umoci is not installed; scripts/setup installs it";
  auto layout = testing::test_images_dir() / "oci";
  auto manifest = nlohmann::json::parse(
      testing::slurp(testing::layout_blob(layout, testing::layout_manifest(layout, "busybox"))));
  auto rc = RunConfig::parse(testing::slurp(
      testing::layout_blob(layout, manifest.at("config").at("digest").get<std::string>())));
  EXPECT_EQ(rc.cmd, (std::vector<std::string>{"sh"}));
  EXPECT_EQ(rc.working_dir, "/root");
  EXPECT_NE(std::find(rc.env.begin(), rc.env.end(), "GREETING=hello"), rc.env.end());
  EXPECT_EQ(rc.exposed_ports, (std::vector<std::string>{"8080/tcp"}));
  EXPECT_EQ(rc.diff_ids.size(), 1u);

  manifest = nlohmann::json::parse(
      testing::slurp(testing::layout_blob(layout, testing::layout_manifest(layout, "multi"))));
  rc = RunConfig::parse(testing::slurp(
      testing::layout_blob(layout, manifest.at("config").at("digest").get<std::string>())));
  EXPECT_EQ(rc.argv(), (std::vector<std::string>{"/bin/sh", "-c", "cat /data/file"}));
  EXPECT_EQ(rc.user, "1000:1000");
  EXPECT_EQ(rc.diff_ids.size(), 4u);
}

void expect_error(const std::string& json, const std::string& needle) {
  try {
    (void)RunConfig::parse(json, "config blob X");
    ADD_FAILURE() << "accepted: " << json.substr(0, 200);
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("config blob X"), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }
}

TEST(RunConfig, RejectsMalformedConfigs) {
  expect_error("", "not valid JSON");
  expect_error("{\"config\": {\"Cmd\": [\"a\"", "not valid JSON");  // truncated
  expect_error("[1, 2]", "not a JSON object");
  expect_error(R"({"config": "sh"})", "\"config\" must be an object");
  expect_error(R"({"config": {"Cmd": "sh -c x"}})", "\"config.Cmd\" must be an array");
  expect_error(R"({"config": {"Entrypoint": ["sh", 1]}})", "\"config.Entrypoint\" must contain only strings");
  expect_error(R"({"config": {"Env": ["=x"]}})", "config.Env");
  expect_error(R"({"config": {"WorkingDir": 5}})", "\"config.WorkingDir\" must be a string");
  expect_error(R"({"config": {"User": {"name": "x"}}})", "\"config.User\"");
  expect_error(R"({"config": {"ExposedPorts": ["80/tcp"]}})", "\"config.ExposedPorts\" must be an object");
  expect_error(R"({"config": {"ExposedPorts": {"99999/tcp": {}}}})", "invalid port \"99999/tcp\"");
  expect_error(R"({"config": {"ExposedPorts": {"80/icmp": {}}}})", "invalid port");
  expect_error(R"({"config": {"ExposedPorts": {"http": {}}}})", "invalid port");
  expect_error(R"({"rootfs": {"type": "layers", "diff_ids": ["sha256:xyz"]}})", "invalid digest");
  expect_error(R"({"rootfs": {"type": "squash", "diff_ids": []}})", "rootfs.type");
  expect_error(R"({"rootfs": []})", "\"rootfs\" must be an object");
  expect_error(R"({"os": 7})", "\"os\" must be a string");
  expect_error(std::string(kMaxConfigBytes + 1, ' '), "byte limit");
}

}  // namespace
}  // namespace sm::oci
