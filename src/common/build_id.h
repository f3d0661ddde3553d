// The identity of the code that is running: the GNU build-id note of the executable or shared
// object this library is linked into (every rebuild changes it). A snapshot records it, so a
// state written by one build is never loaded by another whose state layouts may differ.
#pragma once

#include <string>

namespace sm {

// Hex digits of the build-id, prefixed with the version ("0.1.0+3f2a..."); the version alone
// when the object carries no build-id note.
[[nodiscard]] const std::string& build_identity();

}  // namespace sm
