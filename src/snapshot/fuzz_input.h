// Shared by the randomized unit test (fuzz_test.cc) and the libFuzzer target
// (fuzz/snapshot_fuzz.cc): one input goes through StateFile::parse and, when it parses, a codec
// Decoder walks each section. The only acceptable outcomes are a StateFile or SnapshotError (from
// the container or the Decoder); any other exception, a crash or a sanitizer report is a bug.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "snapshot/codec.h"
#include "snapshot/format.h"

namespace sm::snapshot::fuzz {

struct Outcome {
  int parsed = 0;          // inputs StateFile::parse accepted
  int refused = 0;         // inputs it refused
  int sections = 0;        // sections decoded
  int decode_errors = 0;   // sections whose Decoder walk threw SnapshotError
};

// The payload steers its own Decoder: each step reads an opcode byte and then the field it
// names, so hostile payloads reach every Decoder path (short reads, huge counts and lengths).
inline bool walk_section(std::string_view name, std::span<const std::byte> payload) {
  Decoder d(payload, "section '" + std::string(name) + "'");
  try {
    for (int step = 0; step < 4096 && d.remaining() > 0; ++step) {
      uint8_t op = d.u8();
      switch (op % 11) {
        case 0: (void)d.u8(); break;
        case 1: (void)d.u16(); break;
        case 2: (void)d.u32(); break;
        case 3: (void)d.u64(); break;
        case 4: (void)d.i64(); break;
        case 5: (void)d.boolean(); break;
        case 6: {
          std::byte buf[32];
          d.fixed(std::span(buf, op / 11 % sizeof buf));
          break;
        }
        case 7: (void)d.bytes(op < 128 ? 64 : 1u << 20); break;
        case 8: (void)d.str(op < 128 ? 16 : 4096); break;
        case 9: (void)d.count(op < 128 ? 8 : 1u << 30, op / 11 % 5); break;
        case 10: d.finish(); break;
      }
    }
    d.finish();
    return true;
  } catch (const SnapshotError&) {
    return false;
  }
}

inline void decode_all(const StateFile& f, Outcome& out) {
  for (const auto& name : f.names()) {
    ++out.sections;
    if (!walk_section(name, f.section(name))) ++out.decode_errors;
  }
}

inline void parse_and_decode(std::span<const std::byte> bytes, Outcome& out) {
  try {
    StateFile f = StateFile::parse(bytes);
    ++out.parsed;
    decode_all(f, out);
  } catch (const SnapshotError&) {
    ++out.refused;
  }
}

// Byte 0 picks the mode. Even: the rest is a state file as it stands. Odd: the rest describes
// sections (a length byte, then that many payload bytes, repeated), encoded into a valid file
// first, so the fuzzer gets past the checksums to the Decoder.
inline Outcome run_one(std::span<const uint8_t> in) {
  Outcome out;
  if (in.empty()) {
    parse_and_decode({}, out);
    return out;
  }
  bool build = in[0] & 1;
  auto rest = std::as_bytes(in.subspan(1));
  if (!build) {
    parse_and_decode(rest, out);
    return out;
  }
  std::vector<Section> sections;
  while (!rest.empty() && sections.size() < 64) {
    size_t n = std::min<size_t>(static_cast<uint8_t>(rest[0]), rest.size() - 1);
    auto payload = rest.subspan(1, n);
    sections.push_back({"s." + std::to_string(sections.size()), {payload.begin(), payload.end()}});
    rest = rest.subspan(1 + n);
  }
  auto file = encode_state_file(sections);  // valid by construction: a throw here is a bug
  parse_and_decode(file, out);
  return out;
}

}  // namespace sm::snapshot::fuzz
