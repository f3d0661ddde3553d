#include "agent/protocol.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

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
  for (uint8_t t : {uint8_t{0}, uint8_t{20}, uint8_t{200}, uint8_t{255}}) {
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
      junk[4] = static_cast<char>(1 + rng() % 19);
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
      try {
        (void)decode<RestoreRequest>(*text);
      } catch (const ProtocolError&) {
      }
      try {
        (void)decode<NetworkRequest>(*text);
      } catch (const ProtocolError&) {
      }
    }
  }
}

// ---- version 2: negotiation and RESTORE ---------------------------------------------------

TEST(AgentProtocol, VersionNegotiationPicksTheHighestCommonVersion) {
  EXPECT_EQ(HelloRequest{}.min_version, 1u) << "a new host still talks to a v1 agent";
  EXPECT_EQ(HelloRequest{}.max_version, 3u);
  EXPECT_EQ(negotiate_version(HelloRequest{}), 3u);
  EXPECT_EQ(negotiate_version(HelloRequest{1, 1}), 1u) << "a v1 host gets a v1 session";
  EXPECT_EQ(negotiate_version(HelloRequest{2, 2}), 2u);
  EXPECT_EQ(negotiate_version(HelloRequest{1, 2}), 2u) << "a v2 host gets a v2 session";
  EXPECT_EQ(negotiate_version(HelloRequest{1, 9}), 3u) << "a newer host gets what this agent speaks";
  EXPECT_EQ(negotiate_version(HelloRequest{4, 9}), std::nullopt);
  EXPECT_EQ(negotiate_version(HelloRequest{0, 0}), std::nullopt);
  EXPECT_EQ(negotiate_version(HelloRequest{2, 1}), std::nullopt);
  // What a v1 host sends, byte for byte, still decodes.
  auto v1 = decode<HelloRequest>(R"({"max_version":1,"min_version":1,"protocol":"supermachine-agent"})");
  EXPECT_EQ(negotiate_version(v1), 1u);
}

TEST(AgentProtocol, RestoreIsRefusedInAVersion1Session) {
  EXPECT_EQ(min_version_for(FrameType::kRestore), 2u);
  EXPECT_EQ(min_version_for(FrameType::kExec), 1u);
  EXPECT_THROW(check_frame_version(FrameType::kRestore, 1), ProtocolError);
  EXPECT_NO_THROW(check_frame_version(FrameType::kRestore, 2));
  for (uint8_t t = 1; t <= 17; ++t) EXPECT_NO_THROW(check_frame_version(static_cast<FrameType>(t), 1)) << int(t);
  EXPECT_TRUE(is_known_type(18));
  EXPECT_TRUE(is_json_type(FrameType::kRestore));
  EXPECT_EQ(type_name(FrameType::kRestore), "RESTORE");
}

std::string all_bytes(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(i * 37 + 11);
  return s;
}

TEST(AgentProtocol, RestoreRequestRoundTrip) {
  for (size_t n : {kMinRestoreEntropy, size_t{256}, kMaxRestoreEntropy}) {
    RestoreRequest r{1733250000123456789, all_bytes(n), "clone-7.pool_a"};
    std::string wire = encode(r);
    EXPECT_EQ(wire.find('\0'), std::string::npos);
    auto d = decode<RestoreRequest>(wire);
    EXPECT_EQ(d.realtime_ns, r.realtime_ns);
    EXPECT_TRUE(d.entropy == r.entropy) << n << " bytes of entropy came back altered";
    EXPECT_EQ(d.hostname, r.hostname);
    EXPECT_NO_THROW((void)encode_frame(FrameType::kRestore, wire));
  }
  // Hex on the wire, either case.
  std::string hex(64, 'A');
  auto d = decode<RestoreRequest>(R"({"realtime_ns":1,"hostname":"h","entropy":")" + hex + "\"}");
  EXPECT_EQ(d.entropy, std::string(32, '\xaa'));
  auto enc = nlohmann::json::parse(encode(RestoreRequest{5, std::string(32, '\x0f'), "h"}));
  std::string expected_hex;
  for (int i = 0; i < 32; ++i) expected_hex += "0f";
  EXPECT_EQ(enc["entropy"], expected_hex);
  EXPECT_EQ(enc["realtime_ns"], 5);
}

TEST(AgentProtocol, RestoreRequestValidation) {
  const std::string hex32(64, '7');
  auto req = [&](const std::string& fields) { return "{" + fields + "}"; };
  const std::string ok_time = R"("realtime_ns":1733250000000000000)";
  const std::string ok_host = R"("hostname":"vm-1")";
  const std::string ok_entropy = R"("entropy":")" + hex32 + "\"";
  ASSERT_NO_THROW((void)decode<RestoreRequest>(req(ok_time + "," + ok_entropy + "," + ok_host)));
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"not an object", "[]"},
      {"not JSON", "{realtime_ns:1}"},
      {"realtime_ns missing", req(ok_entropy + "," + ok_host)},
      {"realtime_ns zero", req(R"("realtime_ns":0,)" + ok_entropy + "," + ok_host)},
      {"realtime_ns negative", req(R"("realtime_ns":-5,)" + ok_entropy + "," + ok_host)},
      {"realtime_ns a string", req(R"("realtime_ns":"1",)" + ok_entropy + "," + ok_host)},
      {"realtime_ns fractional", req(R"("realtime_ns":1.5,)" + ok_entropy + "," + ok_host)},
      {"realtime_ns beyond int64", req(R"("realtime_ns":9223372036854775808,)" + ok_entropy + "," + ok_host)},
      {"entropy missing", req(ok_time + "," + ok_host)},
      {"entropy not a string", req(ok_time + R"(,"entropy":[1,2],)" + ok_host)},
      {"entropy odd length", req(ok_time + R"(,"entropy":")" + hex32 + "7\"," + ok_host)},
      {"entropy not hex", req(ok_time + R"(,"entropy":")" + std::string(62, '7') + "zz\"," + ok_host)},
      {"entropy with a sign", req(ok_time + R"(,"entropy":")" + std::string(62, '7') + "-1\"," + ok_host)},
      {"entropy too short", req(ok_time + R"(,"entropy":")" + std::string(62, '7') + "\"," + ok_host)},
      {"entropy empty", req(ok_time + R"(,"entropy":"",)" + ok_host)},
      {"entropy too long", req(ok_time + R"(,"entropy":")" + std::string(1026, '7') + "\"," + ok_host)},
      {"hostname missing", req(ok_time + "," + ok_entropy)},
      {"hostname empty", req(ok_time + "," + ok_entropy + R"(,"hostname":"")")},
      {"hostname too long", req(ok_time + "," + ok_entropy + R"(,"hostname":")" + std::string(65, 'h') + "\"")},
      {"hostname with a slash", req(ok_time + "," + ok_entropy + R"(,"hostname":"a/b")")},
      {"hostname with a space", req(ok_time + "," + ok_entropy + R"(,"hostname":"a b")")},
      {"hostname with NUL", req(ok_time + "," + ok_entropy + R"(,"hostname":"a\u0000b")")},
      {"hostname not ASCII", req(ok_time + "," + ok_entropy + R"(,"hostname":"caf\u00e9")")},
      {"hostname a number", req(ok_time + "," + ok_entropy + R"(,"hostname":7)")},
  };
  for (const auto& [what, payload] : bad) EXPECT_THROW((void)decode<RestoreRequest>(payload), ProtocolError) << what;

  // The encoder refuses the same things (the caller's mistake: sm::Error, not ProtocolError).
  const std::vector<std::pair<std::string, RestoreRequest>> refused = {
      {"time zero", {0, all_bytes(32), "h"}},
      {"time negative", {-1, all_bytes(32), "h"}},
      {"entropy short", {1, all_bytes(31), "h"}},
      {"entropy long", {1, all_bytes(513), "h"}},
      {"hostname empty", {1, all_bytes(32), ""}},
      {"hostname bad", {1, all_bytes(32), "a;b"}},
      {"hostname long", {1, all_bytes(32), std::string(65, 'x')}},
  };
  for (const auto& [what, r] : refused) {
    try {
      (void)encode(r);
      ADD_FAILURE() << what << ": encoded";
    } catch (const ProtocolError&) {
      ADD_FAILURE() << what << ": a ProtocolError blames the peer";
    } catch (const Error&) {
    }
  }
}

TEST(AgentProtocol, RestoreReplyAndError) {
  RestoreReply all{true, true, true};
  EXPECT_EQ(decode<RestoreReply>(encode(all)), all);
  EXPECT_EQ(decode<RestoreReply>(encode(RestoreReply{false, true, false})), (RestoreReply{false, true, false}));
  EXPECT_EQ(decode<RestoreReply>("{}"), RestoreReply{}) << "an OK without details applied nothing known";
  EXPECT_THROW((void)decode<RestoreReply>(R"({"clock_set":"yes"})"), ProtocolError);
  EXPECT_THROW((void)decode<RestoreReply>("[]"), ProtocolError);
  auto e = decode<ErrorInfo>(encode(ErrorInfo{ErrorCode::kRestoreFailed, "sethostname: x (errno 1)"}));
  EXPECT_EQ(e.code, ErrorCode::kRestoreFailed);
  EXPECT_EQ(error_code_name(ErrorCode::kRestoreFailed), "restore_failed");
  EXPECT_EQ(exit_code_for(ErrorCode::kRestoreFailed), 125);
}

TEST(AgentProtocol, HostnameRule) {
  for (const char* good : {"a", "vm-1", "web_2.example", "A1", "0", "..", "x-_."})
    EXPECT_TRUE(valid_hostname(good)) << good;
  EXPECT_TRUE(valid_hostname(std::string(64, 'h')));
  EXPECT_FALSE(valid_hostname(std::string(65, 'h')));
  for (const char* bad : {"", "a b", "a/b", "a:b", "a\tb", "a$", "\xc3\xa9", "a\nb"})
    EXPECT_FALSE(valid_hostname(bad)) << bad;
  EXPECT_FALSE(valid_hostname(std::string_view("a\0b", 3)));
}

// ---- version 3: NETWORK ---------------------------------------------------------------------

NetworkRequest plan_request() {
  NetworkRequest r;
  r.interface = NetworkRequest::Interface{"52:54:00:12:34:56", 65520, "10.0.2.15", 24, "10.0.2.2",
                                          "fec0::15", 64, "fec0::2"};
  r.nameservers = {"10.0.2.3", "fec0::3"};
  r.search = {"corp.example", "example"};
  r.options = {"ndots:1", "edns0"};
  r.hosts = {{"db", "10.0.2.100"}, {"cache.internal", "fec0::99"}};
  r.hostname = "web-1";
  return r;
}

TEST(AgentProtocol, NetworkIsAVersion3Frame) {
  EXPECT_EQ(min_version_for(FrameType::kNetwork), 3u);
  EXPECT_THROW(check_frame_version(FrameType::kNetwork, 2), ProtocolError);
  EXPECT_NO_THROW(check_frame_version(FrameType::kNetwork, 3));
  EXPECT_NO_THROW(check_frame_version(FrameType::kRestore, 3));
  EXPECT_TRUE(is_known_type(19));
  EXPECT_FALSE(is_known_type(20));
  EXPECT_TRUE(is_json_type(FrameType::kNetwork));
  EXPECT_EQ(type_name(FrameType::kNetwork), "NETWORK");
  EXPECT_EQ(error_code_name(ErrorCode::kNetworkFailed), "network_failed");
  EXPECT_EQ(error_code_from_name("network_failed"), ErrorCode::kNetworkFailed);
  EXPECT_EQ(exit_code_for(ErrorCode::kNetworkFailed), 125);
  EXPECT_EQ(kTcpForwardPort, 1026u);
}

TEST(AgentProtocol, NetworkRequestRoundTrip) {
  NetworkRequest full = plan_request();
  EXPECT_EQ(decode<NetworkRequest>(encode(full)), full);
  // IPv4 only, no gateway, MTU left alone.
  NetworkRequest v4;
  v4.interface = NetworkRequest::Interface{"52:54:00:AB:cd:EF", 0, "192.168.1.2", 16, "", "", 64, ""};
  EXPECT_EQ(decode<NetworkRequest>(encode(v4)), v4);
  // Files only: no interface at all.
  NetworkRequest files;
  files.nameservers = {"1.1.1.1"};
  files.hosts = {{"a", "1.2.3.4"}};
  EXPECT_EQ(decode<NetworkRequest>(encode(files)), files);
  EXPECT_EQ(decode<NetworkRequest>("{}"), NetworkRequest{});
  // The caps themselves are accepted.
  NetworkRequest most;
  for (size_t i = 0; i < kMaxNameservers; ++i) most.nameservers.push_back("10.0.0." + std::to_string(i + 1));
  for (size_t i = 0; i < kMaxSearchDomains; ++i) most.search.push_back("d" + std::to_string(i) + ".example");
  for (size_t i = 0; i < kMaxExtraHosts; ++i) most.hosts.emplace_back("h" + std::to_string(i), "10.1.0.1");
  most.search.back() = std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
                       std::string(61, 'd');  // 253 characters
  ASSERT_EQ(most.search.back().size(), kMaxDnsName);
  std::string wire = encode(most);
  EXPECT_EQ(decode<NetworkRequest>(wire), most);
  EXPECT_NO_THROW((void)encode_frame(FrameType::kNetwork, wire));
  // The wire form documented in docs/agent-protocol.md.
  auto j = nlohmann::json::parse(encode(full));
  EXPECT_EQ(j["interface"]["mac"], "52:54:00:12:34:56");
  EXPECT_EQ(j["interface"]["ipv4_prefix"], 24);
  EXPECT_EQ(j["interface"]["gateway6"], "fec0::2");
  EXPECT_EQ(j["hosts"][1]["name"], "cache.internal");
  EXPECT_EQ(j["hosts"][1]["ip"], "fec0::99");
  EXPECT_EQ(j["hostname"], "web-1");
}

TEST(AgentProtocol, NetworkRequestRefusals) {
  auto with = [](auto change) {
    NetworkRequest r = plan_request();
    change(r);
    return r;
  };
  using I = NetworkRequest::Interface;
  const std::vector<std::pair<std::string, NetworkRequest>> refused = {
      {"mac short", with([](NetworkRequest& r) { r.interface->mac = "52:54:00:12:34"; })},
      {"mac dashes", with([](NetworkRequest& r) { r.interface->mac = "52-54-00-12-34-56"; })},
      {"mac not hex", with([](NetworkRequest& r) { r.interface->mac = "52:54:00:12:34:zz"; })},
      {"mtu tiny", with([](NetworkRequest& r) { r.interface->mtu = 67; })},
      {"mtu huge", with([](NetworkRequest& r) { r.interface->mtu = 65536; })},
      {"mtu under 1280 with ipv6", with([](NetworkRequest& r) { r.interface->mtu = 1279; })},
      {"ipv4 missing", with([](NetworkRequest& r) { r.interface->ipv4 = ""; })},
      {"ipv4 is v6", with([](NetworkRequest& r) { r.interface->ipv4 = "fec0::15"; })},
      {"ipv4 octet", with([](NetworkRequest& r) { r.interface->ipv4 = "10.0.2.256"; })},
      {"ipv4 with prefix", with([](NetworkRequest& r) { r.interface->ipv4 = "10.0.2.15/24"; })},
      {"ipv4 prefix 0", with([](NetworkRequest& r) { r.interface->ipv4_prefix = 0; })},
      {"ipv4 prefix 33", with([](NetworkRequest& r) { r.interface->ipv4_prefix = 33; })},
      {"gateway4 v6", with([](NetworkRequest& r) { r.interface->gateway4 = "fec0::2"; })},
      {"ipv6 is v4", with([](NetworkRequest& r) { r.interface->ipv6 = "10.0.2.15"; })},
      {"ipv6 scoped", with([](NetworkRequest& r) { r.interface->ipv6 = "fe80::1%eth0"; })},
      {"ipv6 prefix 129", with([](NetworkRequest& r) { r.interface->ipv6_prefix = 129; })},
      {"gateway6 junk", with([](NetworkRequest& r) { r.interface->gateway6 = "gateway"; })},
      {"gateway6 without ipv6", with([](NetworkRequest& r) { r.interface = I{"52:54:00:12:34:56", 1500, "10.0.2.15", 24, "", "", 64, "fec0::2"}; })},
      {"nameserver name", with([](NetworkRequest& r) { r.nameservers.push_back("dns.google"); })},
      {"nameserver newline", with([](NetworkRequest& r) { r.nameservers.push_back("1.1.1.1\nsearch evil"); })},
      {"17 nameservers", with([](NetworkRequest& r) { r.nameservers.assign(17, "1.1.1.1"); })},
      {"7 search domains", with([](NetworkRequest& r) { r.search.assign(7, "a.example"); })},
      {"search with space", with([](NetworkRequest& r) { r.search.push_back("a b"); })},
      {"search empty label", with([](NetworkRequest& r) { r.search.push_back("a..b"); })},
      {"search trailing dot", with([](NetworkRequest& r) { r.search.push_back("example."); })},
      {"search label 64", with([](NetworkRequest& r) { r.search.push_back(std::string(64, 'a') + ".example"); })},
      {"search 254", with([](NetworkRequest& r) { r.search = {std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." + std::string(62, 'd')}; })},
      {"option with space", with([](NetworkRequest& r) { r.options.push_back("ndots:1 rotate"); })},
      {"option empty", with([](NetworkRequest& r) { r.options.push_back(""); })},
      {"257 hosts", with([](NetworkRequest& r) { r.hosts.assign(257, {"h", "1.2.3.4"}); })},
      {"host name with space", with([](NetworkRequest& r) { r.hosts.push_back({"a b", "1.2.3.4"}); })},
      {"host name with newline", with([](NetworkRequest& r) { r.hosts.push_back({"a\n1.2.3.4 evil", "1.2.3.4"}); })},
      {"host ip junk", with([](NetworkRequest& r) { r.hosts.push_back({"a", "1.2.3"}); })},
      {"hostname with slash", with([](NetworkRequest& r) { r.hostname = "a/b"; })},
      {"hostname 65", with([](NetworkRequest& r) { r.hostname = std::string(65, 'h'); })},
  };
  for (const auto& [what, req] : refused) {
    EXPECT_FALSE(network_problem(req).empty()) << what;
    // The host refuses to encode it (a plain Error: the caller's input) ...
    try {
      (void)encode(req);
      ADD_FAILURE() << what << ": encoded";
    } catch (const ProtocolError&) {
      ADD_FAILURE() << what << ": ProtocolError from the encoder";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("NETWORK."), std::string::npos) << what << ": " << e.what();
    }
    // ... and the agent refuses it on the wire, written by hand the way a hostile host would.
    nlohmann::json j = nlohmann::json::parse(encode(NetworkRequest{}));
    if (req.interface) {
      const auto& i = *req.interface;
      j["interface"] = {{"mac", i.mac}, {"mtu", i.mtu}, {"ipv4", i.ipv4}, {"ipv4_prefix", i.ipv4_prefix},
                        {"gateway4", i.gateway4}, {"ipv6", i.ipv6}, {"ipv6_prefix", i.ipv6_prefix},
                        {"gateway6", i.gateway6}};
    }
    j["nameservers"] = req.nameservers;
    j["search"] = req.search;
    j["options"] = req.options;
    j["hosts"] = nlohmann::json::array();
    for (const auto& [n, ip] : req.hosts) j["hosts"].push_back({{"name", n}, {"ip", ip}});
    j["hostname"] = req.hostname;
    EXPECT_THROW((void)decode<NetworkRequest>(j.dump()), ProtocolError) << what;
  }
  // Wrong types and shapes on the wire.
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"interface array", R"({"interface":[]})"},
      {"interface without mac", R"({"interface":{"ipv4":"10.0.2.15","ipv4_prefix":24}})"},
      {"interface without prefix", R"({"interface":{"mac":"52:54:00:12:34:56","ipv4":"10.0.2.15"}})"},
      {"ipv6 without prefix", R"({"interface":{"mac":"52:54:00:12:34:56","ipv4":"10.0.2.15","ipv4_prefix":24,"ipv6":"fec0::15"}})"},
      {"mtu negative", R"({"interface":{"mac":"52:54:00:12:34:56","mtu":-1,"ipv4":"10.0.2.15","ipv4_prefix":24}})"},
      {"mtu string", R"({"interface":{"mac":"52:54:00:12:34:56","mtu":"1500","ipv4":"10.0.2.15","ipv4_prefix":24}})"},
      {"nameservers string", R"({"nameservers":"1.1.1.1"})"},
      {"hosts pairs as arrays", R"({"hosts":[["a","1.2.3.4"]]})"},
      {"host without ip", R"({"hosts":[{"name":"a"}]})"},
      {"hostname number", R"({"hostname":5})"},
      {"not an object", "[]"},
  };
  for (const auto& [what, payload] : bad) EXPECT_THROW((void)decode<NetworkRequest>(payload), ProtocolError) << what;
}

TEST(AgentProtocol, AddressAndNameRules) {
  for (const char* good : {"0.0.0.0", "10.0.2.15", "255.255.255.255"}) EXPECT_TRUE(valid_ipv4(good)) << good;
  for (const char* bad : {"", "10.0.2", "10.0.2.15.1", "010.0.2.15x", " 10.0.2.15", "::1", "1.2.3.4/8"})
    EXPECT_FALSE(valid_ipv4(bad)) << bad;
  for (const char* good : {"::1", "fec0::15", "2001:db8::1", "::ffff:10.0.2.15"}) EXPECT_TRUE(valid_ipv6(good)) << good;
  for (const char* bad : {"", ":::", "fec0::15/64", "10.0.2.15", "g::1"}) EXPECT_FALSE(valid_ipv6(bad)) << bad;
  EXPECT_FALSE(valid_ipv4(std::string_view("1.2.3.4\0", 8)));
  EXPECT_TRUE(valid_mac("52:54:00:12:34:56"));
  EXPECT_TRUE(valid_mac("AA:bb:CC:dd:EE:ff"));
  for (const char* bad : {"", "52:54:00:12:34:5", "52:54:00:12:34:567", "52:54:00:12:34:56:", "5254.0012.3456"})
    EXPECT_FALSE(valid_mac(bad)) << bad;
  for (const char* good : {"a", "example.com", "a-b.c_d.e", "x1.y2"}) EXPECT_TRUE(valid_dns_name(good)) << good;
  for (const char* bad : {"", ".", ".a", "a.", "a..b", "a b", "a/b", "\xc3\xa9.com"}) EXPECT_FALSE(valid_dns_name(bad)) << bad;
}

}  // namespace
}  // namespace sm::agent
