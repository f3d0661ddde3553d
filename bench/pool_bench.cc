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

#include "bench_stats.h"

using bench::check;
using bench::Clock;
using bench::ms;
using bench::report;

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
