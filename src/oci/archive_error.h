// libarchive's error string for `a`, never null: archive_error_string() returns NULL when
// libarchive set no message (found by fuzzing: a truncated gzip member), and a null char* is
// undefined behaviour for std::string and a format_error for fmt.
#pragma once

#include <archive.h>

namespace sm::oci {

inline const char* archive_why(archive* a) {
  const char* s = a ? archive_error_string(a) : nullptr;
  return s ? s : "unknown libarchive error";
}

}  // namespace sm::oci
