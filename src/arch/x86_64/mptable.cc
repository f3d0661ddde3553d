#include "arch/x86_64/mptable.h"

#include <cstring>
#include <vector>

#include "arch/x86_64/layout.h"
#include "common/error.h"

namespace sm::x86 {

namespace {

// Intel MultiProcessor Specification 1.4, chapter 4 (the kernel's arch/x86/include/asm/
// mpspec_def.h mirrors it).
struct [[gnu::packed]] MpFloatingPointer {
  char signature[4];  // "_MP_"
  uint32_t physptr;   // configuration table
  uint8_t length;     // in 16-byte paragraphs: 1
  uint8_t spec_rev;   // 4 = MP 1.4
  uint8_t checksum;
  uint8_t feature1;  // 0: a configuration table is present (no default configuration)
  uint8_t feature2;  // bit 7: IMCR present; 0: virtual wire mode
  uint8_t feature3_5[3];
};
struct [[gnu::packed]] MpConfigHeader {
  char signature[4];  // "PCMP"
  uint16_t length;    // base table, header included
  uint8_t spec_rev;
  uint8_t checksum;
  char oem_id[8];
  char product_id[12];
  uint32_t oem_table;
  uint16_t oem_table_size;
  uint16_t entry_count;
  uint32_t lapic_addr;
  uint16_t ext_table_length;
  uint8_t ext_table_checksum;
  uint8_t reserved;
};
struct [[gnu::packed]] MpProcessor {
  uint8_t type;  // 0
  uint8_t apic_id;
  uint8_t apic_version;
  uint8_t cpu_flags;  // bit 0 enabled, bit 1 boot processor
  uint32_t signature;
  uint32_t feature_flags;
  uint32_t reserved[2];
};
struct [[gnu::packed]] MpBus {
  uint8_t type;  // 1
  uint8_t bus_id;
  char bus_type[6];
};
struct [[gnu::packed]] MpIoApic {
  uint8_t type;  // 2
  uint8_t apic_id;
  uint8_t apic_version;
  uint8_t flags;  // bit 0 usable
  uint32_t addr;
};
struct [[gnu::packed]] MpInterrupt {  // I/O (type 3) and local (type 4) interrupt assignment
  uint8_t type;
  uint8_t irq_type;  // 0 INT, 1 NMI, 2 SMI, 3 ExtINT
  uint16_t flags;    // polarity/trigger; 0 = conforms to the bus
  uint8_t src_bus;
  uint8_t src_irq;
  uint8_t dst_apic;
  uint8_t dst_pin;
};
static_assert(sizeof(MpFloatingPointer) == 16);
static_assert(sizeof(MpConfigHeader) == 44);
static_assert(sizeof(MpProcessor) == 20);
static_assert(sizeof(MpBus) == 8 && sizeof(MpIoApic) == 8 && sizeof(MpInterrupt) == 8);

constexpr uint8_t kEntryProcessor = 0, kEntryBus = 1, kEntryIoApic = 2, kEntryIoInt = 3,
                  kEntryLocalInt = 4;
constexpr uint8_t kIntTypeInt = 0, kIntTypeNmi = 1, kIntTypeExtInt = 3;
constexpr uint8_t kCpuEnabled = 1, kCpuBootProcessor = 2;
constexpr uint8_t kLocalApicVersion = 0x14;  // an integrated xAPIC, as KVM's in-kernel LAPIC
constexpr uint8_t kIoApicVersion = 0x11;     // an 82093AA-compatible IOAPIC, as KVM's
constexpr uint32_t kCpuSignature = 0x600;    // family 6, as processors report in the table
constexpr uint32_t kCpuFeatureFpu = 1u << 0, kCpuFeatureApic = 1u << 9;
constexpr uint8_t kIsaBus = 0;

uint8_t checksum(const std::byte* p, size_t n) {
  uint8_t sum = 0;
  for (size_t i = 0; i < n; ++i) sum = static_cast<uint8_t>(sum + static_cast<uint8_t>(p[i]));
  return static_cast<uint8_t>(-sum);
}

template <class T>
void append(std::vector<std::byte>& out, const T& v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}

uint64_t config_table_size(unsigned n) {
  return sizeof(MpConfigHeader) + n * sizeof(MpProcessor) + sizeof(MpBus) + sizeof(MpIoApic) +
         kIoApicPins * sizeof(MpInterrupt) + 2 * sizeof(MpInterrupt);
}

}  // namespace

uint64_t mp_table_size(unsigned num_cpus) {
  return sizeof(MpFloatingPointer) + config_table_size(num_cpus);
}

// The whole table must stay inside the e820-reserved range [kEbdaStart, 1 MiB).
static_assert(sizeof(MpFloatingPointer) + sizeof(MpConfigHeader) + kMaxCpus * sizeof(MpProcessor) +
                      sizeof(MpBus) + sizeof(MpIoApic) + (kIoApicPins + 2) * sizeof(MpInterrupt) <=
                  kHighMemStart - kMpTableAddr,
              "MP table for kMaxCpus does not fit below 1 MiB");
// APIC IDs are 8 bits, 0xff is the broadcast ID, and the IOAPIC takes ID num_cpus.
static_assert(kMaxCpus < 0xff, "the IOAPIC ID kMaxCpus must not be the broadcast ID");

void write_mp_table(GuestMemory& mem, unsigned num_cpus) {
  if (num_cpus == 0 || num_cpus > kMaxCpus)
    throw Error(fmt::format("{} vCPUs requested; supermachine supports 1 to {}", num_cpus, kMaxCpus));
  const uint64_t config_addr = kMpTableAddr + sizeof(MpFloatingPointer);
  const uint8_t ioapic_id = static_cast<uint8_t>(num_cpus);

  std::vector<std::byte> table;
  table.reserve(config_table_size(num_cpus));
  MpConfigHeader hdr{};
  std::memcpy(hdr.signature, "PCMP", 4);
  hdr.length = static_cast<uint16_t>(config_table_size(num_cpus));
  hdr.spec_rev = 4;
  std::memcpy(hdr.oem_id, "SUPERMCH", 8);
  std::memcpy(hdr.product_id, "MICROVM     ", 12);
  hdr.entry_count = static_cast<uint16_t>(num_cpus + 2 + kIoApicPins + 2);
  hdr.lapic_addr = static_cast<uint32_t>(kLocalApicAddr);
  append(table, hdr);

  for (unsigned cpu = 0; cpu < num_cpus; ++cpu) {
    MpProcessor p{};
    p.type = kEntryProcessor;
    p.apic_id = static_cast<uint8_t>(cpu);
    p.apic_version = kLocalApicVersion;
    p.cpu_flags = kCpuEnabled | (cpu == 0 ? kCpuBootProcessor : 0);
    p.signature = kCpuSignature;
    p.feature_flags = kCpuFeatureFpu | kCpuFeatureApic;
    append(table, p);
  }
  MpBus bus{kEntryBus, kIsaBus, {'I', 'S', 'A', ' ', ' ', ' '}};
  append(table, bus);
  append(table, MpIoApic{kEntryIoApic, ioapic_id, kIoApicVersion, 1,
                         static_cast<uint32_t>(kIoApicAddr)});
  // ISA IRQ i arrives on IOAPIC pin i: the hypervisor's IOAPIC routes GSI i to pin i, and
  // devices are wired to GSIs (layout.h).
  for (uint8_t irq = 0; irq < kIoApicPins; ++irq)
    append(table, MpInterrupt{kEntryIoInt, kIntTypeInt, 0, kIsaBus, irq, ioapic_id, irq});
  // The legacy PIC reaches every local APIC's LINT0 as ExtINT; NMI goes to LINT1 of all CPUs.
  append(table, MpInterrupt{kEntryLocalInt, kIntTypeExtInt, 0, kIsaBus, 0, 0, 0});
  append(table, MpInterrupt{kEntryLocalInt, kIntTypeNmi, 0, kIsaBus, 0, 0xff, 1});

  const uint8_t sum = checksum(table.data(), table.size());
  std::memcpy(table.data() + offsetof(MpConfigHeader, checksum), &sum, 1);

  MpFloatingPointer fp{};
  std::memcpy(fp.signature, "_MP_", 4);
  fp.physptr = static_cast<uint32_t>(config_addr);
  fp.length = 1;
  fp.spec_rev = 4;
  fp.checksum = checksum(reinterpret_cast<const std::byte*>(&fp), sizeof fp);

  mem.write_obj(kMpTableAddr, fp);
  mem.write(config_addr, table);
}

}  // namespace sm::x86
