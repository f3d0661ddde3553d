#include "snapshot/format.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

namespace sm::snapshot {
namespace {

namespace fs = std::filesystem;
using namespace std::literals;

std::vector<std::byte> bytes_of(std::string_view s) {
  auto b = std::as_bytes(std::span(s.data(), s.size()));
  return {b.begin(), b.end()};
}

// A state file written by hand from docs/snapshot-format.md, independent of encode_state_file,
// so the tests pin the layout and can build files the encoder refuses to write.
struct RawFile {
  std::vector<std::byte> out;
  template <class T>
  void le(T v) {
    std::byte b[sizeof(T)];
    std::memcpy(b, &v, sizeof v);
    out.insert(out.end(), b, b + sizeof b);
  }
  static uint32_t crc(uint32_t c, const std::byte* p, size_t n) {
    if (n == 0) return c;  // zlib answers 0 for a null buffer
    return static_cast<uint32_t>(::crc32(c, reinterpret_cast<const Bytef*>(p), static_cast<uInt>(n)));
  }
  RawFile(uint32_t count, uint32_t version = kFormatVersion) {
    for (char c : std::string_view("SMSNAP\x1a\n")) out.push_back(static_cast<std::byte>(c));
    le(version);
    le(count);
    le(crc(0, out.data(), out.size()));
  }
  RawFile& section(std::string_view name, std::string_view payload, std::optional<uint64_t> len = {}) {
    size_t start = out.size();
    le(static_cast<uint16_t>(name.size()));
    for (char c : name) out.push_back(static_cast<std::byte>(c));
    le(len.value_or(payload.size()));
    uint32_t c = crc(0, out.data() + start, out.size() - start);
    le(crc(c, reinterpret_cast<const std::byte*>(payload.data()), payload.size()));
    for (char ch : payload) out.push_back(static_cast<std::byte>(ch));
    return *this;
  }
};

std::vector<Section> sample_sections() {
  Encoder e;
  e.u32(2);
  e.u64(0x12345678abcdefull);
  e.str("ttyS0");
  return {
      {"machine", e.take()},
      {"vcpu.0", bytes_of("registers of vcpu 0")},
      {"empty", {}},
      {"virtio.2", bytes_of("queue state")},
  };
}

// The message of the SnapshotError that parse() throws; fails the test if it does not throw one.
std::string refusal(std::span<const std::byte> b) {
  try {
    (void)StateFile::parse(b);
  } catch (const SnapshotError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a SnapshotError: " << e.what();
    return {};
  }
  ADD_FAILURE() << "parse accepted it";
  return {};
}

class TempDir {
 public:
  TempDir() {
    char d[] = "/tmp/sm-snapshot-test-XXXXXX";
    if (!::mkdtemp(d)) std::abort();
    path_ = d;
  }
  ~TempDir() { fs::remove_all(path_); }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(SnapshotFormat, LayoutIsAsDocumented) {
  const Section s[] = {{"ab", bytes_of("xyz")}, {"e", {}}};
  RawFile want(2);
  want.section("ab", "xyz").section("e", "");
  EXPECT_EQ(encode_state_file(s), want.out);
  EXPECT_EQ(want.out.size(), kHeaderBytes + (2 + 2 + 8 + 4 + 3) + (2 + 1 + 8 + 4));
}

TEST(SnapshotFormat, RoundTripThroughAFile) {
  TempDir dir;
  auto sections = sample_sections();
  write_state_file(dir.path() / "state", sections);
  StateFile f = StateFile::read(dir.path() / "state");
  EXPECT_EQ(f.version(), kFormatVersion);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"machine", "vcpu.0", "empty", "virtio.2"}));
  for (const auto& s : sections) {
    ASSERT_TRUE(f.has(s.name)) << s.name;
    auto got = f.section(s.name);
    EXPECT_EQ(std::vector<std::byte>(got.begin(), got.end()), s.payload) << s.name;
  }
  EXPECT_TRUE(f.section("empty").empty());
  EXPECT_FALSE(f.has("vcpu.1"));
  EXPECT_FALSE(f.has("vcpu"));
  try {
    (void)f.section("vcpu.1");
    FAIL() << "no throw";
  } catch (const SnapshotError& e) {
    EXPECT_STREQ(e.what(), "the snapshot has no 'vcpu.1' section");
  }
  // The payload decodes as written.
  Decoder d(f.section("machine"), "machine");
  EXPECT_EQ(d.u32(), 2u);
  EXPECT_EQ(d.u64(), 0x12345678abcdefull);
  EXPECT_EQ(d.str(16), "ttyS0");
  d.finish();
}

TEST(SnapshotFormat, RoundTripInMemoryAndWithNoSections) {
  auto sections = sample_sections();
  auto bytes = encode_state_file(sections);
  StateFile f = StateFile::parse(bytes);
  bytes.assign(bytes.size(), std::byte{0});  // parse() copied: the input may go away
  EXPECT_EQ(f.names().size(), 4u);
  auto v = f.section("vcpu.0");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(v.data()), v.size()), "registers of vcpu 0");

  StateFile none = StateFile::parse(encode_state_file({}));
  EXPECT_TRUE(none.names().empty());
  EXPECT_EQ(none.version(), kFormatVersion);
}

TEST(SnapshotFormat, RefusesAnotherFile) {
  EXPECT_EQ(refusal(bytes_of("#!/bin/sh\necho hello\n")),
            "not a supermachine snapshot (wrong magic); re-create the snapshot");
  EXPECT_NE(refusal(bytes_of("X")).find("not a supermachine snapshot"), std::string::npos);
  auto b = encode_state_file(sample_sections());
  b[7] = std::byte{'\r'};
  EXPECT_NE(refusal(b).find("not a supermachine snapshot"), std::string::npos);
}

TEST(SnapshotFormat, RefusesAnotherVersion) {
  RawFile v2(0, 2);
  EXPECT_EQ(refusal(v2.out),
            "snapshot format version 2; this build reads version 1; re-create the snapshot with this build");
  // Named as a version mismatch even when the rest of the header is not a version 1 header.
  auto b = v2.out;
  b.resize(12);
  EXPECT_NE(refusal(b).find("snapshot format version 2"), std::string::npos);
  RawFile v0(0, 0);
  EXPECT_NE(refusal(v0.out).find("snapshot format version 0;"), std::string::npos);
}

TEST(SnapshotFormat, TruncationAtEveryLengthIsRefused) {
  auto b = encode_state_file(sample_sections());
  for (size_t n = 0; n < b.size(); ++n) {
    std::string msg = refusal(std::span(b).first(n));
    EXPECT_EQ(msg.rfind("truncated: ", 0), 0u) << "at " << n << ": " << msg;
    EXPECT_NE(msg.find("; re-create the snapshot"), std::string::npos) << msg;
  }
  EXPECT_NE(refusal(std::span(b).first(b.size() - 1)).find("the payload of section 'virtio.2'"), std::string::npos);
}

TEST(SnapshotFormat, CorruptPayloadNamesTheSection) {
  RawFile f(2);
  f.section("machine", "m").section("vcpu.0", "regs");
  f.out.back() ^= std::byte{1};
  EXPECT_EQ(refusal(f.out), "section 'vcpu.0' is corrupt (checksum mismatch); re-create the snapshot");
}

TEST(SnapshotFormat, CorruptHeaderIsRefused) {
  RawFile f(1);
  f.section("machine", "m");
  f.out[12] = std::byte{2};  // the section count, under the header checksum
  EXPECT_EQ(refusal(f.out), "the header is corrupt (checksum mismatch); re-create the snapshot");
}

TEST(SnapshotFormat, FlippingAnyByteToAnyValueIsRefused) {
  const Section s[] = {{"machine", bytes_of("shape")}, {"e", {}}, {"vcpu.0", bytes_of("ab")}};
  const auto good = encode_state_file(s);
  ASSERT_NO_THROW((void)StateFile::parse(good));
  for (size_t i = 0; i < good.size(); ++i) {
    for (int v = 0; v < 256; ++v) {
      if (std::byte(v) == good[i]) continue;
      auto b = good;
      b[i] = std::byte(v);
      EXPECT_THROW((void)StateFile::parse(b), SnapshotError) << "byte " << i << " = " << v;
    }
  }
}

TEST(SnapshotFormat, RefusesDuplicateSections) {
  RawFile f(3);
  f.section("vcpu.0", "a").section("vcpu.1", "b").section("vcpu.0", "c");
  EXPECT_EQ(refusal(f.out), "section 'vcpu.0' appears twice; re-create the snapshot");
}

TEST(SnapshotFormat, RefusesCountsAndLengthsOverTheirCaps) {
  // Section count over the cap, and one that cannot fit in the bytes present: neither is
  // reserved for (the file is 20 bytes).
  EXPECT_NE(refusal(RawFile(kMaxSections + 1).out).find("4097 sections, over the cap of 4096"), std::string::npos);
  EXPECT_NE(refusal(RawFile(0xffffffff).out).find("over the cap of 4096"), std::string::npos);
  std::string msg = refusal(RawFile(kMaxSections).out);
  EXPECT_EQ(msg.rfind("truncated: 4096 sections cannot fit", 0), 0u) << msg;

  // A name over 64 bytes, empty, or outside [a-z0-9._-].
  std::string long_name(kMaxSectionNameBytes + 1, 'a');
  EXPECT_NE(refusal(RawFile(1).section(long_name, "").out).find("65-byte name, over the cap of 64"), std::string::npos);
  EXPECT_NO_THROW((void)StateFile::parse(RawFile(1).section(long_name.substr(1), "").out));
  EXPECT_NE(refusal(RawFile(1).section("", "p").out).find("section 1 of 1 has an empty name"), std::string::npos);
  for (std::string_view bad : {"Vcpu"sv, "vcpu 0"sv, "a/b"sv, "x\x80"sv, "nul\0"sv}) {
    msg = refusal(RawFile(1).section(bad, "p").out);
    EXPECT_NE(msg.find("outside [a-z0-9._-]"), std::string::npos) << msg;
  }

  // A payload length over the per-section cap, and one over what is left; both are refused
  // before anything that size is allocated.
  msg = refusal(RawFile(1).section("big", "", kMaxSectionBytes + 1).out);
  EXPECT_NE(msg.find("section 'big' is 16777217 bytes, over the 16777216-byte cap"), std::string::npos) << msg;
  msg = refusal(RawFile(1).section("big", "", ~0ull).out);
  EXPECT_NE(msg.find("over the 16777216-byte cap"), std::string::npos) << msg;
  msg = refusal(RawFile(1).section("big", "abc", 1000).out);
  EXPECT_EQ(msg.rfind("truncated: the file ends in the payload of section 'big'", 0), 0u) << msg;

  // A whole input over the file cap.
  std::vector<std::byte> huge(kMaxFileBytes + 1);
  EXPECT_NE(refusal(huge).find("over the 67108864-byte cap"), std::string::npos);
}

TEST(SnapshotFormat, RefusesTrailingBytes) {
  auto b = encode_state_file(sample_sections());
  b.push_back(std::byte{0});
  EXPECT_EQ(refusal(b), "trailing bytes: 1 byte follows the last section; re-create the snapshot");
  auto none = encode_state_file({});
  none.resize(none.size() + 15);
  EXPECT_EQ(refusal(none), "trailing bytes: 15 bytes follow the last section; re-create the snapshot");
}

TEST(SnapshotFormat, EncoderRefusesWhatAReaderWouldRefuse) {
  auto msg_of = [](std::vector<Section> s) -> std::string {
    try {
      (void)encode_state_file(s);
    } catch (const Error& e) {
      return e.what();
    }
    return "accepted";
  };
  EXPECT_NE(msg_of({{"a", {}}, {"a", {}}}).find("section 'a' appears twice"), std::string::npos);
  EXPECT_NE(msg_of({{"", {}}}).find("is empty"), std::string::npos);
  EXPECT_NE(msg_of({{"CPU", {}}}).find("outside [a-z0-9._-]"), std::string::npos);
  EXPECT_NE(msg_of({{std::string(65, 'x'), {}}}).find("over the cap of 64"), std::string::npos);
  EXPECT_NE(msg_of({{"big", std::vector<std::byte>(kMaxSectionBytes + 1)}}).find("over the 16777216-byte cap"),
            std::string::npos);
  std::vector<Section> many(kMaxSections + 1);
  for (size_t i = 0; i < many.size(); ++i) many[i].name = std::to_string(i);
  EXPECT_NE(msg_of(many).find("4097 sections"), std::string::npos);
  // Four full-size sections: each within its cap, the file over its.
  std::vector<Section> full;
  for (int i = 0; i < 4; ++i) full.push_back({"s" + std::to_string(i), std::vector<std::byte>(kMaxSectionBytes)});
  EXPECT_NE(msg_of(full).find("over the 67108864-byte file cap"), std::string::npos);
}

TEST(SnapshotFormat, WriteIsAtomicAndLeavesNoTemporaryFile) {
  TempDir dir;
  auto path = dir.path() / "state";
  write_state_file(path, sample_sections());
  EXPECT_EQ(listing(dir.path()), (std::vector<std::string>{"state"}));
  // Rewriting replaces the file whole.
  const Section one[] = {{"agent", bytes_of("facts")}};
  write_state_file(path, one);
  EXPECT_EQ(listing(dir.path()), (std::vector<std::string>{"state"}));
  EXPECT_EQ(StateFile::read(path).names(), (std::vector<std::string>{"agent"}));
  // A refused section list leaves the old file and nothing else.
  const Section bad[] = {{"Bad", {}}};
  EXPECT_THROW(write_state_file(path, bad), Error);
  EXPECT_EQ(listing(dir.path()), (std::vector<std::string>{"state"}));
  EXPECT_EQ(StateFile::read(path).names(), (std::vector<std::string>{"agent"}));
}

TEST(SnapshotFormat, FailedWriteNamesThePath) {
  TempDir dir;
  auto path = dir.path() / "missing" / "state";
  try {
    write_state_file(path, sample_sections());
    FAIL() << "no throw";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("No such file or directory"), std::string::npos) << msg;
  }
  EXPECT_EQ(listing(dir.path()), std::vector<std::string>{});
}

TEST(SnapshotFormat, ReadNamesThePathAndCapsTheSize) {
  TempDir dir;
  auto path = dir.path() / "state";
  try {
    (void)StateFile::read(path);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }

  auto b = encode_state_file(sample_sections());
  b.back() ^= std::byte{0xff};
  {
    std::ofstream o(path, std::ios::binary);
    o.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
  try {
    (void)StateFile::read(path);
    FAIL() << "no throw";
  } catch (const SnapshotError& e) {
    EXPECT_EQ(std::string(e.what()),
              path.string() + ": section 'virtio.2' is corrupt (checksum mismatch); re-create the snapshot");
  }

  // A (sparse) file over the cap is refused from its size, before it is read.
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(kMaxFileBytes + 1)), 0);
  try {
    (void)StateFile::read(path);
    FAIL() << "no throw";
  } catch (const SnapshotError& e) {
    EXPECT_NE(std::string(e.what()).find("over the 67108864-byte cap"), std::string::npos) << e.what();
  }

  EXPECT_THROW((void)StateFile::read(dir.path()), SnapshotError);  // a directory
}

}  // namespace
}  // namespace sm::snapshot
