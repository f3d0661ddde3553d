#include "common/build_id.h"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>

#include <cstring>

#include <fmt/format.h>

#include "supermachine_version.h"

namespace sm {
namespace {

struct Search {
  uintptr_t addr;  // an address inside the object we look for
  std::string id;
};

int find_note(dl_phdr_info* info, size_t, void* data) {
  auto* s = static_cast<Search*>(data);
  bool contains = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    uintptr_t start = info->dlpi_addr + ph.p_vaddr;
    if (s->addr >= start && s->addr < start + ph.p_memsz) contains = true;
  }
  if (!contains) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_NOTE) continue;
    const auto* p = reinterpret_cast<const unsigned char*>(info->dlpi_addr + ph.p_vaddr);
    const auto* end = p + ph.p_memsz;
    while (p + sizeof(ElfW(Nhdr)) <= end) {
      ElfW(Nhdr) nh;
      std::memcpy(&nh, p, sizeof nh);
      const unsigned char* name = p + sizeof nh;
      const unsigned char* desc = name + ((nh.n_namesz + 3) & ~3u);
      const unsigned char* next = desc + ((nh.n_descsz + 3) & ~3u);
      if (next > end) break;
      if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 && std::memcmp(name, "GNU", 4) == 0) {
        for (unsigned j = 0; j < nh.n_descsz; ++j) s->id += fmt::format("{:02x}", desc[j]);
        return 1;
      }
      p = next;
    }
  }
  return 1;  // found the object; it has no build-id
}

}  // namespace

const std::string& build_identity() {
  static const std::string id = [] {
    Search s{reinterpret_cast<uintptr_t>(&build_identity), {}};
    dl_iterate_phdr(find_note, &s);
    return s.id.empty() ? std::string(SUPERMACHINE_VERSION) : fmt::format("{}+{}", SUPERMACHINE_VERSION, s.id);
  }();
  return id;
}

}  // namespace sm
