// supermachine boot: run a kernel (and initramfs, disks, vsock) in a microVM, with the guest
// console on stdout and stdin as its input, and exit with the guest's status.
#include <signal.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <memory>

#include "cli/boot_options.h"
#include "cli/command.h"
#include "vmm/machine.h"

namespace sm::cli {
namespace {

void write_stdout(std::span<const std::byte> bytes) {
  const auto* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = ::write(STDOUT_FILENO, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // stdout is gone (closed pipe): drop console output, keep the VM going
    p += n;
    left -= static_cast<size_t>(n);
  }
}

const CommandRegistration kBoot{{
    "boot",
    "Boot a Linux kernel in a microVM; the guest console goes to stdout, the exit status is the guest's",
    [](CLI::App& sub) -> Action {
      auto opts = std::make_shared<BootOptions>();
      add_boot_options(sub, *opts);
      return [opts] {
        // A reader that went away must not kill the VMM halfway through a write.
        ::signal(SIGPIPE, SIG_IGN);
        vmm::MachineConfig cfg = to_machine_config(*opts);
        cfg.console = write_stdout;
        cfg.console_input_fd = STDIN_FILENO;
        cfg.stop_on_signals = true;
        vmm::Machine machine(std::move(cfg));
        int status = machine.run();
        spdlog::debug("VM ended with status {}: {}", status, machine.stop_reason());
        return status;
      };
    },
}};

}  // namespace
}  // namespace sm::cli
