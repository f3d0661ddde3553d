// Shared by the randomized unit test (fuzz_input_test.cc) and the libFuzzer target
// (fuzz/oci_json_fuzz.cc): one input is text a registry or an image archive hands us, parsed by
// the parser that byte 0 picks: an image manifest, an index, an image config, a reference, a
// platform, a digest, or a WWW-Authenticate header. The only acceptable outcomes are a value or
// sm::Error; any other exception (a JSON type error escaping, std::out_of_range, ...), a crash
// or a sanitizer report is a bug.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "common/error.h"
#include "oci/digest.h"
#include "oci/http.h"
#include "oci/image_config.h"
#include "oci/manifest.h"
#include "oci/reference.h"

namespace sm::oci::fuzz {

// True when the input parsed.
inline bool run_one(std::span<const uint8_t> in) {
  if (in.empty()) return false;
  const uint8_t pick = in[0];
  const std::string_view text(reinterpret_cast<const char*>(in.data()) + 1, in.size() - 1);
  try {
    switch (pick % 7) {
      case 0: (void)Manifest::parse(text); break;
      case 1: (void)Index::parse(text); break;
      case 2: (void)RunConfig::parse(text); break;
      case 3: (void)Reference::parse(text); break;
      case 4: (void)Platform::parse(text); break;
      case 5: return Digest::try_parse(text).has_value();
      default: (void)parse_www_authenticate(text); break;
    }
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace sm::oci::fuzz
