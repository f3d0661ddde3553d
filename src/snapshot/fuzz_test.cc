// Randomized inputs through the same harness as the libFuzzer target (fuzz/snapshot_fuzz.cc), so
// every CI run throws a few thousand hostile state files at StateFile::parse and the Decoder.
#include "snapshot/fuzz_input.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>

namespace sm::snapshot {
namespace {

// Payloads that look like codec output: small fields, counts and length prefixes near their
// edges, so a Decoder walk gets somewhere before it fails.
std::vector<std::byte> plausible_payload(std::mt19937& rng) {
  Encoder e;
  int fields = static_cast<int>(rng() % 12);
  for (int i = 0; i < fields; ++i) {
    uint8_t op = static_cast<uint8_t>(rng());
    e.u8(op);
    switch (rng() % 6) {
      case 0: e.u32(static_cast<uint32_t>(rng())); break;
      case 1: e.u64((uint64_t{rng()} << 32) | rng()); break;
      case 2: e.u32(rng() % 2 ? 0xffffffffu : rng() % 40); break;  // a count or a length
      case 3: e.str(std::string(rng() % 20, 'x')); break;
      case 4: e.boolean(rng() % 2); break;
      default: break;
    }
  }
  return e.take();
}

// A valid file of a few sections, then (mostly) one mutation: a byte changed, a cut, bytes
// appended, or a length field set to an edge value.
std::vector<std::byte> plausible_file(std::mt19937& rng) {
  const char* names[] = {"machine", "platform", "vcpu.0", "vcpu.1", "serial", "i8042", "virtio.0", "agent"};
  std::vector<Section> sections;
  int n = static_cast<int>(rng() % 6);
  for (int i = 0; i < n; ++i) {
    std::string name = names[rng() % std::size(names)] + std::to_string(i);
    sections.push_back({name, plausible_payload(rng)});
  }
  auto b = encode_state_file(sections);
  switch (rng() % 5) {
    case 0: break;  // intact: parses
    case 1: b[rng() % b.size()] = static_cast<std::byte>(rng()); break;
    case 2: b.resize(rng() % b.size()); break;
    case 3: b.resize(b.size() + 1 + rng() % 16, static_cast<std::byte>(rng())); break;
    default: {
      size_t at = kHeaderBytes - 8 + rng() % (b.size() - kHeaderBytes + 8);
      const uint64_t edges[] = {0, 1, 0xffff, 0xffffffff, kMaxSectionBytes, kMaxSectionBytes + 1, ~0ull};
      uint64_t v = edges[rng() % std::size(edges)];
      std::memcpy(b.data() + at, &v, std::min<size_t>(8, b.size() - at));
      break;
    }
  }
  return b;
}

TEST(SnapshotFuzz, ParseAndDecodeSurviveHostileFiles) {
  std::mt19937 rng(2024);
  fuzz::Outcome total;
  auto add = [&](const fuzz::Outcome& o) {
    total.parsed += o.parsed;
    total.refused += o.refused;
    total.sections += o.sections;
    total.decode_errors += o.decode_errors;
  };
  for (int i = 0; i < 5000; ++i) {
    auto file = plausible_file(rng);
    std::vector<uint8_t> in(1 + file.size());
    in[0] = 0;  // as it stands
    std::memcpy(in.data() + 1, file.data(), file.size());
    fuzz::Outcome o;
    ASSERT_NO_THROW(o = fuzz::run_one(in)) << "iteration " << i;
    add(o);
  }
  // The generator must reach every outcome often, or the test proves little.
  EXPECT_GT(total.parsed, 800);
  EXPECT_GT(total.refused, 3000);
  EXPECT_GT(total.sections, 1500);
  EXPECT_GT(total.decode_errors, 500);
  EXPECT_GT(total.sections - total.decode_errors, 100);
  std::printf("hostile state files: %d parsed (%d sections, %d failed to decode), %d refused\n", total.parsed,
              total.sections, total.decode_errors, total.refused);

  // Built mode: arbitrary payloads in a valid container always parse, then meet the Decoder.
  fuzz::Outcome built;
  for (int i = 0; i < 2000; ++i) {
    std::vector<uint8_t> in(1 + rng() % 600);
    for (auto& b : in) b = static_cast<uint8_t>(rng());
    in[0] |= 1;
    fuzz::Outcome o;
    ASSERT_NO_THROW(o = fuzz::run_one(in)) << "built " << i;
    EXPECT_EQ(o.parsed, 1) << "built " << i;
    built.sections += o.sections;
  }
  EXPECT_GT(built.sections, 2000);

  // And plain noise, including the empty input.
  ASSERT_NO_THROW((void)fuzz::run_one({}));
  for (int i = 0; i < 1000; ++i) {
    std::vector<uint8_t> in(rng() % 200);
    for (auto& b : in) b = static_cast<uint8_t>(rng());
    if (!in.empty()) in[0] &= ~1u;
    fuzz::Outcome o;
    ASSERT_NO_THROW(o = fuzz::run_one(in)) << "noise " << i;
    EXPECT_EQ(o.parsed, 0) << "noise " << i;
  }
}

}  // namespace
}  // namespace sm::snapshot
