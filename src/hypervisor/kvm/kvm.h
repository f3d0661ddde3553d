// The KVM backend of the hypervisor seam (Documentation/virt/kvm/api.rst). Only this folder
// includes <linux/kvm.h>; everything above sees sm::hv interfaces.
#pragma once

#include <memory>

#include "common/unique_fd.h"
#include "hypervisor/hypervisor.h"

namespace sm::hv::kvm {

// The KVM API version every kernel since 2.6.22 reports (KVM_GET_API_VERSION).
inline constexpr int kApiVersion = 12;

// Opens and checks the KVM device: that it exists, that we may open it, that it speaks API 12,
// that it is not a PVM host (which cannot run a standard kernel), and that it has every
// capability the VMM relies on. Throws sm::Error with the reason and what to do.
[[nodiscard]] UniqueFd probe(const ProbeOptions& opts);

[[nodiscard]] std::unique_ptr<Hypervisor> open(const ProbeOptions& opts);

}  // namespace sm::hv::kvm
