// Builds a VM's network backend from its NetworkConfig: libslirp's user-mode NAT
// (slirp_backend.h) or a TAP interface (tap_backend.h). Called once per VM, before it boots,
// on the thread that builds the VM; the backend then runs its own thread. The first call raises
// the process's soft RLIMIT_NOFILE to its hard limit (guests' connections are host sockets).
#pragma once

#include <memory>

#include "net/backend.h"
#include "net/config.h"

namespace sm::net {

// Mode::user -> SlirpBackend (cfg.publish bound now), Mode::tap -> TapBackend, Mode::none ->
// nullptr. Throws sm::Error when the backend cannot start (a taken port, no TAP access).
[[nodiscard]] std::shared_ptr<Backend> make_backend(const NetworkConfig& cfg);

}  // namespace sm::net
