// What an sm::Image holds: the resolved image a container VM boots (shared by image.cc and
// vm.cc; not part of the public API).
#pragma once

#include "runtime/image.h"
#include "supermachine/supermachine.h"

namespace sm {

struct Image::Impl {
  runtime::ResolvedImage resolved;
  std::string digest;  // resolved.manifest as a string, for digest()
};

}  // namespace sm
