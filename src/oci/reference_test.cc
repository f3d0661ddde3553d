#include "oci/reference.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace sm::oci {
namespace {

const std::string kHex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

struct Case {
  std::string in, canonical, registry, repository, tag, familiar;
};

TEST(Reference, NormalisesLikeDocker) {
  const Case cases[] = {
      {"alpine", "docker.io/library/alpine:latest", "docker.io", "library/alpine", "latest", "alpine:latest"},
      {"alpine:3.20", "docker.io/library/alpine:3.20", "docker.io", "library/alpine", "3.20", "alpine:3.20"},
      {"docker.io/library/alpine:3.20", "docker.io/library/alpine:3.20", "docker.io", "library/alpine", "3.20",
       "alpine:3.20"},
      {"index.docker.io/library/alpine", "docker.io/library/alpine:latest", "docker.io", "library/alpine",
       "latest", "alpine:latest"},
      {"docker.io/alpine", "docker.io/library/alpine:latest", "docker.io", "library/alpine", "latest",
       "alpine:latest"},
      {"team/app:1", "docker.io/team/app:1", "docker.io", "team/app", "1", "team/app:1"},
      {"localhost/app", "localhost/app:latest", "localhost", "app", "latest", "localhost/app:latest"},
      {"localhost:5000/team/app:v1.2-rc_3", "localhost:5000/team/app:v1.2-rc_3", "localhost:5000", "team/app",
       "v1.2-rc_3", "localhost:5000/team/app:v1.2-rc_3"},
      {"127.0.0.1:5000/x", "127.0.0.1:5000/x:latest", "127.0.0.1:5000", "x", "latest", "127.0.0.1:5000/x:latest"},
      {"ghcr.io/a/b/c:t", "ghcr.io/a/b/c:t", "ghcr.io", "a/b/c", "t", "ghcr.io/a/b/c:t"},
      {"Registry/app", "Registry/app:latest", "Registry", "app", "latest", "Registry/app:latest"},
      {"[::1]:5000/app", "[::1]:5000/app:latest", "[::1]:5000", "app", "latest", "[::1]:5000/app:latest"},
      {"ab-c__d---e/f.g_h", "docker.io/ab-c__d---e/f.g_h:latest", "docker.io", "ab-c__d---e/f.g_h", "latest",
       "ab-c__d---e/f.g_h:latest"},
      {"docker.io/library/a/b", "docker.io/library/a/b:latest", "docker.io", "library/a/b", "latest",
       "library/a/b:latest"},
  };
  for (auto& c : cases) {
    SCOPED_TRACE(c.in);
    auto r = Reference::parse(c.in);
    EXPECT_EQ(r.str(), c.canonical);
    EXPECT_EQ(r.registry(), c.registry);
    EXPECT_EQ(r.repository(), c.repository);
    EXPECT_EQ(r.tag(), c.tag);
    EXPECT_EQ(r.familiar(), c.familiar);
    EXPECT_FALSE(r.digest());
    EXPECT_EQ(Reference::parse(r.str()), r);  // canonical form is a fixed point
  }
}

TEST(Reference, Digests) {
  auto r = Reference::parse("localhost:5000/team/app@sha256:" + kHex);
  EXPECT_EQ(r.tag(), "");  // no default tag with a digest
  ASSERT_TRUE(r.digest());
  EXPECT_EQ(r.digest()->hex(), kHex);
  EXPECT_EQ(r.str(), "localhost:5000/team/app@sha256:" + kHex);

  auto both = Reference::parse("alpine:3.20@sha256:" + kHex);
  EXPECT_EQ(both.tag(), "3.20");
  EXPECT_EQ(both.str(), "docker.io/library/alpine:3.20@sha256:" + kHex);
  EXPECT_EQ(both.familiar(), "alpine:3.20@sha256:" + kHex);

  auto base = Reference::parse("alpine");
  EXPECT_EQ(base.with_digest(*r.digest()).str(), "docker.io/library/alpine:latest@sha256:" + kHex);
  EXPECT_EQ(both.with_tag("edge").str(), "docker.io/library/alpine:edge");
  EXPECT_EQ(base.endpoint_host(), "registry-1.docker.io");
  EXPECT_EQ(r.endpoint_host(), "localhost:5000");
  EXPECT_EQ(r.name(), "localhost:5000/team/app");
}

TEST(Reference, RefusesMalformedWithClearMessage) {
  const std::string bad[] = {
      "",
      "Alpine",                 // uppercase repository
      "docker.io/Library/x",    // uppercase repository
      "alpine:",                // empty tag
      ":tag",                   // empty name
      "alpine:bad tag",
      "alpine:-dash",           // tag must start with a word character
      "alpine:" + std::string(129, 'a'),
      "a//b",
      "a/b/",
      "/a",
      "-a",
      "a-",
      "a..b",
      "localhost:port/x",
      "alpine@sha256:abc",      // short digest
      "alpine@sha256:" + kHex + "0",
      "alpine@md5:d41d8cd98f00b204e9800998ecf8427e",  // algorithm we cannot verify
      "alpine@",
      kHex,                     // bare 64-hex is an image ID, not a name
      "a/" + std::string(300, 'b'),
      std::string(5000, 'a'),
      "al\npine",
      "alpine:tag:tag",
      "a_b.c/x",                // '_' cannot be in a host name
      "-host.com/x",
  };
  for (auto& s : bad) {
    SCOPED_TRACE(s);
    try {
      (void)Reference::parse(s);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("invalid reference format"), std::string::npos) << e.what();
    }
  }
  try {
    (void)Reference::parse("Alpine");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("must be lowercase"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sm::oci
