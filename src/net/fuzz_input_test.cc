// The egress filter's fuzz harness (fuzz_input.h) over its seed corpus and mutants of it: what
// the libFuzzer target does, a few thousand inputs in every CI run.
#include "net/fuzz_input.h"

#include <gtest/gtest.h>

#include "common/fuzz_corpus.h"

namespace sm::net {
namespace {

TEST(NetFuzz, SeedsReachPassAndReply) {
  const auto seeds = testing::fuzz_seeds("net_fuzz");
  ASSERT_GE(seeds.size(), 4u) << "fuzz/corpus/net_fuzz is missing (fuzz/seeds.cc writes it)";
  int passed = 0, replies = 0;
  for (const auto& [name, s] : seeds) {
    const auto o = fuzz::run_one(s);
    EXPECT_GE(o.frames, 8) << name;
    passed += o.passed;
    replies += o.replies;
  }
  EXPECT_GT(passed, 8);
  EXPECT_GT(replies, 4);
}

TEST(NetFuzz, MutantsNeverCrashOrBuildBadReplies) {
  std::mt19937 rng(7);
  const auto seeds = testing::fuzz_seeds("net_fuzz");
  ASSERT_FALSE(seeds.empty());
  int frames = 0;
  for (int i = 0; i < 3000; ++i) frames += fuzz::run_one(testing::mutate(seeds[i % seeds.size()].second, rng)).frames;
  EXPECT_GT(frames, 3000);
}

}  // namespace
}  // namespace sm::net
