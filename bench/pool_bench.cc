// The in-process half of bench/pool: acquire() from a warm pool plus the first exec result,
// against the exec round trip on a running VM, p50/p99 over repetitions, through the public
// library. Between acquires it waits until the pool is refilled: the measure is a warm pool's.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>
#include <vector>

#include <supermachine/supermachine.h>

using Clock = std::chrono::steady_clock;

namespace {

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

void report(const char* name, std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto pct = [&](double p) { return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))]; };
  std::printf("%-13s n=%-4zu p50 %9.2f ms   p99 %9.2f ms   min %9.2f ms   max %9.2f ms\n", name, v.size(), pct(0.5),
              pct(0.99), v.front(), v.back());
  std::printf("RESULT %s %.3f %.3f\n", name, pct(0.5), pct(0.99));
  std::fflush(stdout);
}

void check(const sm::ExecResult& r) {
  if (r.exit_code != 0) {
    std::fprintf(stderr, "pool_bench: exec failed (%d): %s\n", r.exit_code, r.err.c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: pool_bench OCI_LAYOUT REPS\n");
    return 2;
  }
  const int reps = std::atoi(argv[2]);
  try {
    sm::Image image = sm::Image::load(argv[1], "busybox");
    sm::PoolConfig pc;
    pc.vm.memory_mib = 256;
    pc.min = 2;
    pc.max = 4;
    sm::Pool pool(image, pc);
    std::vector<double> warm, acquire;
    {
      sm::Vm vm = pool.acquire();
      check(vm.exec({"true"}));
      for (int i = 0; i < reps; ++i) {
        auto t0 = Clock::now();
        check(vm.exec({"true"}));
        warm.push_back(ms(Clock::now() - t0));
      }
    }
    for (int i = 0; i < reps; ++i) {
      for (int w = 0; w < 6000 && pool.ready() < pc.min; ++w) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      auto t0 = Clock::now();
      sm::Vm vm = pool.acquire();
      check(vm.exec({"true"}));
      acquire.push_back(ms(Clock::now() - t0));
    }
    report("warm_exec", warm);
    report("acquire_exec", acquire);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pool_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
