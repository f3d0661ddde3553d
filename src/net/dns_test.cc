// dns.h: queries, responses with CNAME chains and compression, NXDOMAIN, and hostile messages
// (pointer loops, pointers past the end, long labels and names, lying counts).
#include "net/dns.h"

#include <gtest/gtest.h>

#include <random>

#include "supermachine/error.h"

namespace sm::net::dns {
namespace {

using Msg = std::vector<std::byte>;

void put16(Msg& m, uint16_t x) {
  m.push_back(static_cast<std::byte>(x >> 8));
  m.push_back(static_cast<std::byte>(x));
}
void put32(Msg& m, uint32_t x) {
  put16(m, static_cast<uint16_t>(x >> 16));
  put16(m, static_cast<uint16_t>(x));
}
void append(Msg& m, const Msg& x) { m.insert(m.end(), x.begin(), x.end()); }
void ptr(Msg& m, uint16_t off) { put16(m, static_cast<uint16_t>(0xc000 | off)); }

Msg header(uint16_t id, uint16_t flags, uint16_t qd, uint16_t an) {
  Msg m;
  put16(m, id);
  put16(m, flags);
  put16(m, qd);
  put16(m, an);
  put16(m, 0);
  put16(m, 0);
  return m;
}

// Record: owner (already encoded), type, ttl, rdata.
void record(Msg& m, const Msg& owner, uint16_t type, uint32_t ttl, const Msg& rdata) {
  append(m, owner);
  put16(m, type);
  put16(m, kClassIn);
  put32(m, ttl);
  put16(m, static_cast<uint16_t>(rdata.size()));
  append(m, rdata);
}
Msg ipv4(int a, int b, int c, int d) {
  return {std::byte(a), std::byte(b), std::byte(c), std::byte(d)};
}

TEST(Dns, ParseQuery) {
  const auto q = build_query(0xbeef, "Files.PythonHosted.org", kTypeAaaa);
  const auto p = parse_query(q);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->id, 0xbeef);
  EXPECT_EQ(p->name, "files.pythonhosted.org");
  EXPECT_EQ(p->qtype, kTypeAaaa);
  EXPECT_EQ(p->qclass, kClassIn);
  EXPECT_EQ(p->question_end, q.size());
  EXPECT_FALSE(parse_response(q));  // QR clear
}

TEST(Dns, NxdomainCopiesIdAndQuestion) {
  const auto q = build_query(0x1234, "Evil.Example", kTypeA);
  const auto p = parse_query(q);
  const auto r = build_nxdomain(q, *p);
  ASSERT_EQ(r.size(), q.size());
  EXPECT_EQ(r[0], std::byte{0x12});
  EXPECT_EQ(r[1], std::byte{0x34});
  EXPECT_EQ(r[2], std::byte{0x81});  // QR, RD copied
  EXPECT_EQ(r[3], std::byte{0x83});  // RA, RCODE 3
  EXPECT_TRUE(std::equal(r.begin() + 4, r.end(), q.begin() + 4));  // counts 1/0/0/0, question
  const auto resp = parse_response(r);
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->rcode, kRcodeNxdomain);
  EXPECT_EQ(resp->name, "evil.example");
  EXPECT_TRUE(resp->addresses.empty());
}

TEST(Dns, ResponseWithCnameChainAndCompression) {
  // pypi.org CNAME a.fastly.net; a.fastly.net CNAME b.fastly.net; b.fastly.net A x2, AAAA;
  // an unrelated A record for other.net must not count. Records out of order.
  Msg m = header(7, 0x8180, 1, 6);
  const uint16_t qname_off = static_cast<uint16_t>(m.size());
  append(m, encode_name("pypi.org"));
  put16(m, kTypeA);
  put16(m, kClassIn);
  Msg q;  // pointer to the question name
  ptr(q, qname_off);
  // "b" + pointer to "fastly.net" inside the first CNAME's rdata, computed below.
  Msg a_name = encode_name("a.fastly.net");
  const uint16_t a_off = static_cast<uint16_t>(m.size() + q.size() + 10);  // rdata of record 1
  record(m, q, kTypeCname, 300, a_name);
  Msg b_name{std::byte{1}, std::byte{'b'}};
  ptr(b_name, static_cast<uint16_t>(a_off + 2));  // "fastly.net"
  Msg a_ptr;
  ptr(a_ptr, a_off);
  record(m, encode_name("b.fastly.net"), kTypeA, 60, ipv4(151, 101, 0, 223));
  record(m, a_ptr, kTypeCname, 300, b_name);
  record(m, encode_name("other.net"), kTypeA, 60, ipv4(6, 6, 6, 6));
  record(m, encode_name("B.FASTLY.NET"), kTypeA, 0x80000001, ipv4(151, 101, 64, 223));
  Msg v6(16, std::byte{0});
  v6[0] = std::byte{0x2a};
  v6[15] = std::byte{1};
  record(m, encode_name("b.fastly.net"), kTypeAaaa, 30, v6);

  const auto r = parse_response(m);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->name, "pypi.org");
  EXPECT_EQ(r->rcode, 0);
  ASSERT_EQ(r->addresses.size(), 3u);
  EXPECT_EQ(r->addresses[0].addr.str(), "151.101.0.223");
  EXPECT_EQ(r->addresses[0].ttl, 60u);
  EXPECT_EQ(r->addresses[1].addr.str(), "151.101.64.223");
  EXPECT_EQ(r->addresses[1].ttl, 0u);  // top bit set reads as 0 (RFC 2181 8)
  EXPECT_EQ(r->addresses[2].addr.str(), "2a00::1");
}

TEST(Dns, CompressionLoopsAndPointersPastTheEnd) {
  // The question name is a pointer to itself.
  Msg m = header(1, 0, 1, 0);
  ptr(m, 12);
  put16(m, 1);
  put16(m, 1);
  EXPECT_FALSE(parse_query(m));
  // A label, then a pointer back to that label: a loop through "strictly before the pointer".
  m = header(1, 0, 1, 0);
  m.push_back(std::byte{1});
  m.push_back(std::byte{'a'});
  ptr(m, 12);
  put16(m, 1);
  put16(m, 1);
  EXPECT_FALSE(parse_query(m));
  // A forward pointer, and one past the end.
  m = header(1, 0, 1, 0);
  ptr(m, 20);
  put16(m, 1);
  put16(m, 1);
  m.push_back(std::byte{0});
  EXPECT_FALSE(parse_query(m));
  m = header(1, 0, 1, 0);
  ptr(m, 0x3fff);
  EXPECT_FALSE(parse_query(m));
  // A pointer cut in half at the end.
  m = header(1, 0, 1, 0);
  m.push_back(std::byte{0xc0});
  EXPECT_FALSE(parse_query(m));
}

TEST(Dns, LabelAndNameLimits) {
  Msg m = header(1, 0, 1, 0);
  m.push_back(std::byte{64});  // 0x40: an extended label type, not a 64-byte label
  m.insert(m.end(), 64, std::byte{'a'});
  m.push_back(std::byte{0});
  put16(m, 1);
  put16(m, 1);
  EXPECT_FALSE(parse_query(m));
  EXPECT_THROW((void)encode_name(std::string(64, 'a')), Error);

  // 5 labels of 63: 320 wire bytes > 255.
  m = header(1, 0, 1, 0);
  for (int i = 0; i < 5; ++i) {
    m.push_back(std::byte{63});
    m.insert(m.end(), 63, std::byte{'a'});
  }
  m.push_back(std::byte{0});
  put16(m, 1);
  put16(m, 1);
  EXPECT_FALSE(parse_query(m));
  // 255 exactly is fine: 3 x 63 + 1 x 61 labels = 4*64 - 2 + 1 = 255.
  std::string name = std::string(63, 'a') + "." + std::string(63, 'b') + "." +
                     std::string(63, 'c') + "." + std::string(61, 'd');
  EXPECT_EQ(encode_name(name).size(), 255u);
  EXPECT_TRUE(parse_query(build_query(1, name, 1)));

  // A '.' or a control byte inside a label.
  auto q = build_query(1, "ab.org", 1);
  q[12 + 2] = std::byte{'.'};
  EXPECT_FALSE(parse_query(q));
  q[12 + 2] = std::byte{0};
  EXPECT_FALSE(parse_query(q));
}

TEST(Dns, LyingCountsAndOpcodes) {
  auto q = build_query(1, "a.org", 1);
  q[4] = std::byte{0xff};  // qdcount 65281
  q[5] = std::byte{0x01};
  EXPECT_FALSE(parse_query(q));
  q = build_query(1, "a.org", 1);
  q[5] = std::byte{0};  // qdcount 0
  EXPECT_FALSE(parse_query(q));
  q = build_query(1, "a.org", 1);
  q[2] = std::byte{0x28};  // opcode UPDATE
  EXPECT_FALSE(parse_query(q));

  Msg r = header(1, 0x8180, 1, 0xffff);  // ancount 65535, one record present
  append(r, encode_name("a.org"));
  put16(r, 1);
  put16(r, 1);
  record(r, encode_name("a.org"), kTypeA, 60, ipv4(1, 2, 3, 4));
  EXPECT_FALSE(parse_response(r));
  Msg r2 = header(1, 0x8180, 1, 1);
  append(r2, encode_name("a.org"));
  put16(r2, 1);
  put16(r2, 1);
  record(r2, encode_name("a.org"), kTypeA, 60, ipv4(1, 2, 3, 4));
  EXPECT_TRUE(parse_response(r2));
  r2[r2.size() - 5] = std::byte{5};  // rdlength 5 for an A record
  EXPECT_FALSE(parse_response(r2));
}

TEST(Dns, EveryTruncationAndRandomMutation) {
  Msg r = header(9, 0x8180, 1, 2);
  append(r, encode_name("x.example.com"));
  put16(r, 1);
  put16(r, 1);
  Msg p;
  ptr(p, 12);
  record(r, p, kTypeCname, 60, encode_name("y.example.com"));
  record(r, encode_name("y.example.com"), kTypeA, 60, ipv4(1, 2, 3, 4));
  ASSERT_EQ(parse_response(r)->addresses.size(), 1u);
  for (size_t n = 0; n < r.size(); ++n) {
    const Msg cut(r.begin(), r.begin() + static_cast<long>(n));
    EXPECT_FALSE(parse_response(cut)) << n;
    (void)parse_query(cut);
  }
  std::mt19937 rng(7);
  for (int i = 0; i < 5000; ++i) {
    Msg m = r;
    for (int k = 0, n = 1 + static_cast<int>(rng() % 4); k < n; ++k)
      m[rng() % m.size()] = static_cast<std::byte>(rng());
    if (rng() % 4 == 0) m.resize(rng() % (m.size() + 1));
    (void)parse_response(m);
    (void)parse_query(m);
  }
}

}  // namespace
}  // namespace sm::net::dns
