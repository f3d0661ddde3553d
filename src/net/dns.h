// DNS messages (RFC 1035) as far as the egress filter needs them: the question of a query (to
// judge the name), the A/AAAA answers of a response with their TTLs (to learn which addresses a
// name resolved to, following CNAME chains), and an NXDOMAIN response to a query (to refuse a
// name).
//
// Both directions are untrusted (queries come from the guest, responses from whatever resolver
// the host uses). Every parser checks lengths before reading, follows compression pointers only
// backwards (so a pointer loop cannot exist), caps names at 255 wire bytes and labels at 63,
// never allocates in proportion to a count field, and returns nullopt for anything malformed.
//
// Names are returned in text form: labels joined by '.', ASCII lower-cased, no trailing dot; the
// root is "". A label holding '.', a control character, a space or a byte >= 0x7f makes the name
// malformed: such a name cannot be matched against domain rules honestly.
//
// Threads: pure functions, no state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "net/packet.h"

namespace sm::net::dns {

inline constexpr uint16_t kTypeA = 1;
inline constexpr uint16_t kTypeCname = 5;
inline constexpr uint16_t kTypeAaaa = 28;
inline constexpr uint16_t kClassIn = 1;
inline constexpr uint8_t kRcodeNxdomain = 3;

struct Query {
  uint16_t id = 0;
  uint16_t flags = 0;
  std::string name;
  uint16_t qtype = 0;
  uint16_t qclass = 0;
  size_t question_end = 0;  // the question is bytes [12, question_end) of the message
};

// A standard query (QR 0, opcode QUERY) with exactly one question.
[[nodiscard]] std::optional<Query> parse_query(std::span<const std::byte> msg);

struct Answer {
  IpAddr addr;
  uint32_t ttl = 0;  // as sent (RFC 2181 8: a TTL with the top bit set is read as 0)
};
struct Response {
  uint16_t id = 0;
  uint8_t rcode = 0;
  std::string name;   // the question
  uint16_t qtype = 0;
  // The A and AAAA records (class IN) of the answer section owned by the question's name or by a
  // name it reaches through CNAME records of the same section.
  std::vector<Answer> addresses;
};

// A response (QR 1) with exactly one question. At most kMaxRecords answer records are read.
inline constexpr size_t kMaxRecords = 256;
[[nodiscard]] std::optional<Response> parse_response(std::span<const std::byte> msg);

// The NXDOMAIN response to a parsed query: same id, opcode and RD, QR and RA set, RCODE 3, the
// question copied byte for byte, no other records.
[[nodiscard]] std::vector<std::byte> build_nxdomain(std::span<const std::byte> query_msg,
                                                    const Query& q);

// Reads the (possibly compressed) name at msg[off]; on success off is the first byte after the
// name where it appears (not where a pointer led). nullopt when malformed.
[[nodiscard]] std::optional<std::string> read_name(std::span<const std::byte> msg, size_t& off);
// A standard query with RD set and one question (for tests and tools).
[[nodiscard]] std::vector<std::byte> build_query(uint16_t id, std::string_view name, uint16_t qtype);
// A name in wire form, uncompressed ("a.b" -> 1 'a' 1 'b' 0). Throws sm::Error when a label is
// empty or over 63 bytes or the name over 255 bytes. For building messages (tests).
[[nodiscard]] std::vector<std::byte> encode_name(std::string_view name);

}  // namespace sm::net::dns
