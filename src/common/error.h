// Errors: supermachine reports failures as exceptions of one type, sm::Error, everywhere
// (chosen once, see docs/architecture.md; the class itself is public, in
// include/supermachine/error.h). The message says what failed, why, and when it
// helps, what to do. GuestError marks failures caused by guest-controlled data: the VMM
// turns them into a device error for the guest, never into a crash.
#pragma once

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

#include "supermachine/error.h"

namespace sm {

// Raised when data the guest controls (descriptors, addresses, lengths, packets) is invalid.
class GuestError : public Error {
 public:
  using Error::Error;
};

// "what: strerror(errno)" for a failed system call.
[[nodiscard]] inline Error sys_error(const std::string& what, int err = errno) {
  return Error(fmt::format("{}: {}", what, std::strerror(err)));
}

}  // namespace sm
