#include "test_support.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace fs = std::filesystem;

namespace sm::test {

PrivateDirs use_private_dirs(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + ".XXXXXX";
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp " + tmpl + " failed");
  PrivateDirs d{tmpl, fs::path(tmpl) / "data", fs::path(tmpl) / "run", fs::path(tmpl) / "tmp"};
  for (const auto& p : {d.data, d.run, d.tmp}) fs::create_directories(p);
  ::setenv("XDG_DATA_HOME", d.data.c_str(), 1);
  ::setenv("SUPERMACHINE_RUNTIME_DIR", d.run.c_str(), 1);
  ::setenv("TMPDIR", d.tmp.c_str(), 1);
  return d;
}

fs::path test_images_dir(const std::string& source_dir) {
  if (const char* d = std::getenv("SM_TEST_IMAGES"); d && *d) return d;
  const std::string script = source_dir + "/tests/images/build";
  std::FILE* p = ::popen(script.c_str(), "r");
  if (!p) throw std::runtime_error("cannot run " + script);
  std::string out;
  char buf[512];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  if (::pclose(p) != 0) throw std::runtime_error(script + " failed; run scripts/setup");
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace sm::test
