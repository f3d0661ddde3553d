// An interrupt line as a device sees it. Devices know nothing of the hypervisor: the VMM hands
// each one an Interrupt that, on KVM, writes an irqfd (or raises a line on the in-kernel
// irqchip). Edge semantics: trigger() delivers one interrupt; devices keep their own status
// registers that the guest reads to learn why. Thread-safe.
#pragma once

namespace sm {

class Interrupt {
 public:
  virtual ~Interrupt() = default;
  virtual void trigger() = 0;
};

}  // namespace sm
