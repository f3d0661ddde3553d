// Build-time tool: packs the agent initramfs (src/agent/initramfs.h).
//   sm-mkinitramfs AGENT_BINARY OUTPUT
#include <cstdio>
#include <exception>

#include "agent/initramfs.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: sm-mkinitramfs AGENT_BINARY OUTPUT\n");
    return 2;
  }
  try {
    sm::agent::write_agent_initramfs(argv[1], argv[2]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sm-mkinitramfs: %s\n", e.what());
    return 1;
  }
  return 0;
}
