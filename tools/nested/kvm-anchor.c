// kvm-anchor: keeps the harness kernel's KVM from live-patching its own code as VMs come and go.
//
// KVM counts vCPUs whose local APIC is software-disabled (every new vCPU starts so, until its
// guest sets APIC_SPIV), hardware-disabled (APIC_BASE without the enable bit), or not in the
// kernel at all (a VM without KVM_CREATE_IRQCHIP) in three static keys. Each 0<->1 change of a
// count rewrites every jump site of that key with int3-based text patching (text_poke_bp), and
// each guest that boots and exits makes such changes (a kprobe on
// arch_jump_label_transform_apply counted 6 per run of kvm-smoke.c without this, 4 with only
// the first VM below, the no-irqchip ones; docs/nested-harness.md). Under
// QEMU's multi-threaded TCG that patching is where the harness kernel wedged: RCU stalls with a
// vCPU in asm_exc_int3, kvm-pit spinning on a patched site in __apic_accept_irq
// (docs/nested-harness.md). This program holds two VMs, each with one never-run vCPU: one with
// an in-kernel APIC that is software- and hardware-disabled, one without an in-kernel APIC, so
// the three counts stay at 1 or more for the harness's lifetime and guests booting and exiting
// no longer flip the keys. Started by tools/nested/init,
// built statically into the harness initramfs by tools/nested/prepare.
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int fail(const char* what) {
  fprintf(stderr, "kvm-anchor: %s: %s (the harness runs without it)\n", what, strerror(errno));
  return 1;
}

// A VM with one vCPU, which is never run; irqchip: with the in-kernel irqchip (created before
// the vCPU, so the vCPU gets an in-kernel local APIC), whose APIC is then also hardware-disabled.
static int hold_vm(int kvm, int irqchip) {
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) return fail("KVM_CREATE_VM");
  if (irqchip && ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) return fail("KVM_CREATE_IRQCHIP");
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);  // an in-kernel APIC starts software-disabled
  if (vcpu < 0) return fail("KVM_CREATE_VCPU");
  if (!irqchip) return 0;
  struct kvm_sregs sregs;
  if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) return fail("KVM_GET_SREGS");
  sregs.apic_base &= ~(__u64)0x800;  // IA32_APIC_BASE bit 11: xAPIC global enable
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) return fail("KVM_SET_SREGS (disable the APIC)");
  return 0;
}

int main(void) {
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) return fail("open /dev/kvm");
  if (hold_vm(kvm, 1) || hold_vm(kvm, 0)) return 1;
  printf("kvm-anchor: holding a VM with a disabled in-kernel APIC and one without any\n");
  fflush(stdout);
  for (;;) pause();
}
