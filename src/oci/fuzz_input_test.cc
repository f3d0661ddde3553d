// The OCI parsers' fuzz harness (fuzz_input.h) over its seed corpus and mutants of it: what the
// libFuzzer target does, a few thousand inputs in every CI run.
#include "oci/fuzz_input.h"

#include <gtest/gtest.h>

#include "common/fuzz_corpus.h"

namespace sm::oci {
namespace {

TEST(OciJsonFuzz, SeedsParse) {
  const auto seeds = testing::fuzz_seeds("oci_json_fuzz");
  ASSERT_GE(seeds.size(), 7u) << "fuzz/corpus/oci_json_fuzz is missing (fuzz/seeds.cc writes it)";
  for (const auto& [name, s] : seeds) EXPECT_TRUE(fuzz::run_one(s)) << name;
}

TEST(OciJsonFuzz, MutantsParseOrFailWithSmError) {
  std::mt19937 rng(5);
  const auto seeds = testing::fuzz_seeds("oci_json_fuzz");
  ASSERT_FALSE(seeds.empty());
  int parsed = 0;
  for (int i = 0; i < 4000; ++i) parsed += fuzz::run_one(testing::mutate(seeds[i % seeds.size()].second, rng));
  EXPECT_GT(parsed, 50);
  EXPECT_LT(parsed, 4000);
}

}  // namespace
}  // namespace sm::oci
