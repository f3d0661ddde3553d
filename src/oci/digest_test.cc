#include "oci/digest.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace sm::oci {
namespace {

constexpr const char* kEmptySha = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

TEST(Digest, HashesKnownVectors) {
  EXPECT_EQ(Digest::of(std::string_view()).to_string(), kEmptySha);
  EXPECT_EQ(Digest::of(std::string_view("abc")).hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Digest, StreamingEqualsOneShot) {
  std::string data(100000, 'x');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7);
  Sha256 h;
  for (std::size_t i = 0; i < data.size(); i += 999) h.update(std::string_view(data).substr(i, 999));
  EXPECT_EQ(h.finish(), Digest::of(data));
}

TEST(Digest, ParsesAndPrints) {
  auto d = Digest::parse(kEmptySha);
  EXPECT_EQ(d.algorithm(), "sha256");
  EXPECT_EQ(d.to_string(), kEmptySha);
  EXPECT_EQ(d.file_name(), std::string("sha256-") + d.hex());
  EXPECT_FALSE(d.empty());
  EXPECT_TRUE(Digest().empty());
}

TEST(Digest, RefusesMalformed) {
  for (const char* bad : {"", "sha256", "sha256:", "sha256:abc", "md5:d41d8cd98f00b204e9800998ecf8427e",
                          "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                          "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
                          "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8550",
                          "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"}) {
    EXPECT_THROW((void)Digest::parse(bad), Error) << bad;
    EXPECT_FALSE(Digest::try_parse(bad)) << bad;
  }
  try {
    (void)Digest::parse("md5:abc");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("only sha256"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sm::oci
