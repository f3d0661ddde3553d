#include "devices/virtio/rng.h"

#include <sys/random.h>

#include <cerrno>

namespace sm::virtio {

uint64_t Rng::device_features() const { return kFeatureVersion1 | kFeatureIndirectDesc | kFeatureEventIdx; }

void Rng::process_queue(uint16_t q) {
  if (q != 0) return;
  Queue& queue = queues_[0];
  bool pushed = false;
  while (auto chain = queue.pop(*mem_)) {
    // Cap per request so one huge buffer cannot keep the thread in getrandom for long.
    uint64_t want = std::min<uint64_t>(chain->writable_len(), max_bytes_);
    uint64_t done = 0;
    for (auto seg : chain->writable_rest(want)) {
      size_t off = 0;
      while (off < seg.size()) {
        ssize_t n = ::getrandom(seg.data() + off, seg.size() - off, 0);
        if (n < 0) {
          if (errno == EINTR) continue;
          throw sys_error("getrandom");
        }
        off += static_cast<size_t>(n);
      }
      done += seg.size();
    }
    chain->skip_writable(done);
    queue.push_used(*mem_, chain->head(), static_cast<uint32_t>(done));
    pushed = true;
  }
  if (pushed) signal_used(0);
}

}  // namespace sm::virtio
