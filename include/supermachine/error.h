// sm::Error: the one exception type supermachine throws, from the library API and everywhere
// inside it (docs/architecture.md). Its message says what failed, why and, when it helps, what
// to do; catch it as std::runtime_error if you prefer.
#pragma once

#include <stdexcept>
#include <string>

namespace sm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace sm
