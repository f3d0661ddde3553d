#include "net/make_backend.h"

#include <sys/resource.h>

#include <mutex>

#include "common/error.h"
#include "net/slirp_backend.h"
#include "net/tap_backend.h"

namespace sm::net {

namespace {

// Every connection of a guest is a socket of this process, so a process hosting VMs needs more
// than the usual 1024 descriptors: the soft limit goes up to the hard one, once, as Go's
// runtime and systemd services do. The flow cap per VM (flows.h) is a share of the result.
void raise_open_file_limit() {
  static std::once_flag once;
  std::call_once(once, [] {
    rlimit r{};
    if (::getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur >= r.rlim_max) return;
    r.rlim_cur = r.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &r);  // best effort: the cap adapts to what we have
  });
}

}  // namespace

std::shared_ptr<Backend> make_backend(const NetworkConfig& cfg) {
  raise_open_file_limit();
  switch (cfg.mode) {
    case Mode::none:
      return nullptr;
    case Mode::user:
      return SlirpBackend::create(cfg);
    case Mode::tap:
      if (!cfg.publish.empty()) {
        throw Error("ports cannot be published with --network tap: the VM is on your bridge; "
                    "reach it at its address");
      }
      return TapBackend::create(cfg);
  }
  throw Error("network: unknown network mode");
}

}  // namespace sm::net
