// RESTORE (protocol v2): what a clone of a snapshot must change about itself before anything runs
// in it. Every clone of one snapshot wakes up with the same wall clock (the capture's), the same
// CRNG state (so it would hand out the same "random" bytes as its siblings) and the same hostname;
// the host sends the clone's own values right after the restore (docs/agent-protocol.md).
#pragma once

#include <variant>

#include "agent/protocol.h"

namespace sm::agent {

// Applies `req` in order: clock, entropy, hostname. Stops at the first step that fails and
// returns ErrorInfo{kRestoreFailed, "<step>: <strerror> (errno N)"}; steps before it stay done.
// With `init` false (sm-agent --no-init, tests on a host) nothing of the host's is changed: the
// clock and hostname are skipped, and the entropy is only mixed in with a plain write to
// /dev/urandom (unprivileged, never credited), so the path is exercised without crediting test
// bytes as entropy on the host.
[[nodiscard]] std::variant<RestoreReply, ErrorInfo> apply_restore(const RestoreRequest& req, bool init);

}  // namespace sm::agent
