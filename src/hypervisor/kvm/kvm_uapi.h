// <linux/kvm.h> made safe for C++. Linux 6.1's uapi headers declare flexible array members with
// __DECLARE_FLEX_ARRAY, which wraps them in a struct holding an empty struct; an empty struct is
// 1 byte in C++ (0 in C), so in C++ struct kvm_cpuid2 grows to 12 bytes with its entries at
// offset 12 instead of 8, and every ioctl number that encodes such a struct's size is wrong
// (KVM_GET_SUPPORTED_CPUID fails with EINVAL). Linux fixed the macro for C++ later (6.5); until
// Debian's headers have it, we define it the same way before the KVM headers see it.
#pragma once

#include <linux/stddef.h>

#undef __DECLARE_FLEX_ARRAY
#define __DECLARE_FLEX_ARRAY(TYPE, NAME) TYPE NAME[0]

#include <linux/kvm.h>

#include <cstddef>

static_assert(sizeof(kvm_cpuid2) == 8 && offsetof(kvm_cpuid2, entries) == 8,
              "struct kvm_cpuid2 must have the kernel's C layout");
static_assert(sizeof(kvm_msrs) == 8 && offsetof(kvm_msrs, entries) == 8,
              "struct kvm_msrs must have the kernel's C layout");
static_assert(sizeof(kvm_signal_mask) == 4, "struct kvm_signal_mask must have the kernel's C layout");
static_assert(sizeof(kvm_msr_list) == 4 && offsetof(kvm_msr_list, indices) == 4,
              "struct kvm_msr_list must have the kernel's C layout");
static_assert(sizeof(kvm_xsave) == 4096, "struct kvm_xsave must have the kernel's C layout");
static_assert(sizeof(kvm_irqchip) == 520 && sizeof(kvm_pit_state2) == 112 &&
                  sizeof(kvm_vcpu_events) == 64 && sizeof(kvm_debugregs) == 128 &&
                  sizeof(kvm_clock_data) == 48,
              "KVM state structs must have the kernel's C layout");

#include <cerrno>
#include <sys/ioctl.h>

namespace sm::hv::kvm {

// ioctl that retries when a signal interrupted it before it did anything (KVM_RUN is not
// called through this: its EINTR is a result, not a hiccup).
template <class Arg>
int xioctl(int fd, unsigned long req, Arg arg) {
  int r;
  do {
    r = ::ioctl(fd, req, arg);
  } while (r < 0 && errno == EINTR);
  return r;
}

}  // namespace sm::hv::kvm
