#include "hypervisor/hypervisor.h"

#include <fmt/format.h>

#include "hypervisor/kvm/kvm.h"

namespace sm::hv {

std::unique_ptr<Hypervisor> Hypervisor::open(const ProbeOptions& opts) {
  // KVM is the only backend on Linux; HVF (macOS) and WHP (Windows) slot in here by platform.
  return kvm::open(opts);
}

std::string describe(const Exit& e) {
  struct Visitor {
    std::string operator()(const exit::Mmio& m) const {
      return fmt::format("mmio {} {:#x} ({} bytes)", m.is_write ? "write" : "read", m.addr, m.data.size());
    }
    std::string operator()(const exit::Pio& p) const {
      return fmt::format("pio {} port {:#x} ({} x {} bytes)", p.is_write ? "out" : "in", p.port,
                         p.size ? p.data.size() / p.size : 0, p.size);
    }
    std::string operator()(const exit::Hlt&) const { return "hlt"; }
    std::string operator()(const exit::Shutdown&) const { return "shutdown (triple fault or reset)"; }
    std::string operator()(const exit::SystemEvent& s) const {
      return fmt::format("system event {}", s.raw);
    }
    std::string operator()(const exit::InternalError& i) const { return "internal error: " + i.detail; }
    std::string operator()(const exit::Interrupted&) const { return "interrupted"; }
  };
  return std::visit(Visitor{}, e);
}

}  // namespace sm::hv
