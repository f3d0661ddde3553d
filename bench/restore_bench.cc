// The in-process half of bench/restore: through the public library, on one KVM, for the
// busybox test image at 256 MiB (and 2048 MiB), p50/p99 over repetitions of
//   restore   Vm::restore(snapshot) to the first exec result (`true`)
//   cold      Vm::start with snapshot = false to the first exec result
//   exec      the exec round trip on a running VM
//   restore2g the same restore as `restore`, of a 2048 MiB guest
// and, once, where a restore's time goes (the runtime's debug line). Prints "RESULT name p50 p99"
// lines that bench/restore combines with QEMU and the bare-KVM floor.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>
#include <supermachine/supermachine.h>

#include "bench_stats.h"

namespace fs = std::filesystem;
using bench::Clock;

namespace {

using bench::check;
using bench::ms;
using bench::report;

std::vector<double> restores(const fs::path& snap, int reps) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto t0 = Clock::now();
    sm::Vm vm = sm::Vm::restore(snap);
    check(vm.exec({"true"}));
    t.push_back(ms(Clock::now() - t0));
  }
  return t;
}

fs::path make_snapshot(const sm::Image& image, uint64_t mib, const fs::path& dir, std::vector<double>* execs,
                       int exec_reps) {
  sm::VmConfig c;
  c.memory_mib = mib;
  c.snapshot = false;
  sm::Vm vm = sm::Vm::start(image, c);
  check(vm.exec({"true"}));
  if (execs)
    for (int i = 0; i < exec_reps; ++i) {
      auto t0 = Clock::now();
      check(vm.exec({"true"}));
      execs->push_back(ms(Clock::now() - t0));
    }
  return vm.snapshot(dir);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: restore_bench OCI_LAYOUT WORK_DIR REPS [COLD_REPS]\n");
    return 2;
  }
  const fs::path layout = argv[1], work = argv[2];
  const int reps = std::atoi(argv[3]);
  const int cold_reps = argc > 4 ? std::atoi(argv[4]) : 3;
  try {
    sm::Image image = sm::Image::load(layout, "busybox");
    std::vector<double> exec_t;
    fs::path snap = make_snapshot(image, 256, work / "snap-256", &exec_t, reps);
    (void)restores(snap, 2);  // warm the page cache and the code paths
    std::vector<double> restore_t = restores(snap, reps);
    report("restore", restore_t);
    report("exec", exec_t);

    // One restore with the runtime's phase timings shown.
    spdlog::set_level(spdlog::level::debug);
    { sm::Vm vm = sm::Vm::restore(snap); check(vm.exec({"true"})); }
    spdlog::set_level(spdlog::level::warn);

    std::vector<double> cold_t;
    sm::VmConfig c;
    c.memory_mib = 256;
    c.snapshot = false;
    for (int i = 0; i < cold_reps; ++i) {
      auto t0 = Clock::now();
      sm::Vm vm = sm::Vm::start(image, c);
      check(vm.exec({"true"}));
      cold_t.push_back(ms(Clock::now() - t0));
    }
    report("cold", cold_t);

    fs::path big = make_snapshot(image, 2048, work / "snap-2048", nullptr, 0);
    (void)restores(big, 2);
    report("restore2g", restores(big, reps));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "restore_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
