// Shared by the randomized unit test (fuzz_input_test.cc) and the libFuzzer target
// (fuzz/agent_protocol_fuzz.cc): one input is a byte stream from a peer of the agent protocol,
// read as either end reads it. The first byte picks the end (even: the host reading the agent's
// frames; odd: the agent reading the host's) and how the stream is cut into reads; the rest goes
// through FrameDecoder, and every frame it yields is decoded as that end decodes its type. The
// only acceptable outcomes are frames, messages, or ProtocolError (sm::GuestError); any other
// exception, a crash or a sanitizer report is a bug.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "agent/protocol.h"

namespace sm::agent::fuzz {

struct Outcome {
  int frames = 0;    // frames the decoder produced
  int messages = 0;  // JSON messages that decoded
  int refused = 0;   // ProtocolError from the decoder or a message
};

// Decodes one frame's payload as `host` (the agent's replies) or the agent (the host's requests).
inline void decode_one(const Frame& f, bool host, Outcome& o) {
  const std::string_view p = f.payload;
  using T = FrameType;
  if (host) {
    switch (f.type) {
      case T::kHello: (void)decode<HelloReply>(p); break;
      case T::kStarted: (void)decode<Started>(p); break;
      case T::kExit: (void)decode<ExitStatus>(p); break;
      case T::kFileInfo: (void)decode<FileInfo>(p); break;
      case T::kOk: decode_ok(p); break;
      case T::kError: (void)decode<ErrorInfo>(p); break;
      case T::kRestore: (void)decode<RestoreReply>(p); break;
      default: return;  // raw data, or a type the host never expects (its client refuses it)
    }
  } else {
    switch (f.type) {
      case T::kHello: (void)decode<HelloRequest>(p); break;
      case T::kExec: (void)decode<ExecRequest>(p); break;
      case T::kSignal: (void)decode<SignalRequest>(p); break;
      case T::kResize: (void)decode<TtySize>(p); break;
      case T::kWriteFile: (void)decode<WriteFileRequest>(p); break;
      case T::kReadFile: (void)decode<ReadFileRequest>(p); break;
      case T::kPowerOff: (void)decode<PowerOffRequest>(p); break;
      case T::kRestore: (void)decode<RestoreRequest>(p); break;
      case T::kNetwork: (void)decode<NetworkRequest>(p); break;
      default: return;
    }
  }
  ++o.messages;
}

inline Outcome run_one(std::span<const uint8_t> in) {
  Outcome o;
  if (in.empty()) return o;
  const bool host = (in[0] & 1) == 0;
  const size_t chunk = 1 + (in[0] >> 1);  // 1..128 bytes per read
  in = in.subspan(1);
  FrameDecoder d;
  try {
    for (size_t at = 0; at < in.size(); at += chunk) {
      const auto piece = in.subspan(at, std::min(chunk, in.size() - at));
      d.feed(std::string_view(reinterpret_cast<const char*>(piece.data()), piece.size()));
      while (auto f = d.next()) {
        ++o.frames;
        try {
          decode_one(*f, host, o);
        } catch (const ProtocolError&) {
          ++o.refused;  // one bad message; the decoder itself is still in step
        }
      }
    }
    d.finish();
  } catch (const ProtocolError&) {
    ++o.refused;
  }
  return o;
}

}  // namespace sm::agent::fuzz
