// DNS message parsing and the NXDOMAIN builder (see dns.h).
#include "net/dns.h"

#include <algorithm>

#include "common/error.h"

namespace sm::net::dns {
namespace {

constexpr size_t kHeaderLen = 12;
constexpr size_t kMaxNameWire = 255;  // RFC 1035 2.3.4
constexpr size_t kMaxLabel = 63;

uint8_t rd8(std::span<const std::byte> s, size_t off) { return static_cast<uint8_t>(s[off]); }
uint16_t rd16(std::span<const std::byte> s, size_t off) {
  return static_cast<uint16_t>(rd8(s, off) << 8 | rd8(s, off + 1));
}
uint32_t rd32(std::span<const std::byte> s, size_t off) {
  return static_cast<uint32_t>(rd16(s, off)) << 16 | rd16(s, off + 2);
}

struct Header {
  uint16_t id, flags, qdcount, ancount;
};
std::optional<Header> read_header(std::span<const std::byte> msg) {
  if (msg.size() < kHeaderLen) return std::nullopt;
  return Header{rd16(msg, 0), rd16(msg, 2), rd16(msg, 4), rd16(msg, 6)};
}

struct Question {
  std::string name;
  uint16_t qtype, qclass;
};
std::optional<Question> read_question(std::span<const std::byte> msg, size_t& off) {
  auto name = read_name(msg, off);
  if (!name || msg.size() - off < 4) return std::nullopt;
  Question q{std::move(*name), rd16(msg, off), rd16(msg, off + 2)};
  off += 4;
  return q;
}

}  // namespace

std::optional<std::string> read_name(std::span<const std::byte> msg, size_t& off) {
  std::string name;
  size_t pos = off;
  size_t limit = off;  // a pointer must lead strictly before every byte read so far: no loops
  size_t wire = 1;     // the terminating zero
  bool jumped = false;
  for (;;) {
    if (pos >= msg.size()) return std::nullopt;
    const uint8_t len = rd8(msg, pos);
    if ((len & 0xc0) == 0xc0) {
      if (msg.size() - pos < 2) return std::nullopt;
      const size_t target = static_cast<size_t>(len & 0x3f) << 8 | rd8(msg, pos + 1);
      if (target >= limit) return std::nullopt;
      if (!jumped) off = pos + 2;
      jumped = true;
      limit = target;
      pos = target;
      continue;
    }
    if ((len & 0xc0) != 0) return std::nullopt;  // 0x40 / 0x80: extended label types, obsolete
    if (len == 0) {
      if (!jumped) off = pos + 1;
      return name;
    }
    if (len > kMaxLabel) return std::nullopt;  // unreachable with the mask above; kept explicit
    wire += len + 1;
    if (wire > kMaxNameWire) return std::nullopt;
    if (msg.size() - pos - 1 < len) return std::nullopt;
    if (!name.empty()) name.push_back('.');
    for (size_t i = 0; i < len; ++i) {
      char c = static_cast<char>(rd8(msg, pos + 1 + i));
      if (c <= ' ' || c == '.' || static_cast<unsigned char>(c) >= 0x7f) return std::nullopt;
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      name.push_back(c);
    }
    pos += 1 + len;
  }
}

std::optional<Query> parse_query(std::span<const std::byte> msg) {
  const auto h = read_header(msg);
  if (!h) return std::nullopt;
  if (h->flags & 0x8000) return std::nullopt;             // QR: a response
  if (((h->flags >> 11) & 0xf) != 0) return std::nullopt;  // opcode other than QUERY
  if (h->qdcount != 1) return std::nullopt;
  size_t off = kHeaderLen;
  auto q = read_question(msg, off);
  if (!q) return std::nullopt;
  return Query{h->id, h->flags, std::move(q->name), q->qtype, q->qclass, off};
}

std::optional<Response> parse_response(std::span<const std::byte> msg) {
  const auto h = read_header(msg);
  if (!h) return std::nullopt;
  if (!(h->flags & 0x8000)) return std::nullopt;
  if (h->qdcount != 1) return std::nullopt;
  size_t off = kHeaderLen;
  auto q = read_question(msg, off);
  if (!q) return std::nullopt;
  Response r;
  r.id = h->id;
  r.rcode = static_cast<uint8_t>(h->flags & 0xf);
  r.name = std::move(q->name);
  r.qtype = q->qtype;

  struct Record {
    std::string owner;
    uint16_t type;
    std::string cname;
    Answer answer;
  };
  std::vector<Record> records;
  const size_t n = std::min<size_t>(h->ancount, kMaxRecords);
  for (size_t i = 0; i < n; ++i) {
    auto owner = read_name(msg, off);
    if (!owner || msg.size() - off < 10) return std::nullopt;
    const uint16_t type = rd16(msg, off), klass = rd16(msg, off + 2);
    uint32_t ttl = rd32(msg, off + 4);
    if (ttl & 0x80000000u) ttl = 0;
    const size_t rdlen = rd16(msg, off + 8);
    off += 10;
    if (msg.size() - off < rdlen) return std::nullopt;
    const size_t rdata = off;
    off += rdlen;
    if (klass != kClassIn) continue;
    Record rec{std::move(*owner), type, {}, {}};
    if (type == kTypeA || type == kTypeAaaa) {
      const size_t want = type == kTypeA ? 4 : 16;
      if (rdlen != want) return std::nullopt;
      rec.answer.addr.v6 = type == kTypeAaaa;
      for (size_t k = 0; k < want; ++k) rec.answer.addr.b[k] = rd8(msg, rdata + k);
      rec.answer.ttl = ttl;
    } else if (type == kTypeCname) {
      size_t p = rdata;
      auto target = read_name(msg, p);
      if (!target || p != rdata + rdlen) return std::nullopt;
      rec.cname = std::move(*target);
    } else {
      continue;
    }
    records.push_back(std::move(rec));
  }

  // The names the question reaches: itself, then CNAME targets of names already reached, in as
  // many passes as the section has CNAMEs (records may come in any order).
  std::vector<std::string> reached{r.name};
  for (bool grew = true; grew;) {
    grew = false;
    for (const auto& rec : records) {
      if (rec.type != kTypeCname) continue;
      if (std::find(reached.begin(), reached.end(), rec.owner) == reached.end()) continue;
      if (std::find(reached.begin(), reached.end(), rec.cname) != reached.end()) continue;
      reached.push_back(rec.cname);
      grew = true;
    }
  }
  for (const auto& rec : records)
    if (rec.type != kTypeCname &&
        std::find(reached.begin(), reached.end(), rec.owner) != reached.end())
      r.addresses.push_back(rec.answer);
  return r;
}

std::vector<std::byte> build_nxdomain(std::span<const std::byte> query_msg, const Query& q) {
  std::vector<std::byte> m;
  m.reserve(q.question_end);
  auto put16 = [&](uint16_t x) {
    m.push_back(static_cast<std::byte>(x >> 8));
    m.push_back(static_cast<std::byte>(x));
  };
  put16(q.id);
  // QR, the query's opcode and RD, RA, RCODE 3.
  put16(static_cast<uint16_t>(0x8000 | (q.flags & 0x7900) | 0x0080 | kRcodeNxdomain));
  put16(1);
  put16(0);
  put16(0);
  put16(0);
  const auto question = query_msg.subspan(kHeaderLen, q.question_end - kHeaderLen);
  m.insert(m.end(), question.begin(), question.end());
  return m;
}

std::vector<std::byte> encode_name(std::string_view name) {
  std::vector<std::byte> w;
  while (!name.empty()) {
    const size_t dot = name.find('.');
    const std::string_view label = name.substr(0, dot);
    if (label.empty() || label.size() > kMaxLabel)
      throw Error(fmt::format("DNS name {}: a label is empty or longer than 63 bytes", name));
    w.push_back(static_cast<std::byte>(label.size()));
    for (char c : label) w.push_back(static_cast<std::byte>(c));
    name = dot == std::string_view::npos ? std::string_view{} : name.substr(dot + 1);
  }
  w.push_back(std::byte{0});
  if (w.size() > kMaxNameWire) throw Error("DNS name longer than 255 bytes");
  return w;
}

std::vector<std::byte> build_query(uint16_t id, std::string_view name, uint16_t qtype) {
  std::vector<std::byte> m;
  for (uint16_t x : {id, uint16_t{0x0100}, uint16_t{1}, uint16_t{0}, uint16_t{0}, uint16_t{0}}) {
    m.push_back(static_cast<std::byte>(x >> 8));
    m.push_back(static_cast<std::byte>(x));
  }
  const auto n = encode_name(name);
  m.insert(m.end(), n.begin(), n.end());
  for (uint16_t x : {qtype, kClassIn}) {
    m.push_back(static_cast<std::byte>(x >> 8));
    m.push_back(static_cast<std::byte>(x));
  }
  return m;
}

}  // namespace sm::net::dns
