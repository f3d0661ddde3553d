// What the container VM tests (run_tests, api_tests) share: a private image store, VM state
// directory and TMPDIR for the test process, and the offline test images.
#pragma once

#include <filesystem>
#include <string>

namespace sm::test {

struct PrivateDirs {
  std::filesystem::path root;  // holds the three below; the caller removes it
  std::filesystem::path data;  // XDG_DATA_HOME: the image store
  std::filesystem::path run;   // SUPERMACHINE_RUNTIME_DIR: VM records and sockets
  std::filesystem::path tmp;   // TMPDIR
};

// Creates /tmp/<prefix>.XXXXXX with data/, run/ and tmp/ and points this process's environment
// (and so every child's) at them, so a test sees exactly what the runtime leaves behind.
PrivateDirs use_private_dirs(const std::string& prefix);

// The directory tests/images/build prints (it builds the images once, then answers from its
// cache); $SM_TEST_IMAGES overrides it. Throws std::runtime_error when the script fails.
std::filesystem::path test_images_dir(const std::string& source_dir);

}  // namespace sm::test
