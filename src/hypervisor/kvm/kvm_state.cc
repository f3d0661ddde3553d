// KVM <-> neutral snapshot state (kvm_state.h). Struct layouts: arch/x86/include/uapi/asm/kvm.h.
#include "hypervisor/kvm/kvm_state.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include "common/error.h"

namespace sm::hv::kvm {
namespace {

// The segment translations are public (kvm.cc uses them); overloads below must not hide them.
using kvm::from_kvm;
using kvm::to_kvm;

// KVM_GET_MSRS / KVM_SET_MSRS refuse nmsrs >= MAX_IO_MSRS (256) with E2BIG (msr_io() in
// arch/x86/kvm/x86.c), so lists go in chunks below that.
constexpr size_t kMsrsPerCall = 255;

// Architectural MSRs a guest writes that KVM_GET_MSR_INDEX_LIST does not name (KVM handles
// them, but leaves them to userspace to know about; QEMU saves the same). Indices: Intel SDM
// vol. 4, table 2-2. Which of them a host can read is found per vCPU (probe_readable_msrs).
std::vector<uint32_t> extra_msrs() {
  std::vector<uint32_t> v = {
      kMsrIa32Tsc,
      0x11, 0x12,  // MSR_KVM_WALL_CLOCK, MSR_KVM_SYSTEM_TIME (the pre-"NEW" kvmclock pair)
      0x17a,       // IA32_MCG_STATUS
      0x1a0,       // IA32_MISC_ENABLE
      0x1d9,       // IA32_DEBUGCTL
      0x250, 0x258, 0x259,  // fixed-range MTRRs: 64K, 16K x2
      0x277,                // IA32_PAT
      0x2ff,                // IA32_MTRR_DEF_TYPE
      kMsrIa32TscDeadline,
      0xda0,  // IA32_XSS
      // KVM paravirtual MSRs (Documentation/virt/kvm/x86/msr.rst): kvmclock wall clock and
      // system time, async page faults, steal time, PV EOI, poll control, async PF vector.
      0x4b564d00, 0x4b564d01, 0x4b564d02, 0x4b564d03, 0x4b564d04, 0x4b564d05, 0x4b564d06,
  };
  for (uint32_t i = 0x200; i < 0x210; ++i) v.push_back(i);  // variable MTRRs: 8 base/mask pairs
  for (uint32_t i = 0x268; i < 0x270; ++i) v.push_back(i);  // fixed-range MTRRs: 4K x8
  for (uint32_t i = 0x400; i < 0x480; ++i) v.push_back(i);  // MCi_CTL/STATUS/ADDR/MISC, 32 banks
  return v;
}

// A kvm_msrs with room for n entries, as a byte buffer with the right alignment.
struct MsrBuffer {
  explicit MsrBuffer(size_t n)
      : storage((sizeof(kvm_msrs) + n * sizeof(kvm_msr_entry) + sizeof(uint64_t) - 1) / sizeof(uint64_t)) {
    msrs()->nmsrs = static_cast<uint32_t>(n);
  }
  kvm_msrs* msrs() { return reinterpret_cast<kvm_msrs*>(storage.data()); }
  std::vector<uint64_t> storage;
};

// Reads indices[0..n) in one KVM_GET_MSRS; returns how many KVM read (it stops at the first it
// cannot) and appends those to out.
size_t get_msrs_once(int fd, uint32_t id, std::span<const uint32_t> indices,
                     std::vector<std::pair<uint32_t, uint64_t>>& out) {
  MsrBuffer buf(indices.size());
  for (size_t i = 0; i < indices.size(); ++i) buf.msrs()->entries[i].index = indices[i];
  int r = xioctl(fd, KVM_GET_MSRS, buf.msrs());
  if (r < 0) throw sys_error(fmt::format("KVM_GET_MSRS on vCPU {}", id));
  size_t n = std::min(static_cast<size_t>(r), indices.size());
  for (size_t i = 0; i < n; ++i) out.emplace_back(buf.msrs()->entries[i].index, buf.msrs()->entries[i].data);
  return n;
}

template <class T, class IndexOf>
void stable_order_for_restore(std::vector<T>& v, IndexOf index_of) {
  std::stable_partition(v.begin(), v.end(), [&](const T& m) { return index_of(m) != kMsrIa32TscDeadline; });
}

// ---- local APIC page (Intel SDM vol. 3, 10.4.1 and 10.5.1) --------------------------------------
constexpr size_t kApicIsr = 0x100;
constexpr size_t kApicIrr = 0x200;
constexpr size_t kApicLvtTimer = 0x320;
constexpr uint32_t kLvtMasked = 1u << 16;
constexpr uint32_t kLvtTimerModeShift = 17;
constexpr uint32_t kLvtTimerModeTscDeadline = 2;

uint32_t apic_reg(const std::array<std::byte, x86::kLapicSize>& page, size_t off) {
  uint32_t v;
  std::memcpy(&v, page.data() + off, sizeof v);
  return v;
}

bool apic_vector_set(const std::array<std::byte, x86::kLapicSize>& page, size_t base, uint8_t vector) {
  // 256 bits as eight 32-bit registers 16 bytes apart.
  return (apic_reg(page, base + (vector / 32) * 0x10) >> (vector % 32)) & 1;
}

// A LAPIC timer in TSC-deadline mode, unmasked, with IA32_TSC_DEADLINE = 0 and its vector
// neither requested nor in service has fired without the guest seeing the interrupt (KVM counts
// an expired timer apart from the APIC page, and GET_LAPIC does not carry that count; Firecracker
// met the same). Re-arm it at the saved TSC so it fires at once: a spurious timer interrupt is
// harmless to a guest, a lost one stalls a tickless CPU until something else wakes it.
void rearm_lost_tsc_deadline(uint32_t vcpu_id, const x86::VcpuState& s,
                             std::vector<std::pair<uint32_t, uint64_t>>& msrs) {
  uint32_t lvtt = apic_reg(s.lapic, kApicLvtTimer);
  if (((lvtt >> kLvtTimerModeShift) & 3) != kLvtTimerModeTscDeadline || (lvtt & kLvtMasked)) return;
  auto vector = static_cast<uint8_t>(lvtt & 0xff);
  if (apic_vector_set(s.lapic, kApicIrr, vector) || apic_vector_set(s.lapic, kApicIsr, vector)) return;
  auto tsc = std::find_if(msrs.begin(), msrs.end(), [](const auto& m) { return m.first == kMsrIa32Tsc; });
  auto deadline = std::find_if(msrs.begin(), msrs.end(), [](const auto& m) { return m.first == kMsrIa32TscDeadline; });
  if (tsc == msrs.end() || deadline == msrs.end() || deadline->second != 0) return;
  spdlog::debug("vCPU {}: TSC deadline timer armed at 0 with no interrupt pending; re-arming at the saved TSC", vcpu_id);
  deadline->second = tsc->second;
}

// ---- translations ----------------------------------------------------------------------------------
kvm_dtable to_kvm(const x86::DescriptorTable& t) {
  kvm_dtable k{};
  k.base = t.base;
  k.limit = t.limit;
  return k;
}

x86::DescriptorTable from_kvm(const kvm_dtable& k) { return {k.base, k.limit}; }

kvm_regs to_kvm(const x86::Regs& r) {
  kvm_regs k{};
  k.rax = r.rax, k.rbx = r.rbx, k.rcx = r.rcx, k.rdx = r.rdx;
  k.rsi = r.rsi, k.rdi = r.rdi, k.rsp = r.rsp, k.rbp = r.rbp;
  k.r8 = r.r8, k.r9 = r.r9, k.r10 = r.r10, k.r11 = r.r11;
  k.r12 = r.r12, k.r13 = r.r13, k.r14 = r.r14, k.r15 = r.r15;
  k.rip = r.rip, k.rflags = r.rflags;
  return k;
}

x86::Regs from_kvm(const kvm_regs& k) {
  x86::Regs r;
  r.rax = k.rax, r.rbx = k.rbx, r.rcx = k.rcx, r.rdx = k.rdx;
  r.rsi = k.rsi, r.rdi = k.rdi, r.rsp = k.rsp, r.rbp = k.rbp;
  r.r8 = k.r8, r.r9 = k.r9, r.r10 = k.r10, r.r11 = k.r11;
  r.r12 = k.r12, r.r13 = k.r13, r.r14 = k.r14, r.r15 = k.r15;
  r.rip = k.rip, r.rflags = k.rflags;
  return r;
}

static_assert(sizeof(kvm_sregs::interrupt_bitmap) == sizeof(x86::SpecialRegs::interrupt_bitmap));

kvm_sregs to_kvm(const x86::SpecialRegs& s) {
  kvm_sregs k{};
  k.cs = to_kvm(s.cs), k.ds = to_kvm(s.ds), k.es = to_kvm(s.es), k.fs = to_kvm(s.fs);
  k.gs = to_kvm(s.gs), k.ss = to_kvm(s.ss), k.tr = to_kvm(s.tr), k.ldt = to_kvm(s.ldt);
  k.gdt = to_kvm(s.gdt), k.idt = to_kvm(s.idt);
  k.cr0 = s.cr0, k.cr2 = s.cr2, k.cr3 = s.cr3, k.cr4 = s.cr4, k.cr8 = s.cr8;
  k.efer = s.efer, k.apic_base = s.apic_base;
  std::memcpy(k.interrupt_bitmap, s.interrupt_bitmap.data(), sizeof k.interrupt_bitmap);
  return k;
}

x86::SpecialRegs from_kvm(const kvm_sregs& k) {
  x86::SpecialRegs s;
  s.cs = from_kvm(k.cs), s.ds = from_kvm(k.ds), s.es = from_kvm(k.es), s.fs = from_kvm(k.fs);
  s.gs = from_kvm(k.gs), s.ss = from_kvm(k.ss), s.tr = from_kvm(k.tr), s.ldt = from_kvm(k.ldt);
  s.gdt = from_kvm(k.gdt), s.idt = from_kvm(k.idt);
  s.cr0 = k.cr0, s.cr2 = k.cr2, s.cr3 = k.cr3, s.cr4 = k.cr4, s.cr8 = k.cr8;
  s.efer = k.efer, s.apic_base = k.apic_base;
  std::memcpy(s.interrupt_bitmap.data(), k.interrupt_bitmap, sizeof k.interrupt_bitmap);
  return s;
}

kvm_vcpu_events to_kvm(const x86::VcpuEvents& e) {
  kvm_vcpu_events k{};
  k.exception.injected = e.exception_injected;
  k.exception.nr = e.exception_nr;
  k.exception.has_error_code = e.exception_has_error_code;
  k.exception.pending = e.exception_pending;
  k.exception.error_code = e.exception_error_code;
  k.exception_has_payload = e.exception_has_payload;
  k.exception_payload = e.exception_payload;
  k.interrupt.injected = e.interrupt_injected;
  k.interrupt.nr = e.interrupt_nr;
  k.interrupt.soft = e.interrupt_soft;
  k.interrupt.shadow = e.interrupt_shadow;
  k.nmi.injected = e.nmi_injected;
  k.nmi.pending = e.nmi_pending;
  k.nmi.masked = e.nmi_masked;
  k.sipi_vector = e.sipi_vector;
  k.smi.smm = e.smi_smm;
  k.smi.pending = e.smi_pending;
  k.smi.smm_inside_nmi = e.smi_inside_nmi;
  k.smi.latched_init = e.smi_latched_init;
  k.triple_fault.pending = e.triple_fault_pending;
  k.flags = e.flags;
  return k;
}

x86::VcpuEvents from_kvm(const kvm_vcpu_events& k) {
  x86::VcpuEvents e;
  e.exception_injected = k.exception.injected;
  e.exception_nr = k.exception.nr;
  e.exception_has_error_code = k.exception.has_error_code;
  e.exception_pending = k.exception.pending;
  e.exception_error_code = k.exception.error_code;
  e.exception_has_payload = k.exception_has_payload;
  e.exception_payload = k.exception_payload;
  e.interrupt_injected = k.interrupt.injected;
  e.interrupt_nr = k.interrupt.nr;
  e.interrupt_soft = k.interrupt.soft;
  e.interrupt_shadow = k.interrupt.shadow;
  e.nmi_injected = k.nmi.injected;
  e.nmi_pending = k.nmi.pending;
  e.nmi_masked = k.nmi.masked;
  e.sipi_vector = k.sipi_vector;
  e.smi_smm = k.smi.smm;
  e.smi_pending = k.smi.pending;
  e.smi_inside_nmi = k.smi.smm_inside_nmi;
  e.smi_latched_init = k.smi.latched_init;
  e.triple_fault_pending = k.triple_fault.pending;
  e.flags = k.flags;
  return e;
}

kvm_debugregs to_kvm(const x86::DebugRegs& d) {
  kvm_debugregs k{};
  for (size_t i = 0; i < 4; ++i) k.db[i] = d.db[i];
  k.dr6 = d.dr6;
  k.dr7 = d.dr7;
  k.flags = d.flags;
  return k;
}

x86::DebugRegs from_kvm(const kvm_debugregs& k) {
  x86::DebugRegs d;
  for (size_t i = 0; i < 4; ++i) d.db[i] = k.db[i];
  d.dr6 = k.dr6;
  d.dr7 = k.dr7;
  d.flags = k.flags;
  return d;
}

kvm_pic_state to_kvm(const x86::PicState& p) {
  kvm_pic_state k{};
  k.last_irr = p.last_irr, k.irr = p.irr, k.imr = p.imr, k.isr = p.isr;
  k.priority_add = p.priority_add, k.irq_base = p.irq_base, k.read_reg_select = p.read_reg_select;
  k.poll = p.poll, k.special_mask = p.special_mask, k.init_state = p.init_state, k.auto_eoi = p.auto_eoi;
  k.rotate_on_auto_eoi = p.rotate_on_auto_eoi, k.special_fully_nested_mode = p.special_fully_nested_mode;
  k.init4 = p.init4, k.elcr = p.elcr, k.elcr_mask = p.elcr_mask;
  return k;
}

x86::PicState from_kvm(const kvm_pic_state& k) {
  x86::PicState p;
  p.last_irr = k.last_irr, p.irr = k.irr, p.imr = k.imr, p.isr = k.isr;
  p.priority_add = k.priority_add, p.irq_base = k.irq_base, p.read_reg_select = k.read_reg_select;
  p.poll = k.poll, p.special_mask = k.special_mask, p.init_state = k.init_state, p.auto_eoi = k.auto_eoi;
  p.rotate_on_auto_eoi = k.rotate_on_auto_eoi, p.special_fully_nested_mode = k.special_fully_nested_mode;
  p.init4 = k.init4, p.elcr = k.elcr, p.elcr_mask = k.elcr_mask;
  return p;
}

static_assert(KVM_IOAPIC_NUM_PINS == x86::kIoapicPins);

kvm_ioapic_state to_kvm(const x86::IoapicState& s) {
  kvm_ioapic_state k{};
  k.base_address = s.base_address;
  k.ioregsel = s.ioregsel;
  k.id = s.id;
  k.irr = s.irr;
  for (size_t i = 0; i < x86::kIoapicPins; ++i) k.redirtbl[i].bits = s.redirection[i];
  return k;
}

x86::IoapicState from_kvm(const kvm_ioapic_state& k) {
  x86::IoapicState s;
  s.base_address = k.base_address;
  s.ioregsel = k.ioregsel;
  s.id = k.id;
  s.irr = k.irr;
  for (size_t i = 0; i < x86::kIoapicPins; ++i) s.redirection[i] = k.redirtbl[i].bits;
  return s;
}

kvm_pit_channel_state to_kvm(const x86::PitChannel& c) {
  kvm_pit_channel_state k{};
  k.count = c.count, k.latched_count = c.latched_count;
  k.count_latched = c.count_latched, k.status_latched = c.status_latched, k.status = c.status;
  k.read_state = c.read_state, k.write_state = c.write_state, k.write_latch = c.write_latch;
  k.rw_mode = c.rw_mode, k.mode = c.mode, k.bcd = c.bcd, k.gate = c.gate;
  k.count_load_time = c.count_load_time;
  return k;
}

x86::PitChannel from_kvm(const kvm_pit_channel_state& k) {
  x86::PitChannel c;
  c.count = k.count, c.latched_count = k.latched_count;
  c.count_latched = k.count_latched, c.status_latched = k.status_latched, c.status = k.status;
  c.read_state = k.read_state, c.write_state = k.write_state, c.write_latch = k.write_latch;
  c.rw_mode = k.rw_mode, c.mode = k.mode, c.bcd = k.bcd, c.gate = k.gate;
  c.count_load_time = k.count_load_time;
  return c;
}

// The neutral MP state numbers are KVM's.
static_assert(x86::kMpStateRunnable == KVM_MP_STATE_RUNNABLE &&
              x86::kMpStateUninitialized == KVM_MP_STATE_UNINITIALIZED &&
              x86::kMpStateInitReceived == KVM_MP_STATE_INIT_RECEIVED &&
              x86::kMpStateHalted == KVM_MP_STATE_HALTED &&
              x86::kMpStateSipiReceived == KVM_MP_STATE_SIPI_RECEIVED);
static_assert(sizeof(kvm_lapic_state::regs) == x86::kLapicSize);

}  // namespace

kvm_segment to_kvm(const x86::Segment& s) {
  kvm_segment k{};
  k.base = s.base;
  k.limit = s.limit;
  k.selector = s.selector;
  k.type = s.type;
  k.present = s.present;
  k.dpl = s.dpl;
  k.db = s.db;
  k.s = s.s;
  k.l = s.l;
  k.g = s.g;
  k.avl = s.avl;
  k.unusable = s.unusable;
  return k;
}

x86::Segment from_kvm(const kvm_segment& k) {
  x86::Segment s;
  s.base = k.base;
  s.limit = k.limit;
  s.selector = k.selector;
  s.type = k.type;
  s.present = k.present;
  s.dpl = k.dpl;
  s.db = k.db;
  s.s = k.s;
  s.l = k.l;
  s.g = k.g;
  s.avl = k.avl;
  s.unusable = k.unusable;
  return s;
}

// ---- MSRs ----------------------------------------------------------------------------------------
std::vector<uint32_t> msr_candidates(int kvm_fd) {
  // The first call says how many there are (E2BIG with nmsrs filled in).
  std::vector<uint32_t> listed;
  uint32_t n = 0;
  for (int attempt = 0; attempt < 4; ++attempt) {
    std::vector<uint32_t> buf(1 + n);
    auto* list = reinterpret_cast<kvm_msr_list*>(buf.data());
    list->nmsrs = n;
    if (xioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, list) == 0) {
      listed.assign(list->indices, list->indices + std::min(list->nmsrs, n));
      break;
    }
    if (errno != E2BIG) throw sys_error("KVM_GET_MSR_INDEX_LIST");
    if (list->nmsrs <= n || list->nmsrs > 16 * x86::kMaxMsrs)
      throw Error(fmt::format("KVM_GET_MSR_INDEX_LIST: KVM asks for room for {} MSRs", list->nmsrs));
    n = list->nmsrs;
  }

  std::vector<uint32_t> out;
  std::unordered_set<uint32_t> seen;
  auto add = [&](uint32_t index) {
    if (seen.insert(index).second) out.push_back(index);
  };
  for (uint32_t i : listed) add(i);
  for (uint32_t i : extra_msrs()) add(i);
  return out;
}

std::vector<uint32_t> probe_readable_msrs(int vcpu_fd, uint32_t vcpu_id, std::span<const uint32_t> candidates) {
  std::vector<std::pair<uint32_t, uint64_t>> read;
  std::vector<uint32_t> skipped;
  size_t i = 0;
  while (i < candidates.size()) {
    auto chunk = candidates.subspan(i, std::min(kMsrsPerCall, candidates.size() - i));
    size_t n = get_msrs_once(vcpu_fd, vcpu_id, chunk, read);
    i += n;
    if (n < chunk.size()) {
      skipped.push_back(candidates[i]);  // KVM cannot read this one here
      ++i;
    }
  }
  if (!skipped.empty()) {
    std::string list;
    for (uint32_t s : skipped) list += fmt::format(" {:#x}", s);
    spdlog::debug("vCPU {}: {} of {} MSRs readable; not saved:{}", vcpu_id, read.size(), candidates.size(), list);
  }
  std::vector<uint32_t> out;
  out.reserve(read.size());
  for (const auto& m : read) out.push_back(m.first);
  order_msrs_for_restore(out);
  return out;
}

void order_msrs_for_restore(std::vector<uint32_t>& msrs) {
  stable_order_for_restore(msrs, [](uint32_t i) { return i; });
}

void order_msrs_for_restore(std::vector<std::pair<uint32_t, uint64_t>>& msrs) {
  stable_order_for_restore(msrs, [](const std::pair<uint32_t, uint64_t>& m) { return m.first; });
}

std::vector<std::pair<uint32_t, uint64_t>> get_msrs(int vcpu_fd, uint32_t vcpu_id, std::span<const uint32_t> indices) {
  std::vector<std::pair<uint32_t, uint64_t>> out;
  out.reserve(indices.size());
  for (size_t i = 0; i < indices.size(); i += kMsrsPerCall) {
    auto chunk = indices.subspan(i, std::min(kMsrsPerCall, indices.size() - i));
    size_t n = get_msrs_once(vcpu_fd, vcpu_id, chunk, out);
    if (n < chunk.size())
      throw Error(fmt::format("KVM_GET_MSRS on vCPU {}: KVM could not read MSR {:#x}", vcpu_id, chunk[n]));
  }
  return out;
}

void set_msrs(int vcpu_fd, uint32_t vcpu_id, std::span<const std::pair<uint32_t, uint64_t>> msrs) {
  for (size_t i = 0; i < msrs.size(); i += kMsrsPerCall) {
    auto chunk = msrs.subspan(i, std::min(kMsrsPerCall, msrs.size() - i));
    MsrBuffer buf(chunk.size());
    for (size_t j = 0; j < chunk.size(); ++j) {
      buf.msrs()->entries[j].index = chunk[j].first;
      buf.msrs()->entries[j].data = chunk[j].second;
    }
    // KVM_SET_MSRS returns how many it set; it stops at the first it refuses.
    int r = xioctl(vcpu_fd, KVM_SET_MSRS, buf.msrs());
    if (r < 0) throw sys_error(fmt::format("KVM_SET_MSRS on vCPU {}", vcpu_id));
    if (static_cast<size_t>(r) < chunk.size())
      throw Error(fmt::format("KVM_SET_MSRS on vCPU {}: KVM refused MSR {:#x} (value {:#x})", vcpu_id,
                              chunk[r].first, chunk[r].second));
  }
}

// ---- CPUID ---------------------------------------------------------------------------------------
void set_cpuid(int vcpu_fd, uint32_t vcpu_id, std::span<const x86::CpuidEntry> entries) {
  std::vector<std::byte> buf(sizeof(kvm_cpuid2) + entries.size() * sizeof(kvm_cpuid_entry2));
  auto* c = reinterpret_cast<kvm_cpuid2*>(buf.data());
  c->nent = static_cast<uint32_t>(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    auto& k = c->entries[i];
    k.function = entries[i].function;
    k.index = entries[i].index;
    k.flags = entries[i].flags;
    k.eax = entries[i].eax;
    k.ebx = entries[i].ebx;
    k.ecx = entries[i].ecx;
    k.edx = entries[i].edx;
  }
  if (xioctl(vcpu_fd, KVM_SET_CPUID2, c) != 0) throw sys_error(fmt::format("KVM_SET_CPUID2 on vCPU {}", vcpu_id));
}

std::vector<x86::CpuidEntry> get_cpuid(int vcpu_fd, uint32_t vcpu_id) {
  // E2BIG until the buffer holds every entry the vCPU has.
  for (uint32_t n = 64; n <= x86::kMaxCpuidEntries; n *= 2) {
    std::vector<std::byte> buf(sizeof(kvm_cpuid2) + n * sizeof(kvm_cpuid_entry2));
    auto* c = reinterpret_cast<kvm_cpuid2*>(buf.data());
    c->nent = n;
    if (xioctl(vcpu_fd, KVM_GET_CPUID2, c) != 0) {
      if (errno == E2BIG) continue;
      throw sys_error(fmt::format("KVM_GET_CPUID2 on vCPU {}", vcpu_id));
    }
    std::vector<x86::CpuidEntry> out;
    for (uint32_t i = 0; i < std::min(c->nent, n); ++i) {
      const auto& k = c->entries[i];
      x86::CpuidEntry e{k.function, k.index, k.flags, k.eax, k.ebx, k.ecx, k.edx};
      // Older kernels leave nent as passed: the unused tail is zeroed, and a real entry is never
      // all zero (leaf 0 reports the highest leaf in EAX).
      if (e == x86::CpuidEntry{}) continue;
      out.push_back(e);
    }
    return out;
  }
  throw Error(fmt::format("KVM_GET_CPUID2 on vCPU {}: more than {} entries", vcpu_id, x86::kMaxCpuidEntries));
}

// ---- whole vCPU ----------------------------------------------------------------------------------
x86::VcpuState save_vcpu_state(int fd, uint32_t id, const VcpuStateConfig& cfg, std::span<const uint32_t> msrs) {
  auto fail = [id](const char* ioctl) { return sys_error(fmt::format("{} on vCPU {}", ioctl, id)); };
  x86::VcpuState s;

  kvm_mp_state mp{};
  if (xioctl(fd, KVM_GET_MP_STATE, &mp) != 0) throw fail("KVM_GET_MP_STATE");
  s.mp_state = mp.mp_state;

  kvm_regs regs{};
  if (xioctl(fd, KVM_GET_REGS, &regs) != 0) throw fail("KVM_GET_REGS");
  s.regs = from_kvm(regs);

  kvm_sregs sregs{};
  if (xioctl(fd, KVM_GET_SREGS, &sregs) != 0) throw fail("KVM_GET_SREGS");
  s.sregs = from_kvm(sregs);

  {
    const size_t size = std::max(cfg.xsave_size, sizeof(kvm_xsave));
    std::vector<uint32_t> buf((size + sizeof(uint32_t) - 1) / sizeof(uint32_t));
    auto* x = reinterpret_cast<kvm_xsave*>(buf.data());
    if (size > sizeof(kvm_xsave)) {
      if (xioctl(fd, KVM_GET_XSAVE2, x) != 0) throw fail("KVM_GET_XSAVE2");
    } else {
      if (xioctl(fd, KVM_GET_XSAVE, x) != 0) throw fail("KVM_GET_XSAVE");
    }
    const auto* bytes = reinterpret_cast<const std::byte*>(buf.data());
    s.xsave.assign(bytes, bytes + size);
  }

  if (cfg.has_xcrs) {
    kvm_xcrs xcrs{};
    if (xioctl(fd, KVM_GET_XCRS, &xcrs) != 0) throw fail("KVM_GET_XCRS");
    for (uint32_t i = 0; i < std::min<uint32_t>(xcrs.nr_xcrs, KVM_MAX_XCRS); ++i)
      s.xcrs.emplace_back(xcrs.xcrs[i].xcr, xcrs.xcrs[i].value);
  }

  kvm_debugregs dbg{};
  if (xioctl(fd, KVM_GET_DEBUGREGS, &dbg) != 0) throw fail("KVM_GET_DEBUGREGS");
  s.debug = from_kvm(dbg);

  kvm_lapic_state lapic{};
  if (xioctl(fd, KVM_GET_LAPIC, &lapic) != 0) throw fail("KVM_GET_LAPIC");
  std::memcpy(s.lapic.data(), lapic.regs, s.lapic.size());

  s.msrs = get_msrs(fd, id, msrs);
  order_msrs_for_restore(s.msrs);

  kvm_vcpu_events ev{};
  if (xioctl(fd, KVM_GET_VCPU_EVENTS, &ev) != 0) throw fail("KVM_GET_VCPU_EVENTS");
  // KVM_GET_VCPU_EVENTS always fills nmi.pending and sipi_vector but does not flag them, and
  // KVM_SET_VCPU_EVENTS ignores them unless flagged: flag them so a pending NMI and the SIPI
  // vector survive the restore.
  ev.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
  s.events = from_kvm(ev);

  int khz = xioctl(fd, KVM_GET_TSC_KHZ, 0);
  if (khz < 0) throw fail("KVM_GET_TSC_KHZ");
  s.tsc_khz = static_cast<uint32_t>(khz);
  return s;
}

void restore_vcpu_state(int fd, uint32_t id, const VcpuStateConfig& cfg, const x86::VcpuState& s) {
  auto fail = [id](const char* ioctl) { return sys_error(fmt::format("{} on vCPU {}", ioctl, id)); };

  // 1. TSC frequency, before the TSC itself is written (with the MSRs).
  if (s.tsc_khz != 0) {
    int current = xioctl(fd, KVM_GET_TSC_KHZ, 0);
    if (current < 0) throw fail("KVM_GET_TSC_KHZ");
    if (static_cast<uint32_t>(current) != s.tsc_khz &&
        xioctl(fd, KVM_SET_TSC_KHZ, static_cast<unsigned long>(s.tsc_khz)) != 0) {
      int err = errno;
      throw Error(fmt::format(
          "KVM_SET_TSC_KHZ on vCPU {}: the snapshot's TSC runs at {} kHz, this host's at {} kHz: TSC "
          "frequency differs and this host cannot scale it ({})",
          id, s.tsc_khz, current, std::strerror(err)));
    }
  }

  // 2. MP state.
  kvm_mp_state mp{};
  mp.mp_state = s.mp_state;
  if (xioctl(fd, KVM_SET_MP_STATE, &mp) != 0) throw fail("KVM_SET_MP_STATE");

  // 3. Registers, 4. special registers (with the APIC base and a pending external interrupt).
  kvm_regs regs = to_kvm(s.regs);
  if (xioctl(fd, KVM_SET_REGS, &regs) != 0) throw fail("KVM_SET_REGS");
  kvm_sregs sregs = to_kvm(s.sregs);
  // KVM on AMD reports TR as busy (type 11) whatever the VMCB holds ("the busy flag in the tr
  // selector isn't exposed", svm_get_segment). AMD hardware ignores TR's type once loaded, but
  // an emulated SVM (QEMU TCG, our nested harness) checks the I/O permission bitmap only for an
  // available (type 9) TSS, the way its LTR leaves it; handing the busy type back made every
  // ioperm()-granted OUT of a restored guest fault. VMX requires type 11 and is left alone.
  const bool amd = std::any_of(s.cpuid.begin(), s.cpuid.end(), [](const x86::CpuidEntry& e) {
    return e.function == 0 && (e.ebx == 0x68747541 || e.ebx == 0x6f677948);  // "Auth"enticAMD, "Hygo"nGenuine
  });
  if (amd && sregs.tr.type == 11) sregs.tr.type = 9;
  if (xioctl(fd, KVM_SET_SREGS, &sregs) != 0) throw fail("KVM_SET_SREGS");

  // 5. XSAVE. KVM_SET_XSAVE reads as many bytes as KVM_CAP_XSAVE2 says (at least 4096); a
  // smaller saved area is padded with zeros (components absent from XSTATE_BV are in their
  // initial state), a larger one fits only if what does not fit is zero.
  {
    const size_t size = std::max(cfg.xsave_size, sizeof(kvm_xsave));
    if (s.xsave.size() > size &&
        std::any_of(s.xsave.begin() + static_cast<ptrdiff_t>(size), s.xsave.end(), [](std::byte b) { return b != std::byte{0}; }))
      throw Error(fmt::format(
          "KVM_SET_XSAVE on vCPU {}: the snapshot's XSAVE area is {} bytes, this host's vCPU holds {} "
          "(the dynamic XSAVE features, e.g. AMX, differ)",
          id, s.xsave.size(), size));
    std::vector<uint32_t> buf((size + sizeof(uint32_t) - 1) / sizeof(uint32_t));
    std::memcpy(buf.data(), s.xsave.data(), std::min(size, s.xsave.size()));
    if (xioctl(fd, KVM_SET_XSAVE, reinterpret_cast<kvm_xsave*>(buf.data())) != 0) throw fail("KVM_SET_XSAVE");
  }

  // 6. XCRs.
  if (!s.xcrs.empty()) {
    if (!cfg.has_xcrs) throw Error(fmt::format("KVM_SET_XCRS on vCPU {}: this host's KVM lacks KVM_CAP_XCRS", id));
    if (s.xcrs.size() > KVM_MAX_XCRS)
      throw Error(fmt::format("KVM_SET_XCRS on vCPU {}: {} XCRs, KVM takes at most {}", id, s.xcrs.size(), KVM_MAX_XCRS));
    kvm_xcrs xcrs{};
    xcrs.nr_xcrs = static_cast<uint32_t>(s.xcrs.size());
    for (size_t i = 0; i < s.xcrs.size(); ++i) {
      xcrs.xcrs[i].xcr = s.xcrs[i].first;
      xcrs.xcrs[i].value = s.xcrs[i].second;
    }
    if (xioctl(fd, KVM_SET_XCRS, &xcrs) != 0) throw fail("KVM_SET_XCRS");
  }

  // 7. Debug registers.
  kvm_debugregs dbg = to_kvm(s.debug);
  if (xioctl(fd, KVM_SET_DEBUGREGS, &dbg) != 0) throw fail("KVM_SET_DEBUGREGS");

  // 8. LAPIC, after SREGS has set the APIC base (xAPIC/x2APIC mode).
  kvm_lapic_state lapic{};
  std::memcpy(lapic.regs, s.lapic.data(), s.lapic.size());
  if (xioctl(fd, KVM_SET_LAPIC, &lapic) != 0) throw fail("KVM_SET_LAPIC");

  // 9. MSRs, every one of them; the TSC deadline after the TSC.
  auto msrs = s.msrs;
  order_msrs_for_restore(msrs);
  rearm_lost_tsc_deadline(id, s, msrs);
  set_msrs(fd, id, msrs);

  // 10. Events last: exceptions, interrupts, NMIs and SMIs in flight.
  kvm_vcpu_events ev = to_kvm(s.events);
  if (xioctl(fd, KVM_SET_VCPU_EVENTS, &ev) != 0) throw fail("KVM_SET_VCPU_EVENTS");
}

// ---- VM ----------------------------------------------------------------------------------------
x86::PlatformState save_platform_state(int vm_fd) {
  x86::PlatformState s;
  const std::pair<uint32_t, const char*> pics[] = {{KVM_IRQCHIP_PIC_MASTER, "PIC master"},
                                                   {KVM_IRQCHIP_PIC_SLAVE, "PIC slave"}};
  for (size_t i = 0; i < 2; ++i) {
    kvm_irqchip chip{};
    chip.chip_id = pics[i].first;
    if (xioctl(vm_fd, KVM_GET_IRQCHIP, &chip) != 0) throw sys_error(fmt::format("KVM_GET_IRQCHIP ({})", pics[i].second));
    s.pic[i] = from_kvm(chip.chip.pic);
  }
  kvm_irqchip ioapic{};
  ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
  if (xioctl(vm_fd, KVM_GET_IRQCHIP, &ioapic) != 0) throw sys_error("KVM_GET_IRQCHIP (IOAPIC)");
  s.ioapic = from_kvm(ioapic.chip.ioapic);

  kvm_pit_state2 pit{};
  if (xioctl(vm_fd, KVM_GET_PIT2, &pit) != 0) throw sys_error("KVM_GET_PIT2");
  for (size_t i = 0; i < 3; ++i) s.pit.channels[i] = from_kvm(pit.channels[i]);
  s.pit.flags = pit.flags;

  kvm_clock_data clock{};
  if (xioctl(vm_fd, KVM_GET_CLOCK, &clock) != 0) throw sys_error("KVM_GET_CLOCK");
  s.clock = clock.clock;
  s.clock_flags = clock.flags;  // kept for messages; see restore
  return s;
}

void restore_platform_state(int vm_fd, const x86::PlatformState& s) {
  const std::pair<uint32_t, const char*> pics[] = {{KVM_IRQCHIP_PIC_MASTER, "PIC master"},
                                                   {KVM_IRQCHIP_PIC_SLAVE, "PIC slave"}};
  for (size_t i = 0; i < 2; ++i) {
    kvm_irqchip chip{};
    chip.chip_id = pics[i].first;
    chip.chip.pic = to_kvm(s.pic[i]);
    if (xioctl(vm_fd, KVM_SET_IRQCHIP, &chip) != 0) throw sys_error(fmt::format("KVM_SET_IRQCHIP ({})", pics[i].second));
  }
  kvm_irqchip ioapic{};
  ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
  ioapic.chip.ioapic = to_kvm(s.ioapic);
  if (xioctl(vm_fd, KVM_SET_IRQCHIP, &ioapic) != 0) throw sys_error("KVM_SET_IRQCHIP (IOAPIC)");

  // KVM reloads each channel's count and restarts its timer from now (count_load_time is the
  // source host's clock and is not used as given).
  kvm_pit_state2 pit{};
  for (size_t i = 0; i < 3; ++i) pit.channels[i] = to_kvm(s.pit.channels[i]);
  pit.flags = s.pit.flags;
  if (xioctl(vm_fd, KVM_SET_PIT2, &pit) != 0) throw sys_error("KVM_SET_PIT2");

  // Flags: KVM_CLOCK_TSC_STABLE is output only; KVM_CLOCK_REALTIME / KVM_CLOCK_HOST_TSC ask KVM
  // to advance the clock by the time passed since the realtime / host_tsc fields, which are not
  // saved; and kernels before 5.16 refuse any flag. So none: the guest clock resumes at `clock`.
  kvm_clock_data clock{};
  clock.clock = s.clock;
  clock.flags = 0;
  if (xioctl(vm_fd, KVM_SET_CLOCK, &clock) != 0) throw sys_error("KVM_SET_CLOCK");
}

}  // namespace sm::hv::kvm
