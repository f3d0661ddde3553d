#include "agent/protocol.h"

#include <arpa/inet.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

namespace sm::agent {

using nlohmann::json;

namespace {

constexpr std::array<std::pair<FrameType, std::string_view>, 19> kTypes{{
    {FrameType::kHello, "HELLO"},
    {FrameType::kExec, "EXEC"},
    {FrameType::kStarted, "STARTED"},
    {FrameType::kStdin, "STDIN"},
    {FrameType::kStdinEof, "STDIN_EOF"},
    {FrameType::kStdout, "STDOUT"},
    {FrameType::kStderr, "STDERR"},
    {FrameType::kExit, "EXIT"},
    {FrameType::kSignal, "SIGNAL"},
    {FrameType::kResize, "RESIZE"},
    {FrameType::kWriteFile, "WRITE_FILE"},
    {FrameType::kReadFile, "READ_FILE"},
    {FrameType::kFileData, "FILE_DATA"},
    {FrameType::kFileInfo, "FILE_INFO"},
    {FrameType::kOk, "OK"},
    {FrameType::kError, "ERROR"},
    {FrameType::kPowerOff, "POWER_OFF"},
    {FrameType::kRestore, "RESTORE"},
    {FrameType::kNetwork, "NETWORK"},
}};

constexpr std::array<std::pair<ErrorCode, std::string_view>, 11> kErrorCodes{{
    {ErrorCode::kProtocol, "protocol"},
    {ErrorCode::kUnsupportedVersion, "unsupported_version"},
    {ErrorCode::kBadRequest, "bad_request"},
    {ErrorCode::kCommandNotFound, "command_not_found"},
    {ErrorCode::kCommandNotExecutable, "command_not_executable"},
    {ErrorCode::kExecFailed, "exec_failed"},
    {ErrorCode::kBusy, "busy"},
    {ErrorCode::kFileError, "file_error"},
    {ErrorCode::kRestoreFailed, "restore_failed"},
    {ErrorCode::kNetworkFailed, "network_failed"},
    {ErrorCode::kInternal, "internal"},
}};

[[noreturn]] void fail(const std::string& what) { throw ProtocolError(what); }

uint32_t read_le32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// nlohmann's parser is iterative, but destroying a deeply nested value recurses, and nothing
// we accept nests deeper than a few levels; count brackets outside strings before parsing.
void check_depth(std::string_view s) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : s) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) fail("JSON message nests deeper than " + std::to_string(kMaxJsonDepth));
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

json parse_object(std::string_view payload, std::string_view what) {
  if (payload.size() > kMaxJsonPayload) fail(std::string(what) + ": JSON payload too large");
  check_depth(payload);
  json j = json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(std::string(what) + ": payload is not valid JSON");
  if (!j.is_object()) fail(std::string(what) + ": payload is not a JSON object");
  return j;
}

// Field accessors: a missing optional field gives the default; a present field of the wrong
// type or range is an error.
const json* field(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

std::string where(std::string_view what, const char* key) { return std::string(what) + "." + key; }

bool get_bool(const json& j, const char* key, std::string_view what, bool def = false) {
  const json* f = field(j, key);
  if (!f) return def;
  if (!f->is_boolean()) fail(where(what, key) + " must be a boolean");
  return f->get<bool>();
}

template <typename T>
T get_int(const json& j, const char* key, std::string_view what, std::optional<T> def = std::nullopt) {
  const json* f = field(j, key);
  if (!f) {
    if (def) return *def;
    fail(where(what, key) + " is missing");
  }
  if (f->is_number_unsigned()) {
    uint64_t v = f->get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<T>::max())) fail(where(what, key) + " is out of range");
    return static_cast<T>(v);
  }
  if (f->is_number_integer()) {
    int64_t v = f->get<int64_t>();
    if constexpr (std::is_unsigned_v<T>) {
      fail(where(what, key) + " must not be negative");
    } else {
      if (v < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
          v > static_cast<int64_t>(std::numeric_limits<T>::max()))
        fail(where(what, key) + " is out of range");
      return static_cast<T>(v);
    }
  }
  fail(where(what, key) + " must be an integer");
}

void check_c_string(const std::string& s, const std::string& name) {
  if (s.find('\0') != std::string::npos) fail(name + " contains a NUL byte");
}

std::string get_string(const json& j, const char* key, std::string_view what, bool required = false) {
  const json* f = field(j, key);
  if (!f) {
    if (required) fail(where(what, key) + " is missing");
    return {};
  }
  if (!f->is_string()) fail(where(what, key) + " must be a string");
  std::string s = f->get<std::string>();
  check_c_string(s, where(what, key));
  return s;
}

std::vector<std::string> get_strings(const json& j, const char* key, std::string_view what) {
  const json* f = field(j, key);
  if (!f) return {};
  if (!f->is_array()) fail(where(what, key) + " must be an array of strings");
  std::vector<std::string> out;
  out.reserve(f->size());
  for (const auto& e : *f) {
    if (!e.is_string()) fail(where(what, key) + " must be an array of strings");
    out.push_back(e.get<std::string>());
    check_c_string(out.back(), where(what, key));
  }
  return out;
}

void check_abs_path(const std::string& p, std::string_view what) {
  if (p.empty() || p[0] != '/') fail(std::string(what) + " must be an absolute path");
  if (p.size() > 4096) fail(std::string(what) + " is longer than PATH_MAX");
}

// Requests must carry argv, env and paths exactly, and JSON strings are UTF-8: refuse rather
// than silently replace bytes. Replies (messages, hostnames) are informational: replace.
std::string dump(const json& j) {
  try {
    return j.dump();
  } catch (const json::exception&) {
    throw Error("agent protocol: a string is not valid UTF-8 (argv, env, paths and users must be UTF-8)");
  }
}
std::string dump_lossy(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

constexpr char kHexDigits[] = "0123456789abcdef";

std::string to_hex(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) {
    auto b = static_cast<unsigned char>(c);
    out.push_back(kHexDigits[b >> 4]);
    out.push_back(kHexDigits[b & 0xf]);
  }
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// What decode<RestoreRequest> refuses, as a reason (empty: valid). Shared by the encoder, which
// refuses its caller's input the same way.
std::string restore_problem(const RestoreRequest& m) {
  if (m.realtime_ns <= 0) return "RESTORE.realtime_ns must be a positive time since the epoch";
  if (m.entropy.size() < kMinRestoreEntropy || m.entropy.size() > kMaxRestoreEntropy)
    return "RESTORE.entropy must be " + std::to_string(kMinRestoreEntropy) + ".." +
           std::to_string(kMaxRestoreEntropy) + " bytes, not " + std::to_string(m.entropy.size());
  if (!valid_hostname(m.hostname))
    return "RESTORE.hostname must be 1.." + std::to_string(kMaxHostname) +
           " letters, digits, '-', '_' or '.'";
  return {};
}

}  // namespace

bool is_known_type(uint8_t type) {
  return std::any_of(kTypes.begin(), kTypes.end(),
                     [&](const auto& t) { return static_cast<uint8_t>(t.first) == type; });
}

bool is_json_type(FrameType type) {
  switch (type) {
    case FrameType::kStdin:
    case FrameType::kStdinEof:
    case FrameType::kStdout:
    case FrameType::kStderr:
    case FrameType::kFileData:
      return false;
    default:
      return true;
  }
}

uint32_t min_version_for(FrameType type) {
  switch (type) {
    case FrameType::kRestore:
      return kRestoreVersion;
    case FrameType::kNetwork:
      return kNetworkVersion;
    default:
      return 1;
  }
}

void check_frame_version(FrameType type, uint32_t version) {
  uint32_t need = min_version_for(type);
  if (version < need)
    fail(std::string(type_name(type)) + " needs protocol version " + std::to_string(need) +
         ", this session speaks version " + std::to_string(version));
}

std::optional<uint32_t> negotiate_version(const HelloRequest& offer) {
  if (offer.min_version > offer.max_version || offer.min_version > kProtocolVersion ||
      offer.max_version < kMinProtocolVersion)
    return std::nullopt;
  return std::min(offer.max_version, kProtocolVersion);
}

bool valid_hostname(std::string_view name) {
  if (name.empty() || name.size() > kMaxHostname) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.';
  });
}

bool valid_dns_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxDnsName) return false;
  size_t label = 0;
  for (char c : name) {
    if (c == '.') {
      if (label == 0) return false;  // leading dot or an empty label
      label = 0;
      continue;
    }
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!ok || ++label > 63) return false;
  }
  return label > 0;  // no trailing dot
}

namespace {
// inet_pton needs a NUL-terminated copy; the length caps keep it small (INET6_ADDRSTRLEN).
bool parses_as(int family, std::string_view text) {
  if (text.empty() || text.size() >= 46 || text.find('\0') != std::string_view::npos) return false;
  std::string copy(text);
  unsigned char buf[16];
  return ::inet_pton(family, copy.c_str(), buf) == 1;
}
bool valid_ip(std::string_view text) { return parses_as(AF_INET, text) || parses_as(AF_INET6, text); }
}  // namespace

bool valid_ipv4(std::string_view text) { return parses_as(AF_INET, text); }
bool valid_ipv6(std::string_view text) { return parses_as(AF_INET6, text); }

bool valid_mac(std::string_view text) {
  if (text.size() != 17) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    if (i % 3 == 2) {
      if (text[i] != ':') return false;
    } else if (hex_value(text[i]) < 0) {
      return false;
    }
  }
  return true;
}

std::string network_problem(const NetworkRequest& m) {
  if (const auto& i = m.interface) {
    if (!valid_mac(i->mac)) return "NETWORK.interface.mac must be a MAC address like 52:54:00:12:34:56";
    if (i->mtu != 0 && (i->mtu < 68 || i->mtu > 65535)) return "NETWORK.interface.mtu must be 68..65535 (or 0: unchanged)";
    if (!valid_ipv4(i->ipv4)) return "NETWORK.interface.ipv4 must be an IPv4 address";
    if (i->ipv4_prefix < 1 || i->ipv4_prefix > 32) return "NETWORK.interface.ipv4_prefix must be 1..32";
    if (!i->gateway4.empty() && !valid_ipv4(i->gateway4)) return "NETWORK.interface.gateway4 must be an IPv4 address";
    if (i->ipv6.empty()) {
      if (!i->gateway6.empty()) return "NETWORK.interface.gateway6 needs an ipv6 address";
    } else {
      if (!valid_ipv6(i->ipv6)) return "NETWORK.interface.ipv6 must be an IPv6 address";
      if (i->ipv6_prefix < 1 || i->ipv6_prefix > 128) return "NETWORK.interface.ipv6_prefix must be 1..128";
      if (!i->gateway6.empty() && !valid_ipv6(i->gateway6)) return "NETWORK.interface.gateway6 must be an IPv6 address";
      if (i->mtu != 0 && i->mtu < 1280) return "NETWORK.interface.mtu must be at least 1280 with IPv6";
    }
  }
  if (m.nameservers.size() > kMaxNameservers)
    return "NETWORK.nameservers has more than " + std::to_string(kMaxNameservers) + " entries";
  for (const auto& n : m.nameservers)
    if (!valid_ip(n)) return "NETWORK.nameservers entries must be IPv4 or IPv6 addresses";
  if (m.search.size() > kMaxSearchDomains)
    return "NETWORK.search has more than " + std::to_string(kMaxSearchDomains) + " entries";
  for (const auto& d : m.search)
    if (!valid_dns_name(d)) return "NETWORK.search entries must be DNS names";
  if (m.options.size() > kMaxResolvOptions)
    return "NETWORK.options has more than " + std::to_string(kMaxResolvOptions) + " entries";
  for (const auto& o : m.options) {
    // One resolv.conf token: "ndots:2", "edns0", "timeout:1", "use-vc".
    bool ok = !o.empty() && o.size() <= 64 && std::all_of(o.begin(), o.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == ':' || c == '-' ||
             c == '_' || c == '.';
    });
    if (!ok) return "NETWORK.options entries must be resolver options like ndots:1 (letters, digits, ':', '-', '_', '.')";
  }
  if (m.hosts.size() > kMaxExtraHosts) return "NETWORK.hosts has more than " + std::to_string(kMaxExtraHosts) + " entries";
  for (const auto& [name, ip] : m.hosts) {
    if (!valid_hostname(name) && !valid_dns_name(name)) return "NETWORK.hosts names must be host names or DNS names";
    if (!valid_ip(ip)) return "NETWORK.hosts addresses must be IPv4 or IPv6 addresses";
  }
  if (!m.hostname.empty() && !valid_hostname(m.hostname))
    return "NETWORK.hostname must be 1.." + std::to_string(kMaxHostname) + " letters, digits, '-', '_' or '.'";
  return {};
}

std::string_view type_name(FrameType type) {
  for (const auto& [t, name] : kTypes)
    if (t == type) return name;
  return "UNKNOWN";
}

void encode_frame(std::string& out, FrameType type, std::string_view payload) {
  size_t cap = is_json_type(type) ? kMaxJsonPayload : kMaxFramePayload;
  if (payload.size() > cap)
    fail(std::string(type_name(type)) + " payload of " + std::to_string(payload.size()) +
         " bytes exceeds the " + std::to_string(cap) + "-byte cap");
  auto n = static_cast<uint32_t>(payload.size());
  char hdr[kFrameHeaderSize] = {static_cast<char>(n & 0xff), static_cast<char>((n >> 8) & 0xff),
                                static_cast<char>((n >> 16) & 0xff), static_cast<char>((n >> 24) & 0xff),
                                static_cast<char>(type)};
  out.append(hdr, sizeof hdr);
  out.append(payload);
}

std::string encode_frame(FrameType type, std::string_view payload) {
  std::string out;
  encode_frame(out, type, payload);
  return out;
}

void FrameDecoder::feed(std::string_view bytes) {
  // Compact lazily so a long stream of small frames does not grow the buffer without bound.
  if (pos_ > 0 && (pos_ == buf_.size() || pos_ > (64u << 10))) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  buf_.append(bytes.data(), bytes.size());
}

std::optional<Frame> FrameDecoder::next() {
  size_t avail = buf_.size() - pos_;
  if (avail < kFrameHeaderSize) return std::nullopt;
  const char* p = buf_.data() + pos_;
  uint32_t len = read_le32(p);
  auto raw_type = static_cast<uint8_t>(p[4]);
  if (!is_known_type(raw_type)) fail("unknown frame type " + std::to_string(raw_type));
  auto type = static_cast<FrameType>(raw_type);
  size_t cap = is_json_type(type) ? kMaxJsonPayload : kMaxFramePayload;
  if (len > cap)
    fail(std::string(type_name(type)) + " frame of " + std::to_string(len) + " bytes exceeds the " +
         std::to_string(cap) + "-byte cap");
  if (avail < kFrameHeaderSize + len) return std::nullopt;
  Frame f{type, std::string(p + kFrameHeaderSize, len)};
  pos_ += kFrameHeaderSize + len;
  return f;
}

void FrameDecoder::finish() const {
  if (buffered() != 0)
    fail("connection closed in the middle of a frame (" + std::to_string(buffered()) + " bytes pending)");
}

std::string_view error_code_name(ErrorCode code) {
  for (const auto& [c, name] : kErrorCodes)
    if (c == code) return name;
  return "internal";
}

std::optional<ErrorCode> error_code_from_name(std::string_view name) {
  for (const auto& [c, n] : kErrorCodes)
    if (n == name) return c;
  return std::nullopt;
}

int exit_code_for(ErrorCode code) {
  switch (code) {
    case ErrorCode::kCommandNotFound:
      return 127;
    case ErrorCode::kCommandNotExecutable:
    case ErrorCode::kExecFailed:
      return 126;
    default:
      return 125;
  }
}

// ---- encoders ------------------------------------------------------------------------------

std::string encode(const HelloRequest& m) {
  return dump({{"protocol", kProtocolName}, {"min_version", m.min_version}, {"max_version", m.max_version}});
}

std::string encode(const HelloReply& m) {
  return dump_lossy({{"protocol", kProtocolName},
               {"version", m.version},
               {"agent", m.agent},
               {"init", m.init},
               {"hostname", m.hostname}});
}

std::string encode(const ExecRequest& m) {
  json j = {{"argv", m.argv}, {"env", m.env}};
  if (!m.cwd.empty()) j["cwd"] = m.cwd;
  if (m.create_cwd) j["create_cwd"] = true;
  if (!m.user.empty()) j["user"] = m.user;
  if (m.tty) j["tty"] = {{"rows", m.tty->rows}, {"cols", m.tty->cols}};
  if (m.timeout.count() > 0)  // the wire field is 32-bit: ~49 days is "no practical limit"
    j["timeout_ms"] = std::min<int64_t>(m.timeout.count(), std::numeric_limits<uint32_t>::max());
  if (m.attach_stdin) j["stdin"] = true;
  if (m.main) j["main"] = true;
  if (m.detach) j["detach"] = true;
  if (!m.rlimits.empty()) {
    json rl = json::array();
    for (const auto& r : m.rlimits) {
      json e = {{"resource", r.resource}};
      e["soft"] = r.soft ? json(*r.soft) : json(nullptr);
      e["hard"] = r.hard ? json(*r.hard) : json(nullptr);
      rl.push_back(std::move(e));
    }
    j["rlimits"] = std::move(rl);
  }
  return dump(j);
}

std::string encode(const Started& m) { return dump({{"pid", m.pid}}); }

std::string encode(const ExitStatus& m) {
  return dump({{"code", m.code}, {"signal", m.signal}, {"timed_out", m.timed_out}});
}

std::string encode(const SignalRequest& m) {
  json j = {{"signal", m.signal}};
  if (m.main) j["target"] = "main";
  return dump(j);
}

std::string encode(const TtySize& m) { return dump({{"rows", m.rows}, {"cols", m.cols}}); }

std::string encode(const WriteFileRequest& m) {
  json j = {{"path", m.path}, {"mode", m.mode}, {"size", m.size}};
  if (m.make_parents) j["make_parents"] = true;
  if (m.uid) j["uid"] = *m.uid;
  if (m.gid) j["gid"] = *m.gid;
  return dump(j);
}

std::string encode(const ReadFileRequest& m) { return dump({{"path", m.path}, {"max_size", m.max_size}}); }

std::string encode(const FileInfo& m) { return dump({{"size", m.size}, {"mode", m.mode}}); }

std::string encode(const PowerOffRequest& m) { return dump({{"status", m.status}}); }

std::string encode(const RestoreRequest& m) {
  if (std::string why = restore_problem(m); !why.empty()) throw Error("agent protocol: " + why);
  return dump({{"realtime_ns", m.realtime_ns}, {"entropy", to_hex(m.entropy)}, {"hostname", m.hostname}});
}

std::string encode(const RestoreReply& m) {
  return dump({{"clock_set", m.clock_set}, {"entropy_credited", m.entropy_credited}, {"hostname_set", m.hostname_set}});
}

std::string encode(const NetworkRequest& m) {
  if (std::string why = network_problem(m); !why.empty()) throw Error("agent protocol: " + why);
  json j = json::object();
  if (const auto& i = m.interface) {
    json ij = {{"mac", i->mac}, {"mtu", i->mtu}, {"ipv4", i->ipv4}, {"ipv4_prefix", i->ipv4_prefix}};
    if (!i->gateway4.empty()) ij["gateway4"] = i->gateway4;
    if (!i->ipv6.empty()) {
      ij["ipv6"] = i->ipv6;
      ij["ipv6_prefix"] = i->ipv6_prefix;
      if (!i->gateway6.empty()) ij["gateway6"] = i->gateway6;
    }
    j["interface"] = std::move(ij);
  }
  j["nameservers"] = m.nameservers;
  j["search"] = m.search;
  if (!m.options.empty()) j["options"] = m.options;
  json hosts = json::array();
  for (const auto& [name, ip] : m.hosts) hosts.push_back({{"name", name}, {"ip", ip}});
  j["hosts"] = std::move(hosts);
  if (!m.hostname.empty()) j["hostname"] = m.hostname;
  return dump(j);
}

std::string encode(const ErrorInfo& m) {
  return dump_lossy({{"code", error_code_name(m.code)}, {"message", m.message}});
}

std::string encode_ok() { return "{}"; }

// ---- decoders ------------------------------------------------------------------------------

template <>
HelloRequest decode<HelloRequest>(std::string_view payload) {
  json j = parse_object(payload, "HELLO");
  if (get_string(j, "protocol", "HELLO", true) != kProtocolName) fail("HELLO: not the supermachine agent protocol");
  HelloRequest m;
  m.min_version = get_int<uint32_t>(j, "min_version", "HELLO");
  m.max_version = get_int<uint32_t>(j, "max_version", "HELLO");
  if (m.min_version > m.max_version) fail("HELLO: min_version is above max_version");
  return m;
}

template <>
HelloReply decode<HelloReply>(std::string_view payload) {
  json j = parse_object(payload, "HELLO");
  if (get_string(j, "protocol", "HELLO", true) != kProtocolName) fail("HELLO: not the supermachine agent protocol");
  HelloReply m;
  m.version = get_int<uint32_t>(j, "version", "HELLO");
  m.agent = get_string(j, "agent", "HELLO");
  m.init = get_bool(j, "init", "HELLO");
  m.hostname = get_string(j, "hostname", "HELLO");
  return m;
}

template <>
TtySize decode<TtySize>(std::string_view payload) {
  json j = parse_object(payload, "RESIZE");
  TtySize t;
  t.rows = get_int<uint16_t>(j, "rows", "RESIZE");
  t.cols = get_int<uint16_t>(j, "cols", "RESIZE");
  return t;
}

template <>
ExecRequest decode<ExecRequest>(std::string_view payload) {
  constexpr std::string_view w = "EXEC";
  json j = parse_object(payload, w);
  ExecRequest m;
  m.argv = get_strings(j, "argv", w);
  if (m.argv.empty() || m.argv[0].empty()) fail("EXEC.argv must name a command");
  m.env = get_strings(j, "env", w);
  for (const auto& e : m.env) {
    auto eq = e.find('=');
    if (eq == std::string::npos || eq == 0) fail("EXEC.env entries must be KEY=VALUE");
  }
  m.cwd = get_string(j, "cwd", w);
  if (!m.cwd.empty()) check_abs_path(m.cwd, "EXEC.cwd");
  m.create_cwd = get_bool(j, "create_cwd", w);
  m.user = get_string(j, "user", w);
  if (const json* t = field(j, "tty")) {
    if (!t->is_object()) fail("EXEC.tty must be an object");
    m.tty = TtySize{get_int<uint16_t>(*t, "rows", "EXEC.tty", uint16_t{24}),
                    get_int<uint16_t>(*t, "cols", "EXEC.tty", uint16_t{80})};
  }
  m.timeout = std::chrono::milliseconds(get_int<uint32_t>(j, "timeout_ms", w, 0u));
  m.attach_stdin = get_bool(j, "stdin", w);
  m.main = get_bool(j, "main", w);
  m.detach = get_bool(j, "detach", w);
  if (m.detach && !m.main) fail("EXEC.detach is only valid with main");
  if (m.detach && m.attach_stdin) fail("EXEC.detach and EXEC.stdin exclude each other");
  if (const json* rl = field(j, "rlimits")) {
    if (!rl->is_array()) fail("EXEC.rlimits must be an array");
    if (rl->size() > 32) fail("EXEC.rlimits has too many entries");
    for (const auto& e : *rl) {
      if (!e.is_object()) fail("EXEC.rlimits entries must be objects");
      Rlimit r;
      r.resource = get_string(e, "resource", "EXEC.rlimits", true);
      if (field(e, "soft")) r.soft = get_int<uint64_t>(e, "soft", "EXEC.rlimits");
      if (field(e, "hard")) r.hard = get_int<uint64_t>(e, "hard", "EXEC.rlimits");
      m.rlimits.push_back(std::move(r));
    }
  }
  return m;
}

template <>
Started decode<Started>(std::string_view payload) {
  json j = parse_object(payload, "STARTED");
  Started m;
  m.pid = get_int<int64_t>(j, "pid", "STARTED");
  return m;
}

template <>
ExitStatus decode<ExitStatus>(std::string_view payload) {
  json j = parse_object(payload, "EXIT");
  ExitStatus m;
  m.code = get_int<int>(j, "code", "EXIT");
  m.signal = get_int<int>(j, "signal", "EXIT", 0);
  m.timed_out = get_bool(j, "timed_out", "EXIT");
  if (m.code < 0 || m.code > 255) fail("EXIT.code must be 0..255");
  if (m.signal < 0 || m.signal > 64) fail("EXIT.signal must be 0..64");
  return m;
}

template <>
SignalRequest decode<SignalRequest>(std::string_view payload) {
  json j = parse_object(payload, "SIGNAL");
  SignalRequest m;
  m.signal = get_int<int>(j, "signal", "SIGNAL");
  if (m.signal < 1 || m.signal > 64) fail("SIGNAL.signal must be 1..64");
  std::string target = get_string(j, "target", "SIGNAL");
  if (target == "main") m.main = true;
  else if (!target.empty()) fail("SIGNAL.target must be \"main\" when present");
  return m;
}

template <>
WriteFileRequest decode<WriteFileRequest>(std::string_view payload) {
  json j = parse_object(payload, "WRITE_FILE");
  WriteFileRequest m;
  m.path = get_string(j, "path", "WRITE_FILE", true);
  check_abs_path(m.path, "WRITE_FILE.path");
  m.mode = get_int<uint32_t>(j, "mode", "WRITE_FILE", 0644u);
  if (m.mode > 07777) fail("WRITE_FILE.mode must be a permission mode (0..07777)");
  m.size = get_int<uint64_t>(j, "size", "WRITE_FILE");
  m.make_parents = get_bool(j, "make_parents", "WRITE_FILE");
  if (field(j, "uid")) m.uid = get_int<uint32_t>(j, "uid", "WRITE_FILE");
  if (field(j, "gid")) m.gid = get_int<uint32_t>(j, "gid", "WRITE_FILE");
  return m;
}

template <>
ReadFileRequest decode<ReadFileRequest>(std::string_view payload) {
  json j = parse_object(payload, "READ_FILE");
  ReadFileRequest m;
  m.path = get_string(j, "path", "READ_FILE", true);
  check_abs_path(m.path, "READ_FILE.path");
  m.max_size = get_int<uint64_t>(j, "max_size", "READ_FILE", m.max_size);
  return m;
}

template <>
FileInfo decode<FileInfo>(std::string_view payload) {
  json j = parse_object(payload, "FILE_INFO");
  FileInfo m;
  m.size = get_int<uint64_t>(j, "size", "FILE_INFO");
  m.mode = get_int<uint32_t>(j, "mode", "FILE_INFO", 0u);
  return m;
}

template <>
PowerOffRequest decode<PowerOffRequest>(std::string_view payload) {
  json j = parse_object(payload, "POWER_OFF");
  PowerOffRequest m;
  m.status = get_int<int>(j, "status", "POWER_OFF", 0);
  if (m.status < 0 || m.status > 255) fail("POWER_OFF.status must be 0..255");
  return m;
}

template <>
RestoreRequest decode<RestoreRequest>(std::string_view payload) {
  constexpr std::string_view w = "RESTORE";
  json j = parse_object(payload, w);
  RestoreRequest m;
  m.realtime_ns = get_int<int64_t>(j, "realtime_ns", w);
  // Length first, so a hostile peer cannot make the agent decode more than the cap.
  std::string hex = get_string(j, "entropy", w, true);
  if (hex.size() % 2 != 0) fail("RESTORE.entropy must be hex digits in pairs");
  if (hex.size() / 2 < kMinRestoreEntropy || hex.size() / 2 > kMaxRestoreEntropy)
    fail("RESTORE.entropy must be " + std::to_string(kMinRestoreEntropy) + ".." +
         std::to_string(kMaxRestoreEntropy) + " bytes, not " + std::to_string(hex.size() / 2));
  m.entropy.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    int hi = hex_value(hex[i]), lo = hex_value(hex[i + 1]);
    if (hi < 0 || lo < 0) fail("RESTORE.entropy must be hex digits");
    m.entropy.push_back(static_cast<char>((hi << 4) | lo));
  }
  m.hostname = get_string(j, "hostname", w, true);
  if (std::string why = restore_problem(m); !why.empty()) fail(why);
  return m;
}

template <>
RestoreReply decode<RestoreReply>(std::string_view payload) {
  json j = parse_object(payload, "OK");
  RestoreReply m;
  m.clock_set = get_bool(j, "clock_set", "OK");
  m.entropy_credited = get_bool(j, "entropy_credited", "OK");
  m.hostname_set = get_bool(j, "hostname_set", "OK");
  return m;
}

template <>
NetworkRequest decode<NetworkRequest>(std::string_view payload) {
  constexpr std::string_view w = "NETWORK";
  json j = parse_object(payload, w);
  NetworkRequest m;
  // Counts first, so a hostile peer cannot make the agent copy more than the caps.
  auto check_count = [&](const char* key, size_t cap) {
    const json* f = field(j, key);
    if (f && f->is_array() && f->size() > cap)
      fail(where(w, key) + " has more than " + std::to_string(cap) + " entries");
  };
  check_count("nameservers", kMaxNameservers);
  check_count("search", kMaxSearchDomains);
  check_count("options", kMaxResolvOptions);
  check_count("hosts", kMaxExtraHosts);
  if (const json* i = field(j, "interface")) {
    if (!i->is_object()) fail("NETWORK.interface must be an object");
    constexpr std::string_view wi = "NETWORK.interface";
    NetworkRequest::Interface in;
    in.mac = get_string(*i, "mac", wi, true);
    in.mtu = get_int<unsigned>(*i, "mtu", wi, 0u);
    in.ipv4 = get_string(*i, "ipv4", wi, true);
    in.ipv4_prefix = get_int<unsigned>(*i, "ipv4_prefix", wi);
    in.gateway4 = get_string(*i, "gateway4", wi);
    in.ipv6 = get_string(*i, "ipv6", wi);
    in.ipv6_prefix = get_int<unsigned>(*i, "ipv6_prefix", wi, in.ipv6.empty() ? 64u : std::optional<unsigned>{});
    in.gateway6 = get_string(*i, "gateway6", wi);
    m.interface = std::move(in);
  }
  m.nameservers = get_strings(j, "nameservers", w);
  m.search = get_strings(j, "search", w);
  m.options = get_strings(j, "options", w);
  if (const json* h = field(j, "hosts")) {
    if (!h->is_array()) fail("NETWORK.hosts must be an array of {\"name\",\"ip\"} objects");
    for (const auto& e : *h) {
      if (!e.is_object()) fail("NETWORK.hosts entries must be {\"name\",\"ip\"} objects");
      std::string name = get_string(e, "name", "NETWORK.hosts", true);
      std::string ip = get_string(e, "ip", "NETWORK.hosts", true);
      m.hosts.emplace_back(std::move(name), std::move(ip));
    }
  }
  m.hostname = get_string(j, "hostname", w);
  if (std::string why = network_problem(m); !why.empty()) fail(why);
  return m;
}

template <>
ErrorInfo decode<ErrorInfo>(std::string_view payload) {
  json j = parse_object(payload, "ERROR");
  ErrorInfo m;
  std::string code = get_string(j, "code", "ERROR", true);
  // An unknown code from a newer peer is still an error; keep its name in the message.
  auto c = error_code_from_name(code);
  m.code = c.value_or(ErrorCode::kInternal);
  m.message = get_string(j, "message", "ERROR");
  if (m.message.size() > 4096) m.message.resize(4096);
  if (!c) m.message = code + ": " + m.message;
  return m;
}

void decode_ok(std::string_view payload) { (void)parse_object(payload, "OK"); }

}  // namespace sm::agent
