// What the in-process benchmarks share: milliseconds, a percentile report with a machine-readable
// "RESULT name p50 p99" line for the wrapping script, and an exec that must succeed.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <supermachine/supermachine.h>

namespace bench {

using Clock = std::chrono::steady_clock;

inline double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

inline void report(const char* name, std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto pct = [&](double p) { return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))]; };
  std::printf("%-13s n=%-4zu p50 %9.2f ms   p99 %9.2f ms   min %9.2f ms   max %9.2f ms\n", name, v.size(), pct(0.5),
              pct(0.99), v.front(), v.back());
  std::printf("RESULT %s %.3f %.3f\n", name, pct(0.5), pct(0.99));
  std::fflush(stdout);
}

inline void check(const sm::ExecResult& r) {
  if (r.exit_code != 0) {
    std::fprintf(stderr, "bench: exec failed (%d): %s\n", r.exit_code, r.err.c_str());
    std::exit(1);
  }
}

}  // namespace bench
