#include "arch/x86_64/cpu_state.h"

#include <gtest/gtest.h>

#include <cstring>

namespace sm::x86 {
namespace {

using snapshot::Decoder;
using snapshot::Encoder;
using snapshot::SnapshotError;

// Every field different from its default and from its neighbours, so a swapped or skipped
// field shows up as a mismatch.
Segment segment(uint64_t seed) {
  Segment s;
  s.base = 0x1000 * seed + 1;
  s.limit = static_cast<uint32_t>(0xfff0 + seed);
  s.selector = static_cast<uint16_t>(8 * seed);
  s.type = static_cast<uint8_t>(seed & 0xf);
  s.present = 1;
  s.dpl = 3;
  s.db = 1;
  s.s = 1;
  s.l = 1;
  s.g = 1;
  s.avl = 1;
  s.unusable = 1;
  return s;
}

VcpuState full_vcpu_state() {
  VcpuState s;
  s.cpuid = {{0, 0, 0, 0xd, 0x756e6547, 0x6c65746e, 0x49656e69},
             {7, 1, 1, 0x11, 0x22, 0x33, 0x44},
             {0x40000001, 0, 0, 0x01007afb, 0, 0, 0}};
  s.mp_state = kMpStateHalted;
  uint64_t v = 1;
  for (uint64_t* r : {&s.regs.rax, &s.regs.rbx, &s.regs.rcx, &s.regs.rdx, &s.regs.rsi, &s.regs.rdi,
                      &s.regs.rsp, &s.regs.rbp, &s.regs.r8, &s.regs.r9, &s.regs.r10, &s.regs.r11,
                      &s.regs.r12, &s.regs.r13, &s.regs.r14, &s.regs.r15, &s.regs.rip, &s.regs.rflags})
    *r = 0x0101010101010101ull * v++;
  uint64_t seed = 1;
  for (Segment* seg : {&s.sregs.cs, &s.sregs.ds, &s.sregs.es, &s.sregs.fs, &s.sregs.gs, &s.sregs.ss,
                       &s.sregs.tr, &s.sregs.ldt})
    *seg = segment(seed++);
  s.sregs.gdt = {0x5000, 0x27};
  s.sregs.idt = {0x6000, 0xfff};
  s.sregs.cr0 = 0x80050033;
  s.sregs.cr2 = 0xdeadb000;
  s.sregs.cr3 = 0x9000;
  s.sregs.cr4 = 0x3706f0;
  s.sregs.cr8 = 0xf;
  s.sregs.efer = 0xd01;
  s.sregs.apic_base = 0xfee00900;
  s.sregs.interrupt_bitmap = {1, 2, 4, 1ull << 63};
  s.xsave.resize(4096);
  for (size_t i = 0; i < s.xsave.size(); ++i) s.xsave[i] = static_cast<std::byte>(i * 7 + 3);
  s.xcrs = {{0, 0x207}, {1, 0x1}};
  for (size_t i = 0; i < s.lapic.size(); ++i) s.lapic[i] = static_cast<std::byte>(i * 13 + 5);
  s.msrs = {{0x10, 0x123456789a}, {0x4b564d01, 0x7001}, {0x277, 0x0007040600070406}, {0x6e0, 0x1234567890}};
  auto& e = s.events;
  e.exception_injected = 1;
  e.exception_nr = 14;
  e.exception_has_error_code = 1;
  e.exception_pending = 1;
  e.exception_error_code = 0x6;
  e.exception_has_payload = 1;
  e.exception_payload = 0xdeadb000;
  e.interrupt_injected = 1;
  e.interrupt_nr = 0xec;
  e.interrupt_soft = 1;
  e.interrupt_shadow = 2;
  e.nmi_injected = 1;
  e.nmi_pending = 2;
  e.nmi_masked = 1;
  e.sipi_vector = 0x9a;
  e.smi_smm = 1;
  e.smi_pending = 1;
  e.smi_inside_nmi = 1;
  e.smi_latched_init = 1;
  e.triple_fault_pending = 1;
  e.flags = 0x3f;
  s.debug.db = {0x11, 0x22, 0x33, 0x44};
  s.debug.dr6 = 0xffff0ff0;
  s.debug.dr7 = 0x400;
  s.debug.flags = 0x5;
  s.tsc_khz = 2995200;
  return s;
}

PlatformState full_platform_state() {
  PlatformState s;
  uint8_t b = 1;
  for (auto& p : s.pic)
    for (uint8_t* f : {&p.last_irr, &p.irr, &p.imr, &p.isr, &p.priority_add, &p.irq_base,
                       &p.read_reg_select, &p.poll, &p.special_mask, &p.init_state, &p.auto_eoi,
                       &p.rotate_on_auto_eoi, &p.special_fully_nested_mode, &p.init4, &p.elcr, &p.elcr_mask})
      *f = b++;
  s.ioapic.base_address = 0xfec00000;
  s.ioapic.ioregsel = 0x10;
  s.ioapic.id = 0x2;
  s.ioapic.irr = 0x10;
  for (size_t i = 0; i < s.ioapic.redirection.size(); ++i) s.ioapic.redirection[i] = 0x10000 | (0x20 + i);
  uint32_t n = 1;
  for (auto& c : s.pit.channels) {
    c.count = 0x10000 + n;
    c.latched_count = static_cast<uint16_t>(0x100 + n);
    for (uint8_t* f : {&c.count_latched, &c.status_latched, &c.status, &c.read_state, &c.write_state,
                       &c.write_latch, &c.rw_mode, &c.mode, &c.bcd, &c.gate})
      *f = static_cast<uint8_t>(n++);
    c.count_load_time = -123456789 * static_cast<int64_t>(n);
  }
  s.pit.flags = 1;
  s.clock = 987654321012;
  s.clock_flags = 2;
  return s;
}

std::vector<std::byte> encode(const VcpuState& s) {
  Encoder e;
  save(e, s);
  return e.take();
}

std::vector<std::byte> encode(const PlatformState& s) {
  Encoder e;
  save(e, s);
  return e.take();
}

TEST(CpuState, VcpuStateRoundTripsExactly) {
  const VcpuState s = full_vcpu_state();
  ASSERT_FALSE(s == VcpuState{});
  auto bytes = encode(s);
  Decoder d(bytes, "vcpu 0");
  VcpuState back = load_vcpu_state(d);
  EXPECT_EQ(d.remaining(), 0u);
  EXPECT_NO_THROW(d.finish());
  EXPECT_EQ(back, s);
  // Encoding is deterministic: the same state gives the same bytes.
  EXPECT_EQ(encode(back), bytes);
}

TEST(CpuState, DefaultVcpuStateRoundTrips) {
  auto bytes = encode(VcpuState{});
  Decoder d(bytes, "vcpu 0");
  EXPECT_EQ(load_vcpu_state(d), VcpuState{});
  EXPECT_EQ(d.remaining(), 0u);
}

TEST(CpuState, PlatformStateRoundTripsExactly) {
  const PlatformState s = full_platform_state();
  ASSERT_FALSE(s == PlatformState{});
  auto bytes = encode(s);
  Decoder d(bytes, "platform");
  PlatformState back = load_platform_state(d);
  EXPECT_EQ(d.remaining(), 0u);
  EXPECT_EQ(back, s);
  EXPECT_EQ(encode(back), bytes);
}

TEST(CpuState, VcpuStateTruncatedAnywhereFails) {
  auto bytes = encode(full_vcpu_state());
  for (size_t len = 0; len < bytes.size(); ++len) {
    Decoder d(std::span<const std::byte>(bytes).first(len), "vcpu 0");
    EXPECT_THROW((void)load_vcpu_state(d), SnapshotError) << "length " << len;
  }
}

TEST(CpuState, PlatformStateTruncatedAnywhereFails) {
  auto bytes = encode(full_platform_state());
  for (size_t len = 0; len < bytes.size(); ++len) {
    Decoder d(std::span<const std::byte>(bytes).first(len), "platform");
    EXPECT_THROW((void)load_platform_state(d), SnapshotError) << "length " << len;
  }
}

// Offsets of the counted fields in an encoding of VcpuState{} (no CPUID, no XSAVE, no XCRs):
// layout version (4), CPUID count (4), mp_state (4), regs (18 * 8), sregs (8 segments of 23
// bytes, 2 tables of 10, 7 + 4 u64), XSAVE length (4), XCR count (4), LAPIC, MSR count.
constexpr size_t kCpuidCountOffset = 4;
constexpr size_t kSregsBytes = 8 * 23 + 2 * 10 + 11 * 8;
constexpr size_t kXsaveLenOffset = 4 + 4 + 4 + 18 * 8 + kSregsBytes;
constexpr size_t kXcrCountOffset = kXsaveLenOffset + 4;
constexpr size_t kMsrCountOffset = kXcrCountOffset + 4 + kLapicSize;

void put_u32(std::vector<std::byte>& b, size_t off, uint32_t v) {
  ASSERT_LE(off + 4, b.size());
  std::memcpy(b.data() + off, &v, sizeof v);
}

uint32_t get_u32(const std::vector<std::byte>& b, size_t off) {
  uint32_t v = 0;
  if (off + 4 <= b.size()) std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}

TEST(CpuState, CountOffsetsAreWhereTheTestsThinkTheyAre) {
  VcpuState s;
  s.msrs.assign(3, {1, 2});
  auto bytes = encode(s);
  EXPECT_EQ(get_u32(bytes, 0), kVcpuStateLayout);
  EXPECT_EQ(get_u32(bytes, kCpuidCountOffset), 0u);
  EXPECT_EQ(get_u32(bytes, kXsaveLenOffset), 0u);
  EXPECT_EQ(get_u32(bytes, kXcrCountOffset), 0u);
  EXPECT_EQ(get_u32(bytes, kMsrCountOffset), 3u);
  s.xcrs.assign(2, {0, 7});
  EXPECT_EQ(get_u32(encode(s), kXcrCountOffset), 2u);
  s.xsave.assign(5, std::byte{1});
  EXPECT_EQ(get_u32(encode(s), kXsaveLenOffset), 5u);
}

TEST(CpuState, HugeCountsFailFast) {
  const auto base = encode(VcpuState{});
  for (size_t off : {kCpuidCountOffset, kXsaveLenOffset, kXcrCountOffset, kMsrCountOffset}) {
    for (uint32_t n : {0xffffffffu, 0x10000000u, 5000u}) {
      auto bytes = base;
      put_u32(bytes, off, n);
      Decoder d(bytes, "vcpu 0");
      EXPECT_THROW((void)load_vcpu_state(d), SnapshotError) << "offset " << off << " count " << n;
    }
  }
  // Under the cap, but more elements than the bytes left could hold: refused before reserve().
  auto bytes = base;
  put_u32(bytes, kMsrCountOffset, static_cast<uint32_t>(kMaxMsrs - 1));
  Decoder d(bytes, "vcpu 0");
  EXPECT_THROW((void)load_vcpu_state(d), SnapshotError);
}

TEST(CpuState, CountsOverTheirCapFailEvenWithTheBytesPresent) {
  // A count within what the input could hold but over the field's cap.
  auto bytes = encode(VcpuState{});
  put_u32(bytes, kXcrCountOffset, static_cast<uint32_t>(kMaxXcrs + 1));
  bytes.resize(bytes.size() + (kMaxXcrs + 1) * 12);
  Decoder d(bytes, "vcpu 0");
  EXPECT_THROW((void)load_vcpu_state(d), SnapshotError);
}

TEST(CpuState, WrongLayoutVersionIsRefused) {
  {
    auto bytes = encode(full_vcpu_state());
    put_u32(bytes, 0, kVcpuStateLayout + 1);
    Decoder d(bytes, "vcpu 0");
    EXPECT_THROW((void)load_vcpu_state(d), SnapshotError);
  }
  {
    auto bytes = encode(full_platform_state());
    put_u32(bytes, 0, 0);
    Decoder d(bytes, "platform");
    EXPECT_THROW((void)load_platform_state(d), SnapshotError);
  }
}

TEST(CpuState, SaveRefusesWhatNoBuildCouldLoad) {
  VcpuState s;
  s.msrs.resize(kMaxMsrs + 1);
  Encoder e;
  EXPECT_THROW(save(e, s), SnapshotError);
  VcpuState x;
  x.xsave.resize(kMaxXsaveBytes + 1);
  EXPECT_THROW(save(e, x), SnapshotError);
}

TEST(CpuState, FieldsAtTheirCapsRoundTrip) {
  VcpuState s;
  s.xsave.assign(kMaxXsaveBytes, std::byte{0x5a});
  s.xcrs.assign(kMaxXcrs, {1, 2});
  for (uint32_t i = 0; i < kMaxMsrs; ++i) s.msrs.emplace_back(i, ~uint64_t{i});
  s.cpuid.assign(kMaxCpuidEntries, CpuidEntry{1, 2, 3, 4, 5, 6, 7});
  auto bytes = encode(s);
  Decoder d(bytes, "vcpu 0");
  EXPECT_EQ(load_vcpu_state(d), s);
  EXPECT_EQ(d.remaining(), 0u);
}

}  // namespace
}  // namespace sm::x86
