// Byte-exact mirrors of the kernel's struct setup_header and struct boot_params
// (arch/x86/include/uapi/asm/bootparam.h, Documentation/x86/zero-page.rst). Only the fields a
// boot loader reads or fills are named; the rest is padding. Every named offset is pinned below.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sm::x86::abi {

// Documentation/x86/boot.rst, "The real-mode kernel header".
inline constexpr uint16_t kBootFlagMagic = 0xaa55;
inline constexpr uint32_t kHeaderMagic = 0x53726448;  // "HdrS"
inline constexpr uint64_t kSetupHeaderOffset = 0x1f1;
inline constexpr uint8_t kLoadedHigh = 1 << 0;    // loadflags: protected-mode code at 1 MiB
inline constexpr uint8_t kCanUseHeap = 1 << 7;    // loadflags: heap_end_ptr is valid
inline constexpr uint16_t kXlfKernel64 = 1 << 0;  // xloadflags: has the 64-bit entry at +0x200
inline constexpr uint8_t kLoaderTypeUndefined = 0xff;

struct [[gnu::packed]] SetupHeader {
  uint8_t setup_sects;
  uint16_t root_flags;
  uint32_t syssize;
  uint16_t ram_size;
  uint16_t vid_mode;
  uint16_t root_dev;
  uint16_t boot_flag;
  uint16_t jump;
  uint32_t header;
  uint16_t version;
  uint32_t realmode_swtch;
  uint16_t start_sys_seg;
  uint16_t kernel_version;
  uint8_t type_of_loader;
  uint8_t loadflags;
  uint16_t setup_move_size;
  uint32_t code32_start;
  uint32_t ramdisk_image;
  uint32_t ramdisk_size;
  uint32_t bootsect_kludge;
  uint16_t heap_end_ptr;
  uint8_t ext_loader_ver;
  uint8_t ext_loader_type;
  uint32_t cmd_line_ptr;
  uint32_t initrd_addr_max;
  uint32_t kernel_alignment;
  uint8_t relocatable_kernel;
  uint8_t min_alignment;
  uint16_t xloadflags;
  uint32_t cmdline_size;
  uint32_t hardware_subarch;
  uint64_t hardware_subarch_data;
  uint32_t payload_offset;
  uint32_t payload_length;
  uint64_t setup_data;
  uint64_t pref_address;
  uint32_t init_size;
  uint32_t handover_offset;
  uint32_t kernel_info_offset;
};

// Offsets below are in the kernel image / zero page (the header starts at 0x1f1 in both).
#define SM_HDR_AT(field, off) \
  static_assert(offsetof(SetupHeader, field) + kSetupHeaderOffset == (off), #field)
SM_HDR_AT(setup_sects, 0x1f1);
SM_HDR_AT(boot_flag, 0x1fe);
SM_HDR_AT(jump, 0x200);
SM_HDR_AT(header, 0x202);
SM_HDR_AT(version, 0x206);
SM_HDR_AT(type_of_loader, 0x210);
SM_HDR_AT(loadflags, 0x211);
SM_HDR_AT(code32_start, 0x214);
SM_HDR_AT(ramdisk_image, 0x218);
SM_HDR_AT(ramdisk_size, 0x21c);
SM_HDR_AT(heap_end_ptr, 0x224);
SM_HDR_AT(cmd_line_ptr, 0x228);
SM_HDR_AT(initrd_addr_max, 0x22c);
SM_HDR_AT(kernel_alignment, 0x230);
SM_HDR_AT(relocatable_kernel, 0x234);
SM_HDR_AT(xloadflags, 0x236);
SM_HDR_AT(cmdline_size, 0x238);
SM_HDR_AT(hardware_subarch, 0x23c);
SM_HDR_AT(setup_data, 0x250);
SM_HDR_AT(pref_address, 0x258);
SM_HDR_AT(init_size, 0x260);
SM_HDR_AT(kernel_info_offset, 0x268);
#undef SM_HDR_AT
static_assert(sizeof(SetupHeader) == 0x26c - kSetupHeaderOffset);

struct [[gnu::packed]] BootE820Entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
};
static_assert(sizeof(BootE820Entry) == 20);

inline constexpr size_t kE820MaxEntriesZeroPage = 128;

struct [[gnu::packed]] BootParams {
  uint8_t _pad0[0x0c0];
  uint32_t ext_ramdisk_image;  // 0x0c0: high 32 bits of the initrd address
  uint32_t ext_ramdisk_size;   // 0x0c4
  uint32_t ext_cmd_line_ptr;   // 0x0c8
  uint8_t _pad1[0x1e8 - 0x0cc];
  uint8_t e820_entries;  // 0x1e8
  uint8_t _pad2[0x1ef - 0x1e9];
  uint8_t sentinel;  // 0x1ef: must stay 0, or the kernel distrusts the zero page
  uint8_t _pad3;
  SetupHeader hdr;  // 0x1f1
  uint8_t _pad4[0x2d0 - 0x1f1 - sizeof(SetupHeader)];
  BootE820Entry e820_table[kE820MaxEntriesZeroPage];  // 0x2d0
  uint8_t _pad5[0x1000 - 0xcd0];
};
static_assert(offsetof(BootParams, ext_ramdisk_image) == 0x0c0);
static_assert(offsetof(BootParams, ext_cmd_line_ptr) == 0x0c8);
static_assert(offsetof(BootParams, e820_entries) == 0x1e8);
static_assert(offsetof(BootParams, sentinel) == 0x1ef);
static_assert(offsetof(BootParams, hdr) == 0x1f1);
static_assert(offsetof(BootParams, e820_table) == 0x2d0);
static_assert(sizeof(BootParams) == 0x1000);

// The most setup header bytes a loader copies into the zero page: up to edd_mbr_sig_buffer
// at 0x290, where the header's room in struct boot_params ends.
inline constexpr size_t kSetupHeaderMaxCopy = 0x290 - kSetupHeaderOffset;

}  // namespace sm::x86::abi
