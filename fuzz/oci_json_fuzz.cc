// libFuzzer target: manifests, indexes, image configs, references, platforms, digests and
// WWW-Authenticate headers as registries and archives hand them to us; see src/oci/fuzz_input.h.
// Build and run: scripts/fuzz.
#include <cstddef>
#include <cstdint>
#include <span>

#include "oci/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)sm::oci::fuzz::run_one(std::span<const uint8_t>(data, size));
  return 0;
}
