#include "oci/http.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "oci/credentials.h"
#include "oci/registry.h"

namespace sm::oci {
namespace {

TEST(WwwAuthenticate, ParsesDockerHubBearer) {
  auto c = parse_www_authenticate(
      R"(Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull")");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].scheme, "bearer");
  EXPECT_EQ(c[0].params["realm"], "https://auth.docker.io/token");
  EXPECT_EQ(c[0].params["service"], "registry.docker.io");
  EXPECT_EQ(c[0].params["scope"], "repository:library/alpine:pull");
}

TEST(WwwAuthenticate, ParsesSeveralChallengesAndQuoting) {
  auto c = parse_www_authenticate(R"(Basic realm="a, \"b\"" , Bearer Realm=x, error="insufficient_scope")");
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].scheme, "basic");
  EXPECT_EQ(c[0].params["realm"], "a, \"b\"");
  EXPECT_EQ(c[1].scheme, "bearer");
  EXPECT_EQ(c[1].params["realm"], "x");
  EXPECT_EQ(c[1].params["error"], "insufficient_scope");
  auto n = parse_www_authenticate("Negotiate abc==, Basic realm=r");
  ASSERT_EQ(n.size(), 2u);
  EXPECT_EQ(n[1].scheme, "basic");
}

TEST(WwwAuthenticate, RefusesMalformed) {
  for (const char* bad : {"", "   ", ",,", R"(Bearer realm="unterminated)", R"(Bearer realm="a" junk")", "=x"})
    EXPECT_THROW((void)parse_www_authenticate(bad), Error) << bad;
  EXPECT_THROW((void)parse_www_authenticate(std::string(10000, 'a')), Error);
}

TEST(Base64, RoundTripsAndRefusesJunk) {
  for (const std::string& s : std::vector<std::string>{"", "a", "ab", "abc", "alice:s3cret", std::string("\0\xff\x10", 3)}) {
    EXPECT_EQ(base64_decode(base64_encode(s)), s);
  }
  EXPECT_EQ(base64_encode("alice:s3cret"), "YWxpY2U6czNjcmV0");
  EXPECT_EQ(base64_decode("YWxpY2U6czNjcmV0"), "alice:s3cret");
  EXPECT_EQ(base64_decode("YQ"), "a");  // padding optional
  EXPECT_THROW((void)base64_decode("Y"), Error);
  EXPECT_THROW((void)base64_decode("YW*j"), Error);
}

TEST(UrlEncode, EncodesReserved) {
  EXPECT_EQ(url_encode("repository:library/alpine:pull"), "repository%3Alibrary%2Falpine%3Apull");
  EXPECT_EQ(url_encode("a-b_c.d~"), "a-b_c.d~");
}

TEST(Registry, LoopbackDetection) {
  for (const char* h : {"localhost", "localhost:5000", "127.0.0.1", "127.0.0.1:5000", "127.1.2.3:80", "[::1]:5000"})
    EXPECT_TRUE(is_loopback_registry(h)) << h;
  for (const char* h : {"docker.io", "127.example.com", "localhost.example.com:5000", "10.0.0.1:5000", "[::2]:5000"})
    EXPECT_FALSE(is_loopback_registry(h)) << h;
}

struct ConfigDir {
  std::filesystem::path path;
  ConfigDir() {
    std::string t = (std::filesystem::temp_directory_path() / "sm-docker-XXXXXX").string();
    path = ::mkdtemp(t.data());
  }
  ~ConfigDir() { std::filesystem::remove_all(path); }
  void write(const std::string& s) { std::ofstream(path / "config.json") << s; }
};

TEST(DockerConfig, FindsCredentials) {
  ConfigDir d;
  EXPECT_FALSE(docker_config_credentials("docker.io", d.path));  // no file
  d.write(R"({"auths": {
    "https://index.docker.io/v1/": {"auth": "aHViOmh1YnBhc3M="},
    "localhost:5000": {"auth": "YWxpY2U6czNjOnJldA=="},
    "https://ghcr.io": {"username": "u", "password": "p"},
    "empty.example": {}
  }})");
  auto hub = docker_config_credentials("docker.io", d.path);
  ASSERT_TRUE(hub);
  EXPECT_EQ(hub->username, "hub");
  EXPECT_EQ(hub->password, "hubpass");
  auto local = docker_config_credentials("localhost:5000", d.path);
  ASSERT_TRUE(local);
  EXPECT_EQ(local->username, "alice");
  EXPECT_EQ(local->password, "s3c:ret");  // only the first ':' separates
  EXPECT_EQ(docker_config_credentials("ghcr.io", d.path)->password, "p");
  EXPECT_FALSE(docker_config_credentials("empty.example", d.path));
  EXPECT_FALSE(docker_config_credentials("localhost:5001", d.path));
}

TEST(DockerConfig, MalformedIsAClearError) {
  ConfigDir d;
  d.write("{not json");
  EXPECT_THROW((void)docker_config_credentials("docker.io", d.path), Error);
  d.write(R"({"auths": {"docker.io": {"auth": "!!!"}}})");
  EXPECT_THROW((void)docker_config_credentials("docker.io", d.path), Error);
  d.write(R"({"auths": {"docker.io": {"auth": "bm9jb2xvbg=="}}})");  // "nocolon"
  EXPECT_THROW((void)docker_config_credentials("docker.io", d.path), Error);
  d.write(R"({"credsStore": "desktop"})");
  EXPECT_FALSE(docker_config_credentials("docker.io", d.path));
}

}  // namespace
}  // namespace sm::oci
