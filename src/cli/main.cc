#include <cstdio>
#include <cstring>

#include "supermachine_version.h"

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--version") == 0) {
    std::printf("supermachine %s\n", SUPERMACHINE_VERSION);
    return 0;
  }
  std::fprintf(stderr, "usage: supermachine --version\n");
  return 2;
}
