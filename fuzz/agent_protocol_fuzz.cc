// libFuzzer target: a peer's byte stream through the agent protocol's frame decoder and message
// decoders, as the host reads the agent and as the agent reads the host; see
// src/agent/fuzz_input.h. Build and run: scripts/fuzz.
#include <cstddef>
#include <cstdint>
#include <span>

#include "agent/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)sm::agent::fuzz::run_one(std::span<const uint8_t>(data, size));
  return 0;
}
