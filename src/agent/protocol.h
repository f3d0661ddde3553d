// The host <-> guest-agent control protocol (docs/agent-protocol.md): length-prefixed frames over
// one stream (virtio-vsock in a VM, a Unix socket in tests). JSON payloads for control messages,
// raw bytes for stdio and file data.
//
// This file is compiled into both the host library and the static guest agent (sm-agent), so it
// depends only on the standard library and nlohmann-json (header-only). Both sides treat what
// they receive as hostile: every size is capped, every field is type-checked, and anything
// malformed raises ProtocolError, which ends that session (never the process).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace sm::agent {

// A client offers [min, max]; the agent picks the highest version both speak, or answers ERROR
// unsupported_version. Version 2 adds RESTORE (per-clone facts after a snapshot restore),
// version 3 adds NETWORK (the guest's interface, resolv.conf and hosts); a version 1 session is
// exactly the original protocol.
inline constexpr uint32_t kMinProtocolVersion = 1;
inline constexpr uint32_t kProtocolVersion = 3;  // the highest version this build speaks
inline constexpr uint32_t kRestoreVersion = 2;   // the first version with RESTORE
inline constexpr uint32_t kNetworkVersion = 3;   // the first version with NETWORK
inline constexpr std::string_view kProtocolName = "supermachine-agent";

// The vsock port the agent listens on inside the VM.
inline constexpr uint32_t kDefaultPort = 1024;
// The vsock port of the agent's TCP forwarder (no frames: one line "TCP <port>\n", answered
// "OK\n" or "ERR <message>\n", then raw bytes to 127.0.0.1:<port> in the guest). See connect_tcp()
// in client.h and docs/agent-protocol.md.
inline constexpr uint32_t kTcpForwardPort = 1026;
// The request line's caps on the forwarder (the agent drops a connection past either).
inline constexpr size_t kMaxTcpRequestLine = 32;
inline constexpr std::chrono::milliseconds kTcpRequestDeadline{2000};

// Frame = u32 little-endian payload length, u8 type, payload.
inline constexpr size_t kFrameHeaderSize = 5;
// Hard caps, enforced by the decoder before any payload is buffered.
inline constexpr size_t kMaxFramePayload = 1 << 20;  // any frame
inline constexpr size_t kMaxJsonPayload = 256 << 10;  // frames whose payload is JSON
inline constexpr int kMaxJsonDepth = 8;               // nesting of [ and { in one message
// What senders put in one data frame (receivers accept up to kMaxFramePayload).
inline constexpr size_t kDataChunk = 64 << 10;

enum class FrameType : uint8_t {
  kHello = 1,       // JSON, both ways: version negotiation; the agent's reply means "ready"
  kExec = 2,        // JSON, host -> agent: start a process (ExecRequest)
  kStarted = 3,     // JSON, agent -> host: {"pid"}
  kStdin = 4,       // raw, host -> agent
  kStdinEof = 5,    // empty, host -> agent
  kStdout = 6,      // raw, agent -> host
  kStderr = 7,      // raw, agent -> host
  kExit = 8,        // JSON, agent -> host: ExitStatus; ends the exec session
  kSignal = 9,      // JSON, host -> agent: {"signal"[, "target": "main"]}
  kResize = 10,     // JSON, host -> agent: {"rows", "cols"}
  kWriteFile = 11,  // JSON, host -> agent: WriteFileRequest, then `size` bytes of kFileData
  kReadFile = 12,   // JSON, host -> agent: ReadFileRequest
  kFileData = 13,   // raw, both ways
  kFileInfo = 14,   // JSON, agent -> host: {"size", "mode"} before a read file's data
  kOk = 15,         // JSON, agent -> host: a request other than exec completed
  kError = 16,      // JSON, agent -> host: ErrorInfo; ends the request (and on protocol errors,
                    // the connection)
  kPowerOff = 17,   // JSON, host -> agent: {"status"}: stop everything, power the VM off
  kRestore = 18,    // JSON, host -> agent (v2): RestoreRequest after a snapshot restore; OK/ERROR
  kNetwork = 19,    // JSON, host -> agent (v3): NetworkRequest; OK/ERROR
};

[[nodiscard]] bool is_known_type(uint8_t type);
[[nodiscard]] bool is_json_type(FrameType type);
[[nodiscard]] std::string_view type_name(FrameType type);
// The first protocol version in which `type` may be sent (1 for the original frames).
[[nodiscard]] uint32_t min_version_for(FrameType type);
// Throws ProtocolError when `type` does not exist in the session's negotiated `version`.
void check_frame_version(FrameType type, uint32_t version);

// Malformed or unexpected input from the peer. Derives from GuestError because on the host the
// peer is the guest; inside the guest the agent catches it per connection.
class ProtocolError : public GuestError {
 public:
  using GuestError::GuestError;
};

struct Frame {
  FrameType type{};
  std::string payload;
};

// Appends one encoded frame to `out`. Throws ProtocolError if the payload exceeds the caps.
void encode_frame(std::string& out, FrameType type, std::string_view payload);
[[nodiscard]] std::string encode_frame(FrameType type, std::string_view payload);

// Incremental decoder: feed bytes as they arrive, take complete frames out. Rejects a frame as
// soon as its header is seen if the type is unknown or the length is over the cap, so a hostile
// peer cannot make it buffer more than one capped frame.
class FrameDecoder {
 public:
  void feed(std::string_view bytes);
  // The next complete frame, or nullopt when more bytes are needed. Throws ProtocolError.
  [[nodiscard]] std::optional<Frame> next();
  // Call at end of stream: throws ProtocolError if a partial frame is pending.
  void finish() const;
  [[nodiscard]] size_t buffered() const { return buf_.size() - pos_; }

 private:
  std::string buf_;
  size_t pos_ = 0;
};

// ---- Messages ------------------------------------------------------------------------------

struct HelloRequest {
  uint32_t min_version = kMinProtocolVersion;
  uint32_t max_version = kProtocolVersion;
};

struct HelloReply {
  uint32_t version = kProtocolVersion;
  std::string agent;      // "sm-agent 0.1.0"
  bool init = false;      // running as PID 1 inside a VM (false: --no-init on a host)
  std::string hostname;
};

// The version an agent speaking [kMinProtocolVersion, kProtocolVersion] picks for `offer`: the
// highest both speak, or nullopt when the ranges do not meet (ERROR unsupported_version).
[[nodiscard]] std::optional<uint32_t> negotiate_version(const HelloRequest& offer);

// The hostname rule shared by the host (container specs), the boot configuration
// (sm.hostname) and RESTORE: 1..64 characters, each a letter, digit, '-', '_' or '.'.
inline constexpr size_t kMaxHostname = 64;
[[nodiscard]] bool valid_hostname(std::string_view name);

struct TtySize {
  uint16_t rows = 24;
  uint16_t cols = 80;
  bool operator==(const TtySize&) const = default;
};

// A resource limit applied to the process before exec. `resource` is the Docker --ulimit name
// ("nofile", "nproc", "core", ...); nullopt = unlimited.
struct Rlimit {
  std::string resource;
  std::optional<uint64_t> soft;
  std::optional<uint64_t> hard;
};

struct ExecRequest {
  std::vector<std::string> argv;  // argv[0] is looked up in the PATH of `env` when it has no '/'
  std::vector<std::string> env;   // "KEY=VALUE"; the agent adds PATH, HOME, HOSTNAME (and TERM
                                  // with a TTY) when absent, as Docker does
  std::string cwd;                // empty: "/"
  bool create_cwd = false;        // mkdir -p the cwd first (Docker does for an image WorkingDir)
  std::string user;               // empty: root. "uid", "uid:gid", "name", "name:group"
  std::optional<TtySize> tty;     // run on a pseudo-terminal (stdout and stderr merged)
  std::chrono::milliseconds timeout{0};  // 0: none. On expiry: SIGKILL, exit reports timed_out
  bool attach_stdin = false;      // the host streams stdin; otherwise stdin is /dev/null
  bool main = false;              // the container's main process: its end powers the VM off
  bool detach = false;            // main only: no stdio over the connection (output goes to
                                  // the console); the session ends at STARTED
  std::vector<Rlimit> rlimits;
};

struct Started {
  int64_t pid = 0;
};

struct ExitStatus {
  int code = 0;            // exit status, or 128 + signal when killed by a signal
  int signal = 0;          // the terminating signal, 0 when the process exited
  bool timed_out = false;  // the agent killed it because ExecRequest::timeout passed
  bool operator==(const ExitStatus&) const = default;
};

struct SignalRequest {
  int signal = 0;
  bool main = false;  // outside an exec session: signal the main process
};

struct WriteFileRequest {
  std::string path;        // absolute
  uint32_t mode = 0644;
  uint64_t size = 0;       // exactly this many bytes of kFileData follow
  bool make_parents = false;
  std::optional<uint32_t> uid, gid;
};

struct ReadFileRequest {
  std::string path;                 // absolute
  uint64_t max_size = 64ull << 20;  // larger files are refused (file_error)
};

struct FileInfo {
  uint64_t size = 0;
  uint32_t mode = 0;
};

struct PowerOffRequest {
  int status = 0;
};

// RESTORE (protocol v2): the facts that differ between clones of one snapshot, set right after
// the restore, before anything runs in the clone. The agent sets the wall clock, mixes in (and
// credits) the entropy and reseeds the kernel's CRNG at once, and sets the hostname.
inline constexpr size_t kMinRestoreEntropy = 32;   // bytes: one full CRNG seed
inline constexpr size_t kMaxRestoreEntropy = 512;  // bytes: the kernel's input pool size
struct RestoreRequest {
  int64_t realtime_ns = 0;  // the host's CLOCK_REALTIME, ns since the epoch (> 0)
  std::string entropy;      // raw bytes, kMinRestoreEntropy..kMaxRestoreEntropy (hex on the wire)
  std::string hostname;     // valid_hostname()
};

// RESTORE's OK payload: which steps changed the kernel's state. As PID 1 in a VM all three are
// true. Without init (sm-agent --no-init on a host) the clock and hostname are left alone, and
// the entropy is only mixed into the pool (a plain write, neither credited nor reseeded), so all
// three are false; the agent's own hostname (HELLO, HOSTNAME of new processes) changes either way.
struct RestoreReply {
  bool clock_set = false;         // clock_settime(CLOCK_REALTIME)
  bool entropy_credited = false;  // RNDADDENTROPY, then RNDRESEEDCRNG
  bool hostname_set = false;      // sethostname()
  bool operator==(const RestoreReply&) const = default;
};

// NETWORK (protocol v3): configures the guest's network from the host's address plan. The agent
// brings `lo` up, configures the interface with `mac` (MTU, up, addresses, default routes, over
// rtnetlink; idempotent, so a second NETWORK after a snapshot restore succeeds), then writes
// /etc/resolv.conf and /etc/hosts in the container's root, atomically.
inline constexpr size_t kMaxNameservers = 16;
inline constexpr size_t kMaxSearchDomains = 6;  // glibc's historical MAXDNSRCH
inline constexpr size_t kMaxResolvOptions = 16;
inline constexpr size_t kMaxExtraHosts = 256;
inline constexpr size_t kMaxDnsName = 253;
struct NetworkInterface {
  std::string mac;            // "52:54:00:12:34:56": the interface with this address is configured
  unsigned mtu = 0;           // 68..65535 (1280.. with IPv6); 0 leaves the MTU alone
  std::string ipv4;           // IPv4 literal
  unsigned ipv4_prefix = 24;  // 1..32
  std::string gateway4;       // IPv4 literal; empty: no IPv4 default route
  std::string ipv6;           // IPv6 literal; empty: no IPv6 address (and no gateway6)
  unsigned ipv6_prefix = 64;  // 1..128
  std::string gateway6;       // IPv6 literal; empty: no IPv6 default route
  bool operator==(const NetworkInterface&) const = default;
};
struct NetworkRequest {
  using Interface = NetworkInterface;
  std::optional<Interface> interface;     // absent: leave the interfaces alone (lo is still brought up)
  std::vector<std::string> nameservers;   // IP literals, up to kMaxNameservers ("nameserver X")
  std::vector<std::string> search;        // DNS names, up to kMaxSearchDomains ("search a b")
  std::vector<std::string> options;       // resolver options ("ndots:1", "edns0"), up to kMaxResolvOptions
  std::vector<std::pair<std::string, std::string>> hosts;  // extra /etc/hosts lines (name, ip)
  std::string hostname;                   // /etc/hosts' own line (valid_hostname); empty: none
  bool operator==(const NetworkRequest&) const = default;
};
// A DNS name: 1..253 characters, dot-separated labels of 1..63 letters, digits, '-' or '_'
// (no leading or trailing dot, no empty label). Every valid_hostname() with dots in the right
// places is one.
[[nodiscard]] bool valid_dns_name(std::string_view name);
[[nodiscard]] bool valid_ipv4(std::string_view text);
[[nodiscard]] bool valid_ipv6(std::string_view text);
// "52:54:00:12:34:56": six pairs of hex digits, either case.
[[nodiscard]] bool valid_mac(std::string_view text);
// Why decode<NetworkRequest> would refuse `m`, or empty when it is valid. Both encode and decode
// apply it: one rule on both sides.
[[nodiscard]] std::string network_problem(const NetworkRequest& m);

enum class ErrorCode {
  kProtocol,              // malformed or unexpected frame; the agent closes the connection
  kUnsupportedVersion,    // no common protocol version
  kBadRequest,            // well-formed but invalid request (empty argv, relative path, ...)
  kCommandNotFound,       // argv[0] not found (Docker exits 127)
  kCommandNotExecutable,  // found but cannot be executed: permission, format (Docker: 126)
  kExecFailed,            // could not set the process up: cwd, user, rlimits, tty (126)
  kBusy,                  // a main process already exists / no main process to signal
  kFileError,             // write_file / read_file failed (errno in the message)
  kRestoreFailed,         // a RESTORE step failed (the step and errno in the message)
  kNetworkFailed,         // a NETWORK step failed (the step and errno in the message)
  kInternal,              // the agent failed on its own side
};
[[nodiscard]] std::string_view error_code_name(ErrorCode code);
[[nodiscard]] std::optional<ErrorCode> error_code_from_name(std::string_view name);
// The exit status a CLI should use for an exec that failed with `code` (Docker's conventions).
[[nodiscard]] int exit_code_for(ErrorCode code);

struct ErrorInfo {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
};

// Encoders produce a JSON payload; decoders validate everything and throw ProtocolError.
[[nodiscard]] std::string encode(const HelloRequest& m);
[[nodiscard]] std::string encode(const HelloReply& m);
[[nodiscard]] std::string encode(const ExecRequest& m);
[[nodiscard]] std::string encode(const Started& m);
[[nodiscard]] std::string encode(const ExitStatus& m);
[[nodiscard]] std::string encode(const SignalRequest& m);
[[nodiscard]] std::string encode(const TtySize& m);
[[nodiscard]] std::string encode(const WriteFileRequest& m);
[[nodiscard]] std::string encode(const ReadFileRequest& m);
[[nodiscard]] std::string encode(const FileInfo& m);
[[nodiscard]] std::string encode(const PowerOffRequest& m);
// Throws sm::Error (not ProtocolError: the caller's own input) for a request decode would refuse.
[[nodiscard]] std::string encode(const RestoreRequest& m);
[[nodiscard]] std::string encode(const RestoreReply& m);
// Throws sm::Error (the caller's own input) for a request network_problem() refuses.
[[nodiscard]] std::string encode(const NetworkRequest& m);
[[nodiscard]] std::string encode(const ErrorInfo& m);
[[nodiscard]] std::string encode_ok();

template <typename T>
[[nodiscard]] T decode(std::string_view payload);
template <> HelloRequest decode<HelloRequest>(std::string_view);
template <> HelloReply decode<HelloReply>(std::string_view);
template <> ExecRequest decode<ExecRequest>(std::string_view);
template <> Started decode<Started>(std::string_view);
template <> ExitStatus decode<ExitStatus>(std::string_view);
template <> SignalRequest decode<SignalRequest>(std::string_view);
template <> TtySize decode<TtySize>(std::string_view);
template <> WriteFileRequest decode<WriteFileRequest>(std::string_view);
template <> ReadFileRequest decode<ReadFileRequest>(std::string_view);
template <> FileInfo decode<FileInfo>(std::string_view);
template <> PowerOffRequest decode<PowerOffRequest>(std::string_view);
template <> RestoreRequest decode<RestoreRequest>(std::string_view);
template <> RestoreReply decode<RestoreReply>(std::string_view);
template <> NetworkRequest decode<NetworkRequest>(std::string_view);
template <> ErrorInfo decode<ErrorInfo>(std::string_view);
// Validates that an OK payload is a JSON object (its fields are informational).
void decode_ok(std::string_view payload);

}  // namespace sm::agent
