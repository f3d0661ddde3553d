// kvm-smoke: proves a /dev/kvm can run guest code. Used by `scripts/nested --self-test`.
// Opens /dev/kvm, checks KVM_GET_API_VERSION (KVM API, section 4.1), creates a VM and one vCPU,
// runs three real-mode instructions at 0x1000 (mov al,42; out 0x10,al; hlt) and expects
// KVM_EXIT_IO with 42 on port 0x10, then KVM_EXIT_HLT. Prints the steps and the time taken.
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void fail(const char* what) {
  fprintf(stderr, "kvm-smoke: %s: %s\n", what, strerror(errno));
  exit(1);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(void) {
  double t0 = now_ms();
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) fail("open /dev/kvm");
  int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
  printf("KVM_GET_API_VERSION = %d\n", api);
  if (api != KVM_API_VERSION) {
    fprintf(stderr, "kvm-smoke: expected API version %d\n", KVM_API_VERSION);
    return 1;
  }
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) fail("KVM_CREATE_VM");
  printf("KVM_CREATE_VM ok\n");

  const size_t mem_size = 0x10000;
  uint8_t* mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) fail("mmap guest memory");
  static const uint8_t code[] = {0xb0, 42, 0xe6, 0x10, 0xf4};  // mov al,42; out 0x10,al; hlt
  memcpy(mem + 0x1000, code, sizeof code);
  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = mem_size, .userspace_addr = (uintptr_t)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) fail("KVM_SET_USER_MEMORY_REGION");

  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) fail("KVM_CREATE_VCPU");
  int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size < 0) fail("KVM_GET_VCPU_MMAP_SIZE");
  struct kvm_run* run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) fail("mmap kvm_run");

  struct kvm_sregs sregs;
  if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) fail("KVM_GET_SREGS");
  sregs.cs.base = 0;
  sregs.cs.selector = 0;
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) fail("KVM_SET_SREGS");
  struct kvm_regs regs = {.rip = 0x1000, .rflags = 0x2};
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) fail("KVM_SET_REGS");

  int saw_io = 0;
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) fail("KVM_RUN");
    if (run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT &&
        run->io.port == 0x10 && run->io.size == 1) {
      uint8_t value = *((uint8_t*)run + run->io.data_offset);
      printf("guest wrote %u to port 0x10\n", value);
      if (value != 42) return 1;
      saw_io = 1;
    } else if (run->exit_reason == KVM_EXIT_HLT) {
      printf("guest halted\n");
      break;
    } else {
      fprintf(stderr, "kvm-smoke: unexpected exit reason %u\n", run->exit_reason);
      return 1;
    }
  }
  if (!saw_io) {
    fprintf(stderr, "kvm-smoke: guest halted without writing to port 0x10\n");
    return 1;
  }
  printf("kvm-smoke: ok (%.1f ms from open to HLT)\n", now_ms() - t0);
  return 0;
}
