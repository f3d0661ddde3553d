// libFuzzer target: arbitrary bytes become a snapshot state file (StateFile::parse) and, when
// it parses, codec Decoder walks over each section (see src/snapshot/fuzz_input.h).
// Build and run (clang only):
//   CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DSM_FUZZ=ON && cmake --build build-fuzz --target snapshot_fuzz
//   build-fuzz/fuzz/snapshot_fuzz -max_total_time=60
#include <cstddef>
#include <cstdint>
#include <span>

#include "snapshot/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)sm::snapshot::fuzz::run_one(std::span<const uint8_t>(data, size));
  return 0;
}
