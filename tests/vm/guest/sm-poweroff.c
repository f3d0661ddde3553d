// Powers the microVM off with an exit status, through supermachine's paravirtual exit port
// (I/O port 0x501, see docs/boot.md): there is no ACPI in the guest, so this is how a guest
// program reports "done, with status N". Usage: sm-poweroff [STATUS]
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>
#include <unistd.h>

int main(int argc, char** argv) {
  int status = argc > 1 ? atoi(argv[1]) : 0;
  if (status < 0 || status > 255) {
    fprintf(stderr, "sm-poweroff: status must be 0..255\n");
    return 2;
  }
  sync();
  if (ioperm(0x501, 1, 1) != 0) {
    perror("sm-poweroff: ioperm");
    return 1;
  }
  outb((unsigned char)status, 0x501);
  pause();  // the VMM stops every vCPU on the write
  return 1;
}
