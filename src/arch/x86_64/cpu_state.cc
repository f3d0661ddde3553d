// Snapshot encoding of the neutral x86_64 vCPU and platform state (cpu_state.h). Every field is
// written in declaration order, little-endian, through snapshot::Encoder; variable-size fields
// carry a count or length that the loader checks against the caps in cpu_state.h before it
// allocates anything.
#include "arch/x86_64/cpu_state.h"

#include <fmt/format.h>

namespace sm::x86 {
namespace {

using snapshot::Decoder;
using snapshot::Encoder;
using snapshot::SnapshotError;

// Smallest encoded size of one element, for Decoder::count's "cannot fit" check.
constexpr size_t kCpuidEntryBytes = 7 * sizeof(uint32_t);
constexpr size_t kIndexValueBytes = sizeof(uint32_t) + sizeof(uint64_t);  // an XCR or an MSR

void check_cap(size_t n, size_t cap, const char* what) {
  if (n > cap)
    throw SnapshotError(
        fmt::format("cannot save {} {}: the snapshot format holds at most {}", n, what, cap));
}

void check_version(Decoder& d, uint32_t want, const char* what) {
  uint32_t v = d.u32();
  if (v != want) d.fail(fmt::format("{} layout version {}, this build reads version {}", what, v, want));
}

// ---- pieces ----------------------------------------------------------------------------------
void put(Encoder& e, const Segment& s) {
  e.u64(s.base);
  e.u32(s.limit);
  e.u16(s.selector);
  e.u8(s.type);
  e.u8(s.present);
  e.u8(s.dpl);
  e.u8(s.db);
  e.u8(s.s);
  e.u8(s.l);
  e.u8(s.g);
  e.u8(s.avl);
  e.u8(s.unusable);
}

Segment get_segment(Decoder& d) {
  Segment s;
  s.base = d.u64();
  s.limit = d.u32();
  s.selector = d.u16();
  s.type = d.u8();
  s.present = d.u8();
  s.dpl = d.u8();
  s.db = d.u8();
  s.s = d.u8();
  s.l = d.u8();
  s.g = d.u8();
  s.avl = d.u8();
  s.unusable = d.u8();
  return s;
}

void put(Encoder& e, const DescriptorTable& t) {
  e.u64(t.base);
  e.u16(t.limit);
}

DescriptorTable get_table(Decoder& d) {
  DescriptorTable t;
  t.base = d.u64();
  t.limit = d.u16();
  return t;
}

void put(Encoder& e, const Regs& r) {
  for (uint64_t v : {r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10,
                     r.r11, r.r12, r.r13, r.r14, r.r15, r.rip, r.rflags})
    e.u64(v);
}

Regs get_regs(Decoder& d) {
  Regs r;
  for (uint64_t* v : {&r.rax, &r.rbx, &r.rcx, &r.rdx, &r.rsi, &r.rdi, &r.rsp, &r.rbp, &r.r8,
                      &r.r9, &r.r10, &r.r11, &r.r12, &r.r13, &r.r14, &r.r15, &r.rip, &r.rflags})
    *v = d.u64();
  return r;
}

void put(Encoder& e, const SpecialRegs& s) {
  for (const Segment* seg : {&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt}) put(e, *seg);
  put(e, s.gdt);
  put(e, s.idt);
  for (uint64_t v : {s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer, s.apic_base}) e.u64(v);
  for (uint64_t v : s.interrupt_bitmap) e.u64(v);
}

SpecialRegs get_sregs(Decoder& d) {
  SpecialRegs s;
  for (Segment* seg : {&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt}) *seg = get_segment(d);
  s.gdt = get_table(d);
  s.idt = get_table(d);
  for (uint64_t* v : {&s.cr0, &s.cr2, &s.cr3, &s.cr4, &s.cr8, &s.efer, &s.apic_base}) *v = d.u64();
  for (uint64_t& v : s.interrupt_bitmap) v = d.u64();
  return s;
}

void put(Encoder& e, const VcpuEvents& v) {
  for (uint8_t b : {v.exception_injected, v.exception_nr, v.exception_has_error_code, v.exception_pending})
    e.u8(b);
  e.u32(v.exception_error_code);
  e.u8(v.exception_has_payload);
  e.u64(v.exception_payload);
  for (uint8_t b : {v.interrupt_injected, v.interrupt_nr, v.interrupt_soft, v.interrupt_shadow,
                    v.nmi_injected, v.nmi_pending, v.nmi_masked})
    e.u8(b);
  e.u32(v.sipi_vector);
  for (uint8_t b : {v.smi_smm, v.smi_pending, v.smi_inside_nmi, v.smi_latched_init, v.triple_fault_pending})
    e.u8(b);
  e.u32(v.flags);
}

VcpuEvents get_events(Decoder& d) {
  VcpuEvents v;
  for (uint8_t* b : {&v.exception_injected, &v.exception_nr, &v.exception_has_error_code, &v.exception_pending})
    *b = d.u8();
  v.exception_error_code = d.u32();
  v.exception_has_payload = d.u8();
  v.exception_payload = d.u64();
  for (uint8_t* b : {&v.interrupt_injected, &v.interrupt_nr, &v.interrupt_soft, &v.interrupt_shadow,
                     &v.nmi_injected, &v.nmi_pending, &v.nmi_masked})
    *b = d.u8();
  v.sipi_vector = d.u32();
  for (uint8_t* b : {&v.smi_smm, &v.smi_pending, &v.smi_inside_nmi, &v.smi_latched_init, &v.triple_fault_pending})
    *b = d.u8();
  v.flags = d.u32();
  return v;
}

void put(Encoder& e, const DebugRegs& r) {
  for (uint64_t v : r.db) e.u64(v);
  e.u64(r.dr6);
  e.u64(r.dr7);
  e.u64(r.flags);
}

DebugRegs get_debug(Decoder& d) {
  DebugRegs r;
  for (uint64_t& v : r.db) v = d.u64();
  r.dr6 = d.u64();
  r.dr7 = d.u64();
  r.flags = d.u64();
  return r;
}

// (index, value) pairs: XCRs and MSRs.
void put_pairs(Encoder& e, const std::vector<std::pair<uint32_t, uint64_t>>& v, size_t cap, const char* what) {
  check_cap(v.size(), cap, what);
  e.count(v.size());
  for (const auto& [index, value] : v) {
    e.u32(index);
    e.u64(value);
  }
}

std::vector<std::pair<uint32_t, uint64_t>> get_pairs(Decoder& d, size_t cap) {
  size_t n = d.count(cap, kIndexValueBytes);
  std::vector<std::pair<uint32_t, uint64_t>> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    uint32_t index = d.u32();
    uint64_t value = d.u64();
    v.emplace_back(index, value);
  }
  return v;
}

void put(Encoder& e, const PicState& p) {
  for (uint8_t b : {p.last_irr, p.irr, p.imr, p.isr, p.priority_add, p.irq_base, p.read_reg_select,
                    p.poll, p.special_mask, p.init_state, p.auto_eoi, p.rotate_on_auto_eoi,
                    p.special_fully_nested_mode, p.init4, p.elcr, p.elcr_mask})
    e.u8(b);
}

PicState get_pic(Decoder& d) {
  PicState p;
  for (uint8_t* b : {&p.last_irr, &p.irr, &p.imr, &p.isr, &p.priority_add, &p.irq_base,
                     &p.read_reg_select, &p.poll, &p.special_mask, &p.init_state, &p.auto_eoi,
                     &p.rotate_on_auto_eoi, &p.special_fully_nested_mode, &p.init4, &p.elcr, &p.elcr_mask})
    *b = d.u8();
  return p;
}

void put(Encoder& e, const PitChannel& c) {
  e.u32(c.count);
  e.u16(c.latched_count);
  for (uint8_t b : {c.count_latched, c.status_latched, c.status, c.read_state, c.write_state,
                    c.write_latch, c.rw_mode, c.mode, c.bcd, c.gate})
    e.u8(b);
  e.i64(c.count_load_time);
}

PitChannel get_pit_channel(Decoder& d) {
  PitChannel c;
  c.count = d.u32();
  c.latched_count = d.u16();
  for (uint8_t* b : {&c.count_latched, &c.status_latched, &c.status, &c.read_state, &c.write_state,
                     &c.write_latch, &c.rw_mode, &c.mode, &c.bcd, &c.gate})
    *b = d.u8();
  c.count_load_time = d.i64();
  return c;
}

}  // namespace

// ---- VcpuState ---------------------------------------------------------------------------------
void save(snapshot::Encoder& e, const VcpuState& s) {
  check_cap(s.cpuid.size(), kMaxCpuidEntries, "CPUID entries");
  check_cap(s.xsave.size(), kMaxXsaveBytes, "XSAVE bytes");

  e.u32(kVcpuStateLayout);
  e.count(s.cpuid.size());
  for (const auto& c : s.cpuid)
    for (uint32_t v : {c.function, c.index, c.flags, c.eax, c.ebx, c.ecx, c.edx}) e.u32(v);
  e.u32(s.mp_state);
  put(e, s.regs);
  put(e, s.sregs);
  e.bytes(s.xsave);
  put_pairs(e, s.xcrs, kMaxXcrs, "XCRs");
  e.fixed(s.lapic);
  put_pairs(e, s.msrs, kMaxMsrs, "MSRs");
  put(e, s.events);
  put(e, s.debug);
  e.u32(s.tsc_khz);
}

VcpuState load_vcpu_state(snapshot::Decoder& d) {
  check_version(d, kVcpuStateLayout, "vCPU state");
  VcpuState s;
  size_t n = d.count(kMaxCpuidEntries, kCpuidEntryBytes);
  s.cpuid.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    CpuidEntry c;
    for (uint32_t* v : {&c.function, &c.index, &c.flags, &c.eax, &c.ebx, &c.ecx, &c.edx}) *v = d.u32();
    s.cpuid.push_back(c);
  }
  s.mp_state = d.u32();
  s.regs = get_regs(d);
  s.sregs = get_sregs(d);
  s.xsave = d.bytes(kMaxXsaveBytes);
  s.xcrs = get_pairs(d, kMaxXcrs);
  d.fixed(s.lapic);
  s.msrs = get_pairs(d, kMaxMsrs);
  s.events = get_events(d);
  s.debug = get_debug(d);
  s.tsc_khz = d.u32();
  return s;
}

// ---- PlatformState -----------------------------------------------------------------------------
void save(snapshot::Encoder& e, const PlatformState& s) {
  e.u32(kPlatformStateLayout);
  for (const auto& p : s.pic) put(e, p);
  e.u64(s.ioapic.base_address);
  e.u32(s.ioapic.ioregsel);
  e.u32(s.ioapic.id);
  e.u32(s.ioapic.irr);
  for (uint64_t r : s.ioapic.redirection) e.u64(r);
  for (const auto& c : s.pit.channels) put(e, c);
  e.u32(s.pit.flags);
  e.u64(s.clock);
  e.u32(s.clock_flags);
}

PlatformState load_platform_state(snapshot::Decoder& d) {
  check_version(d, kPlatformStateLayout, "platform state");
  PlatformState s;
  for (auto& p : s.pic) p = get_pic(d);
  s.ioapic.base_address = d.u64();
  s.ioapic.ioregsel = d.u32();
  s.ioapic.id = d.u32();
  s.ioapic.irr = d.u32();
  for (uint64_t& r : s.ioapic.redirection) r = d.u64();
  for (auto& c : s.pit.channels) c = get_pit_channel(d);
  s.pit.flags = d.u32();
  s.clock = d.u64();
  s.clock_flags = d.u32();
  return s;
}

}  // namespace sm::x86
