// Test support (header-only, unit tests only): the seed corpora of the libFuzzer targets
// (fuzz/corpus/<target>/, written by fuzz/seeds.cc) and a small mutator, so that the unit tests
// run every seed, and a few thousand mutants of them, through the same harness as the fuzzer.
// SM_FUZZ_CORPUS_DIR is defined for the unit test binary by the root CMakeLists.txt.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace sm::testing {

using Seed = std::vector<uint8_t>;

inline std::vector<std::pair<std::string, Seed>> fuzz_seeds(const std::string& target) {
  std::vector<std::pair<std::string, Seed>> out;
  const std::filesystem::path dir = std::filesystem::path(SM_FUZZ_CORPUS_DIR) / target;
  if (!std::filesystem::is_directory(dir)) return out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(e.path(), std::ios::binary);
    out.emplace_back(e.path().filename().string(),
                     Seed(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
  }
  std::sort(out.begin(), out.end());
  return out;
}

// One mutant of `s`: a few byte flips, an interesting value, a cut, a duplicated run.
inline Seed mutate(Seed s, std::mt19937& rng) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int i = 0; i < edits && !s.empty(); ++i) {
    const size_t at = rng() % s.size();
    switch (rng() % 5) {
      case 0: s[at] ^= static_cast<uint8_t>(1u << (rng() % 8)); break;
      case 1: s[at] = static_cast<uint8_t>(std::vector<int>{0, 1, 0x7f, 0x80, 0xff}[rng() % 5]); break;
      case 2: s.resize(at); break;
      case 3: {
        const size_t n = std::min<size_t>(1 + rng() % 16, s.size() - at);
        s.insert(s.begin() + static_cast<std::ptrdiff_t>(at), s.begin() + static_cast<std::ptrdiff_t>(at),
                 s.begin() + static_cast<std::ptrdiff_t>(at + n));
        break;
      }
      default: s[at] = static_cast<uint8_t>(rng()); break;
    }
  }
  return s;
}

}  // namespace sm::testing
