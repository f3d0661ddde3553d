#include "net/make_backend.h"

#include "common/error.h"
#include "net/slirp_backend.h"
#include "net/tap_backend.h"

namespace sm::net {

std::shared_ptr<Backend> make_backend(const NetworkConfig& cfg) {
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
