#include "arch/x86_64/mptable.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "arch/x86_64/layout.h"
#include "common/error.h"

namespace sm::x86 {
namespace {

uint8_t sum(std::span<const std::byte> bytes) {
  uint8_t s = 0;
  for (auto b : bytes) s = static_cast<uint8_t>(s + static_cast<uint8_t>(b));
  return s;
}

template <class T>
T at(std::span<const std::byte> s, size_t off) {
  T v;
  std::memcpy(&v, s.data() + off, sizeof v);
  return v;
}

struct ParsedMpTable {
  std::vector<std::pair<uint8_t, uint8_t>> cpus;  // apic id, flags
  uint8_t ioapic_id = 0, ioapic_version = 0;
  uint32_t ioapic_addr = 0;
  std::map<uint8_t, uint8_t> io_irq_to_pin;
  int isa_buses = 0;
  int local_ints = 0;
  uint32_t lapic = 0;
};

// Finds and checks the tables the way Linux's mpparse.c does: scan 639-640 KiB on 16-byte
// boundaries for "_MP_" with a good checksum, follow physptr, check "PCMP" and its checksum.
ParsedMpTable parse(const GuestMemory& mem) {
  ParsedMpTable out;
  std::optional<uint64_t> fp;
  for (uint64_t a = 639 * 1024; a < 640 * 1024; a += 16) {
    auto s = mem.span(a, 16);
    if (std::memcmp(s.data(), "_MP_", 4) == 0 && sum(s) == 0) {
      fp = a;
      break;
    }
  }
  EXPECT_TRUE(fp) << "no MP floating pointer in the last KiB of base memory";
  if (!fp) return out;
  const auto f = mem.span(*fp, 16);
  EXPECT_EQ(static_cast<uint8_t>(f[8]), 1);   // length in paragraphs
  EXPECT_EQ(static_cast<uint8_t>(f[9]), 4);   // MP spec 1.4
  EXPECT_EQ(static_cast<uint8_t>(f[11]), 0);  // a configuration table follows
  const auto physptr = at<uint32_t>(f, 4);
  const auto hdr = mem.span(physptr, 44);
  EXPECT_EQ(std::memcmp(hdr.data(), "PCMP", 4), 0);
  const auto len = at<uint16_t>(hdr, 4);
  const auto table = mem.span(physptr, len);
  EXPECT_EQ(sum(table), 0) << "configuration table checksum";
  EXPECT_EQ(static_cast<uint8_t>(hdr[6]), 4);
  out.lapic = at<uint32_t>(hdr, 36);
  const auto count = at<uint16_t>(hdr, 34);
  size_t off = 44;
  for (unsigned i = 0; i < count; ++i) {
    EXPECT_LT(off, table.size());
    if (off >= table.size()) break;
    const auto type = static_cast<uint8_t>(table[off]);
    switch (type) {
      case 0:
        out.cpus.push_back({at<uint8_t>(table, off + 1), at<uint8_t>(table, off + 3)});
        off += 20;
        break;
      case 1:
        if (std::memcmp(table.data() + off + 2, "ISA   ", 6) == 0) ++out.isa_buses;
        off += 8;
        break;
      case 2:
        out.ioapic_id = at<uint8_t>(table, off + 1);
        out.ioapic_version = at<uint8_t>(table, off + 2);
        out.ioapic_addr = at<uint32_t>(table, off + 4);
        off += 8;
        break;
      case 3:
        EXPECT_EQ(at<uint8_t>(table, off + 6), out.ioapic_id);
        out.io_irq_to_pin[at<uint8_t>(table, off + 5)] = at<uint8_t>(table, off + 7);
        off += 8;
        break;
      case 4:
        ++out.local_ints;
        off += 8;
        break;
      default:
        ADD_FAILURE() << "unknown MP entry type " << int(type);
        return out;
    }
  }
  EXPECT_EQ(off, table.size()) << "entry count and length disagree";
  return out;
}

class MpTableCpus : public ::testing::TestWithParam<unsigned> {};

TEST_P(MpTableCpus, ChecksumsAndEntries) {
  const unsigned n = GetParam();
  auto layout = memory_layout(64 * kMiB);
  auto mem = GuestMemory::create(layout);
  write_mp_table(mem, n);
  const auto t = parse(mem);
  ASSERT_EQ(t.cpus.size(), n);
  for (unsigned i = 0; i < n; ++i) {
    EXPECT_EQ(t.cpus[i].first, i);
    EXPECT_EQ(t.cpus[i].second, i == 0 ? 3 : 1) << "cpu " << i;  // enabled (+ BSP for cpu 0)
  }
  EXPECT_EQ(t.ioapic_id, n);
  EXPECT_EQ(t.ioapic_version, 0x11);
  EXPECT_EQ(t.ioapic_addr, 0xfec00000u);
  EXPECT_EQ(t.lapic, 0xfee00000u);
  EXPECT_EQ(t.isa_buses, 1);
  EXPECT_EQ(t.local_ints, 2);
  ASSERT_EQ(t.io_irq_to_pin.size(), 24u);
  for (const auto& [irq, pin] : t.io_irq_to_pin) EXPECT_EQ(irq, pin);
  EXPECT_LE(kMpTableAddr + mp_table_size(n), kHighMemStart);
}

INSTANTIATE_TEST_SUITE_P(Counts, MpTableCpus, ::testing::Values(1u, 2u, 8u, kMaxCpus));

TEST(MpTable, RefusesImpossibleCpuCounts) {
  auto layout = memory_layout(64 * kMiB);
  auto mem = GuestMemory::create(layout);
  EXPECT_THROW(write_mp_table(mem, 0), Error);
  EXPECT_THROW(write_mp_table(mem, kMaxCpus + 1), Error);
}

}  // namespace
}  // namespace sm::x86
