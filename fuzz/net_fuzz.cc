// libFuzzer target: guest and outside Ethernet frames through the egress filter (frame parser,
// policy, DNS judging and learning, flow table, the replies it builds); see src/net/fuzz_input.h.
// Build and run: scripts/fuzz (or build-fuzz/fuzz/net_fuzz fuzz/corpus/net_fuzz -max_total_time=60).
#include <cstddef>
#include <cstdint>
#include <span>

#include "net/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)sm::net::fuzz::run_one(std::span<const uint8_t>(data, size));
  return 0;
}
