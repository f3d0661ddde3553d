#include "agent/protocol.h"

#include <gtest/gtest.h>

#include <random>

namespace sm::agent {
namespace {

std::string header(uint32_t len, uint8_t type) {
  std::string h(5, '\0');
  for (int i = 0; i < 4; ++i) h[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  h[4] = static_cast<char>(type);
  return h;
}

TEST(AgentProtocol, FrameRoundTripByteByByte) {
  std::string wire = encode_frame(FrameType::kStdout, std::string("he\0llo", 6));
  encode_frame(wire, FrameType::kStdinEof, {});
  encode_frame(wire, FrameType::kExit, encode(ExitStatus{7, 0, false}));
  ASSERT_EQ(wire.substr(0, 5), header(6, 6)) << "u32 little-endian length, then the type byte";

  FrameDecoder d;
  std::vector<Frame> frames;
  for (char c : wire) {
    d.feed(std::string_view(&c, 1));
    while (auto f = d.next()) frames.push_back(std::move(*f));
  }
  d.finish();
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_EQ(frames[0].type, FrameType::kStdout);
  EXPECT_EQ(frames[0].payload, std::string("he\0llo", 6));
  EXPECT_EQ(frames[1].type, FrameType::kStdinEof);
  EXPECT_TRUE(frames[1].payload.empty());
  EXPECT_EQ(decode<ExitStatus>(frames[2].payload), (ExitStatus{7, 0, false}));
}

TEST(AgentProtocol, OversizeFrameIsRejectedAtItsHeader) {
  FrameDecoder d;
  // Only the header has arrived: the decoder must refuse now, not buffer 4 GiB first.
  d.feed(header(0xffffffffu, static_cast<uint8_t>(FrameType::kStdout)));
  EXPECT_THROW((void)d.next(), ProtocolError);

  FrameDecoder j;
  j.feed(header(kMaxJsonPayload + 1, static_cast<uint8_t>(FrameType::kExec)));
  EXPECT_THROW((void)j.next(), ProtocolError) << "JSON frames have the smaller cap";

  FrameDecoder ok;
  ok.feed(header(kMaxFramePayload, static_cast<uint8_t>(FrameType::kStdout)));
  EXPECT_FALSE(ok.next().has_value()) << "exactly the cap is allowed, and needs its payload";
}

TEST(AgentProtocol, UnknownTypeIsRejected) {
  for (uint8_t t : {uint8_t{0}, uint8_t{18}, uint8_t{200}, uint8_t{255}}) {
    FrameDecoder d;
    d.feed(header(0, t));
    EXPECT_THROW((void)d.next(), ProtocolError) << "type " << int(t);
  }
}

TEST(AgentProtocol, TruncatedFrameIsAnErrorAtEndOfStream) {
  std::string wire = encode_frame(FrameType::kStdout, "hello");
  FrameDecoder d;
  d.feed(std::string_view(wire).substr(0, wire.size() - 1));
  EXPECT_FALSE(d.next().has_value());
  EXPECT_THROW(d.finish(), ProtocolError);
  FrameDecoder h;
  h.feed(std::string_view(wire).substr(0, 3));  // half a header
  EXPECT_THROW(h.finish(), ProtocolError);
}

TEST(AgentProtocol, EncoderRefusesOversizePayloads) {
  EXPECT_THROW((void)encode_frame(FrameType::kStdout, std::string(kMaxFramePayload + 1, 'x')), ProtocolError);
  EXPECT_THROW((void)encode_frame(FrameType::kExec, std::string(kMaxJsonPayload + 1, ' ')), ProtocolError);
}

TEST(AgentProtocol, ExecRequestRoundTrip) {
  ExecRequest r;
  r.argv = {"sh", "-c", "echo \"$X\""};
  r.env = {"X=1=2", "PATH=/bin"};
  r.cwd = "/work";
  r.create_cwd = true;
  r.user = "1000:1000";
  r.tty = TtySize{40, 120};
  r.timeout = std::chrono::milliseconds(1500);
  r.attach_stdin = true;
  r.main = true;
  r.rlimits = {{"nofile", 1024, 4096}, {"core", std::nullopt, std::nullopt}};
  ExecRequest d = decode<ExecRequest>(encode(r));
  EXPECT_EQ(d.argv, r.argv);
  EXPECT_EQ(d.env, r.env);
  EXPECT_EQ(d.cwd, r.cwd);
  EXPECT_TRUE(d.create_cwd);
  EXPECT_EQ(d.user, r.user);
  ASSERT_TRUE(d.tty.has_value());
  EXPECT_EQ(*d.tty, (TtySize{40, 120}));
  EXPECT_EQ(d.timeout, r.timeout);
  EXPECT_TRUE(d.attach_stdin);
  EXPECT_TRUE(d.main);
  EXPECT_FALSE(d.detach);
  ASSERT_EQ(d.rlimits.size(), 2u);
  EXPECT_EQ(d.rlimits[0].soft, 1024u);
  EXPECT_EQ(d.rlimits[0].hard, 4096u);
  EXPECT_FALSE(d.rlimits[1].soft.has_value());
}

TEST(AgentProtocol, OtherMessagesRoundTrip) {
  auto h = decode<HelloReply>(encode(HelloReply{1, "sm-agent x", true, "box"}));
  EXPECT_EQ(h.agent, "sm-agent x");
  EXPECT_TRUE(h.init);
  EXPECT_EQ(h.hostname, "box");
  auto hr = decode<HelloRequest>(encode(HelloRequest{1, 3}));
  EXPECT_EQ(hr.max_version, 3u);
  EXPECT_EQ(decode<Started>(encode(Started{4242})).pid, 4242);
  auto s = decode<SignalRequest>(encode(SignalRequest{15, true}));
  EXPECT_EQ(s.signal, 15);
  EXPECT_TRUE(s.main);
  auto w = decode<WriteFileRequest>(encode(WriteFileRequest{"/a/b", 0600, 99, true, 5u, std::nullopt}));
  EXPECT_EQ(w.path, "/a/b");
  EXPECT_EQ(w.mode, 0600u);
  EXPECT_EQ(w.size, 99u);
  EXPECT_EQ(w.uid, 5u);
  EXPECT_FALSE(w.gid.has_value());
  EXPECT_EQ(decode<ReadFileRequest>(encode(ReadFileRequest{"/x", 10})).max_size, 10u);
  EXPECT_EQ(decode<FileInfo>(encode(FileInfo{12, 0755})).mode, 0755u);
  EXPECT_EQ(decode<PowerOffRequest>(encode(PowerOffRequest{3})).status, 3);
  auto e = decode<ErrorInfo>(encode(ErrorInfo{ErrorCode::kCommandNotFound, "nope"}));
  EXPECT_EQ(e.code, ErrorCode::kCommandNotFound);
  EXPECT_EQ(e.message, "nope");
  EXPECT_EQ(exit_code_for(ErrorCode::kCommandNotFound), 127);
  EXPECT_EQ(exit_code_for(ErrorCode::kCommandNotExecutable), 126);
  EXPECT_EQ(exit_code_for(ErrorCode::kExecFailed), 126);
  EXPECT_EQ(exit_code_for(ErrorCode::kProtocol), 125);
}

TEST(AgentProtocol, UnknownErrorCodeFromANewerPeerStaysAnError) {
  auto e = decode<ErrorInfo>(R"({"code":"quota_exceeded","message":"m"})");
  EXPECT_EQ(e.code, ErrorCode::kInternal);
  EXPECT_NE(e.message.find("quota_exceeded"), std::string::npos);
}

TEST(AgentProtocol, BadJsonIsRejected) {
  const char* bad[] = {
      "",                                        // empty
      "{",                                       // truncated
      "[]",                                      // not an object
      "\"argv\"",                                // not an object
      "{\"argv\":\"ls\"}",                       // wrong type
      "{\"argv\":[]}",                           // empty argv
      "{\"argv\":[\"\"]}",                       // empty command
      "{\"argv\":[1]}",                          // non-string element
      "{\"argv\":[\"a\\u0000b\"]}",              // NUL cannot reach execve
      "{\"argv\":[\"ls\"],\"env\":[\"NOEQUALS\"]}",
      "{\"argv\":[\"ls\"],\"env\":[\"=x\"]}",
      "{\"argv\":[\"ls\"],\"cwd\":\"relative\"}",
      "{\"argv\":[\"ls\"],\"timeout_ms\":-1}",
      "{\"argv\":[\"ls\"],\"timeout_ms\":1.5}",
      "{\"argv\":[\"ls\"],\"timeout_ms\":99999999999999}",
      "{\"argv\":[\"ls\"],\"tty\":{\"rows\":70000}}",
      "{\"argv\":[\"ls\"],\"tty\":true}",
      "{\"argv\":[\"ls\"],\"stdin\":\"yes\"}",
      "{\"argv\":[\"ls\"],\"detach\":true}",      // detach without main
      "{\"argv\":[\"ls\"],\"rlimits\":[{\"soft\":1}]}",
      "{\"argv\":[\"ls\"],\"rlimits\":{}}",
      "{\"argv\":[\"ls\"]} trailing",
      "{\"argv\":[\"\xff\xfe\"]}",               // not UTF-8
  };
  for (const char* b : bad) EXPECT_THROW((void)decode<ExecRequest>(b), ProtocolError) << b;
  EXPECT_THROW((void)decode<ExitStatus>(R"({"code":999})"), ProtocolError);
  EXPECT_THROW((void)decode<ExitStatus>(R"({"code":-1})"), ProtocolError);
  EXPECT_THROW((void)decode<ExitStatus>(R"({"signal":9})"), ProtocolError);
  EXPECT_THROW((void)decode<SignalRequest>(R"({"signal":0})"), ProtocolError);
  EXPECT_THROW((void)decode<SignalRequest>(R"({"signal":9,"target":"all"})"), ProtocolError);
  EXPECT_THROW((void)decode<WriteFileRequest>(R"({"path":"rel","size":1})"), ProtocolError);
  EXPECT_THROW((void)decode<WriteFileRequest>(R"({"path":"/a","mode":65535,"size":1})"), ProtocolError);
  EXPECT_THROW((void)decode<WriteFileRequest>(R"({"path":"/a"})"), ProtocolError);
  EXPECT_THROW((void)decode<HelloRequest>(R"({"protocol":"other","min_version":1,"max_version":1})"), ProtocolError);
  EXPECT_THROW((void)decode<HelloRequest>(R"({"protocol":"supermachine-agent","min_version":2,"max_version":1})"), ProtocolError);
  EXPECT_THROW((void)decode<ErrorInfo>(R"({"message":"no code"})"), ProtocolError);
  EXPECT_THROW(decode_ok("null"), ProtocolError);
}

TEST(AgentProtocol, DeepNestingIsRejectedBeforeParsing) {
  std::string deep = "{\"argv\":[\"ls\"],\"x\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_THROW((void)decode<ExecRequest>(deep), ProtocolError);
  // Brackets inside strings do not count.
  auto r = decode<ExecRequest>(R"({"argv":["[[[[[[[[[[[[[[[[[[[[[[[[[[\"{{{{{{{{{{{{{{"]})");
  EXPECT_EQ(r.argv[0], "[[[[[[[[[[[[[[[[[[[[[[[[[[\"{{{{{{{{{{{{{{");
}

TEST(AgentProtocol, NonUtf8RequestIsRefusedNotMangled) {
  ExecRequest r;
  r.argv = {"cat", "caf\xe9"};  // Latin-1: not representable in a JSON string
  EXPECT_THROW((void)encode(r), Error);
  // Replies are informational and degrade instead of failing.
  EXPECT_NO_THROW((void)encode(ErrorInfo{ErrorCode::kFileError, "open /caf\xe9: x"}));
}

// Random input must only ever produce frames or ProtocolError, never a crash or a hang.
TEST(AgentProtocol, RandomInputNeverCrashesTheDecoders) {
  std::mt19937 rng(1234);
  for (int round = 0; round < 3000; ++round) {
    std::string junk(rng() % 64, '\0');
    for (auto& c : junk) c = static_cast<char>(rng());
    if (round % 3 == 0 && junk.size() >= 5) {  // plausible headers get further in
      junk[0] = static_cast<char>(junk.size() - 5);
      junk[1] = junk[2] = junk[3] = 0;
      junk[4] = static_cast<char>(1 + rng() % 17);
    }
    FrameDecoder d;
    d.feed(junk);
    try {
      while (auto f = d.next()) {
        (void)decode<ExecRequest>(f->payload);
      }
      d.finish();
    } catch (const ProtocolError&) {
    }
    const std::string wrapped = "{\"argv\":[\"" + junk + "\"]}";
    const std::string* texts[] = {&junk, &wrapped};
    for (const std::string* text : texts) {
      try {
        (void)decode<ExecRequest>(*text);
      } catch (const ProtocolError&) {
      }
      try {
        (void)decode<ExitStatus>(*text);
      } catch (const ProtocolError&) {
      }
    }
  }
}

}  // namespace
}  // namespace sm::agent
