// sandbox: run an untrusted script in a throwaway microVM. The script goes in as a file, its
// input streams in on stdin, its result comes back as a file; nothing survives the VM.
//
//   example-sandbox [IMAGE | ARCHIVE_OR_LAYOUT NAME]
#include <cstdio>
#include <string>
#include <string_view>

#include <supermachine/supermachine.h>

const char* kScript = R"(#!/bin/sh
# Counts the lines of stdin and writes the total to /out/count.
lines=0
while read -r line; do
  echo "got: $line"
  lines=$((lines + 1))
done
mkdir -p /out && echo "$lines" > /out/count
echo "done" >&2
exit 3
)";

int main(int argc, char** argv) try {
  sm::Image image = argc > 2 ? sm::Image::load(argv[1], argv[2]) : sm::Image::get(argc > 1 ? argv[1] : "alpine");
  sm::VmConfig config;
  config.memory_mib = 256;
  sm::Vm vm = sm::Vm::start(image, config);

  vm.write_file("/work/count.sh", kScript, 0755);

  // Stream three lines in; pass the script's output on as it arrives.
  int sent = 0;
  sm::ExecStream io;
  io.stdin_source = [&] { return ++sent <= 3 ? "line " + std::to_string(sent) + "\n" : std::string(); };
  io.on_stdout = [](std::string_view s) { std::fwrite(s.data(), 1, s.size(), stdout); };
  io.on_stderr = [](std::string_view s) { std::fwrite(s.data(), 1, s.size(), stderr); };
  sm::ExecStatus st = vm.exec_stream({"/work/count.sh"}, io);

  std::printf("exit code %d in %.1f ms\n", st.exit_code, st.duration.count() / 1e6);
  std::printf("count: %s", vm.read_file("/out/count").c_str());
  return 0;
} catch (const sm::Error& e) {
  std::fprintf(stderr, "sandbox: %s\n", e.what());
  return 1;
}
