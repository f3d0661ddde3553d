// The Intel MultiProcessor Specification 1.4 tables that tell an ACPI-less Linux how many CPUs
// there are and how ISA IRQs reach the IOAPIC (arch/x86/kernel/mpparse.c reads them).
#pragma once

#include <cstdint>

#include "vmm/guest_memory.h"

namespace sm::x86 {

// One processor entry per CPU (APIC IDs 0..n-1, CPU 0 the BSP), an ISA bus, one IOAPIC (ID n,
// version 0x11, at kIoApicAddr), I/O interrupt entries ISA IRQ i -> IOAPIC pin i for i in 0..23,
// and local interrupt entries (ExtINT on LINT0, NMI on LINT1). APIC IDs are 8 bits and the
// IOAPIC takes the ID after the last CPU, so 254 CPUs is the most the table can describe.
inline constexpr unsigned kMaxCpus = 254;

// Writes the floating pointer at kMpTableAddr followed by the configuration table. Throws
// sm::Error for num_cpus == 0 or > kMaxCpus.
void write_mp_table(GuestMemory& mem, unsigned num_cpus);

// Bytes write_mp_table uses for num_cpus CPUs (floating pointer included).
[[nodiscard]] uint64_t mp_table_size(unsigned num_cpus);

}  // namespace sm::x86
