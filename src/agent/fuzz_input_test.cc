// The agent protocol's fuzz harness (fuzz_input.h) over its seed corpus and mutants of it: what
// the libFuzzer target does, a few thousand inputs in every CI run.
#include "agent/fuzz_input.h"

#include <gtest/gtest.h>

#include "common/fuzz_corpus.h"

namespace sm::agent {
namespace {

TEST(AgentProtocolFuzz, SeedsDecodeOnBothEnds) {
  const auto seeds = testing::fuzz_seeds("agent_protocol_fuzz");
  ASSERT_GE(seeds.size(), 4u) << "fuzz/corpus/agent_protocol_fuzz is missing (fuzz/seeds.cc writes it)";
  for (const auto& [name, s] : seeds) {
    const auto o = fuzz::run_one(s);
    EXPECT_GT(o.messages, 0) << name;
    EXPECT_EQ(o.refused, 0) << name << ": a seed the real encoders wrote was refused";
  }
}

TEST(AgentProtocolFuzz, MutantsAreDecodedOrRefusedNeverWorse) {
  std::mt19937 rng(99);
  const auto seeds = testing::fuzz_seeds("agent_protocol_fuzz");
  ASSERT_FALSE(seeds.empty());
  int refused = 0, messages = 0;
  for (int i = 0; i < 4000; ++i) {
    const auto o = fuzz::run_one(testing::mutate(seeds[i % seeds.size()].second, rng));
    refused += o.refused;
    messages += o.messages;
  }
  EXPECT_GT(refused, 100);   // the mutants reach the error paths
  EXPECT_GT(messages, 100);  // and still decode often
}

}  // namespace
}  // namespace sm::agent
