// fuzz_seeds OUTDIR: writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from the
// real encoders and builders, so seeds stay valid as formats change. Regenerate with
//   build/fuzz/fuzz_seeds fuzz/corpus
// and commit the result. The unit tests run every seed through its target's harness.
#include <archive.h>
#include <archive_entry.h>

#include <sys/sysmacros.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "agent/protocol.h"
#include "net/dns.h"
#include "net/packet.h"
#include "snapshot/format.h"

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

namespace {

fs::path g_out;

void seed(const std::string& target, const std::string& name, const Bytes& bytes) {
  fs::create_directories(g_out / target);
  std::ofstream(g_out / target / name, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}
Bytes of(uint8_t first, std::string_view rest) {
  Bytes b(rest.size() + 1);
  b[0] = first;
  std::memcpy(b.data() + 1, rest.data(), rest.size());
  return b;
}
Bytes of(std::span<const std::byte> s) {
  auto p = reinterpret_cast<const uint8_t*>(s.data());
  return Bytes(p, p + s.size());
}

// ---- agent protocol: byte 0 even = the host reading the agent, odd = the agent reading the host
void agent_seeds() {
  using namespace sm::agent;
  using T = FrameType;
  std::string s;
  HelloReply hr;
  hr.agent = "sm-agent 0.1.0";
  hr.hostname = "box";
  hr.init = true;
  encode_frame(s, T::kHello, encode(hr));
  encode_frame(s, T::kStarted, encode(Started{42}));
  encode_frame(s, T::kStdout, "hello\n");
  encode_frame(s, T::kExit, encode(ExitStatus{7, 0, false}));
  seed("agent_protocol_fuzz", "host-exec-session", of(0x0e, s));
  s.clear();
  encode_frame(s, T::kFileInfo, encode(FileInfo{5, 0644}));
  encode_frame(s, T::kFileData, "12345");
  encode_frame(s, T::kOk, encode_ok());
  encode_frame(s, T::kError, encode(ErrorInfo{ErrorCode::kFileError, "no such file"}));
  seed("agent_protocol_fuzz", "host-file-replies", of(0x40, s));

  s.clear();
  encode_frame(s, T::kHello, encode(HelloRequest{}));
  ExecRequest e;
  e.argv = {"sh", "-c", "echo hi"};
  e.env = {"A=1"};
  e.cwd = "/tmp";
  e.user = "1000:1000";
  e.tty = TtySize{24, 80};
  e.timeout = std::chrono::milliseconds(500);
  e.rlimits = {Rlimit{"nofile", 1024, 2048}};
  encode_frame(s, T::kExec, encode(e));
  encode_frame(s, T::kStdin, "input");
  encode_frame(s, T::kStdinEof, "");
  encode_frame(s, T::kResize, encode(TtySize{50, 120}));
  encode_frame(s, T::kSignal, encode(SignalRequest{15, false}));
  seed("agent_protocol_fuzz", "agent-exec-session", of(0x1f, s));
  s.clear();
  WriteFileRequest w;
  w.path = "/etc/motd";
  w.size = 3;
  w.make_parents = true;
  encode_frame(s, T::kWriteFile, encode(w));
  encode_frame(s, T::kFileData, "abc");
  encode_frame(s, T::kReadFile, encode(ReadFileRequest{"/etc/motd", 1 << 20}));
  NetworkRequest n;
  NetworkInterface i;
  i.mac = "52:54:00:12:34:56";
  i.mtu = 1500;
  i.ipv4 = "10.0.2.15";
  i.ipv4_prefix = 24;
  i.gateway4 = "10.0.2.2";
  n.interface = i;
  n.nameservers = {"10.0.2.3"};
  n.hosts = {{"db", "10.0.0.5"}};
  n.hostname = "box";
  encode_frame(s, T::kNetwork, encode(n));
  RestoreRequest r;
  r.realtime_ns = 1'700'000'000'000'000'000;
  r.entropy = std::string(32, 'e');
  r.hostname = "clone";
  encode_frame(s, T::kRestore, encode(r));
  encode_frame(s, T::kPowerOff, encode(PowerOffRequest{0}));
  seed("agent_protocol_fuzz", "agent-requests", of(0x03, s));
}

// ---- net: byte 0 = policy; records [flags][u16 len][frame] (flags: 1 inbound, 2 DNS payload)
void record(Bytes& b, uint8_t flags, std::span<const std::byte> body) {
  b.push_back(flags);
  b.push_back(static_cast<uint8_t>(body.size()));
  b.push_back(static_cast<uint8_t>(body.size() >> 8));
  auto p = reinterpret_cast<const uint8_t*>(body.data());
  b.insert(b.end(), p, p + body.size());
}
void net_seeds() {
  using namespace sm::net;
  L2L3 out;
  out.src_mac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
  out.dst_mac = {0x52, 0x55, 10, 0, 2, 2};
  out.src = IpAddr::v4(10, 0, 2, 15);
  out.dst = IpAddr::v4(198, 51, 100, 7);
  L2L3 in = out;
  std::swap(in.src, in.dst);
  std::swap(in.src_mac, in.dst_mac);
  L2L3 out6 = out;
  out6.src = *IpAddr::parse("fec0::15");
  out6.dst = *IpAddr::parse("2001:db8::1");
  const std::byte data[] = {std::byte{'h'}, std::byte{'i'}};
  for (uint8_t policy = 0; policy < 8; ++policy) {
    Bytes b{policy};
    record(b, 0, build_tcp_frame(out, 40000, 443, 1, 0, kTcpSyn, 65535, {}));
    record(b, 1, build_tcp_frame(in, 443, 40000, 9, 2, kTcpSyn | kTcpAck, 65535, {}));
    record(b, 0, build_tcp_frame(out, 40000, 443, 2, 10, kTcpAck | kTcpPsh, 65535, data));
    record(b, 0, build_udp_frame(out, 40001, 9000, data));
    record(b, 0, build_icmp_frame(out6, 128, 0, 0x00010001, data));
    record(b, 2, dns::build_query(7, policy % 2 ? "files.test" : "blocked.test", dns::kTypeA));
    record(b, 3, dns::build_query(7, "files.test", dns::kTypeA));  // an answer-shaped reply
    record(b, 0, build_tcp_frame(out, 40000, 443, 3, 10, kTcpFin | kTcpAck, 65535, {}));
    seed("net_fuzz", "session-policy-" + std::to_string(policy), b);
  }
}

// ---- oci json: byte 0 picks the parser (0 manifest, 1 index, 2 config, 3 reference, 4 platform,
// 5 digest, 6 WWW-Authenticate)
void oci_seeds() {
  const std::string digest = "sha256:" + std::string(64, 'a');
  seed("oci_json_fuzz", "manifest", of(0, R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":")" + digest + R"(","size":123},
"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":")" + digest + R"(","size":456}]})"));
  seed("oci_json_fuzz", "docker-manifest", of(0, R"({"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":")" + digest + R"(","size":1},
"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":")" + digest + R"(","size":2}]})"));
  seed("oci_json_fuzz", "index", of(1, R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":")" + digest + R"(","size":7,
"platform":{"architecture":"amd64","os":"linux"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json",
"digest":")" + digest + R"(","size":7,"platform":{"architecture":"arm64","os":"linux","variant":"v8"},
"annotations":{"org.opencontainers.image.ref.name":"v1"}}]})"));
  seed("oci_json_fuzz", "config", of(2, R"({"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],
"Entrypoint":["/bin/sh"],"Cmd":["-c","echo hi"],"WorkingDir":"/srv","User":"1000:1000","ExposedPorts":{"80/tcp":{}}},
"rootfs":{"type":"layers","diff_ids":[")" + digest + R"("]},"history":[{"created_by":"x"}]})"));
  seed("oci_json_fuzz", "reference", of(3, "ghcr.io/org/app:1.2@" + digest));
  seed("oci_json_fuzz", "platform", of(4, "linux/arm64/v8"));
  seed("oci_json_fuzz", "digest", of(5, digest));
  seed("oci_json_fuzz", "www-authenticate",
       of(6, R"(Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull")"));
}

// ---- layers: tar archives made with libarchive, including the hostile shapes the policy refuses
struct Entry {
  std::string path;
  mode_t type;
  std::string data;  // file content or link target
  dev_t rdev = 0;
};
Bytes tar(const std::vector<Entry>& entries, bool gzip) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (gzip) archive_write_add_filter_gzip(a);
  std::vector<char> buf(1 << 20);
  size_t used = 0;
  archive_write_open_memory(a, buf.data(), buf.size(), &used);
  for (const auto& e : entries) {
    archive_entry* ae = archive_entry_new();
    archive_entry_set_pathname(ae, e.path.c_str());
    archive_entry_set_filetype(ae, e.type);
    archive_entry_set_perm(ae, e.type == AE_IFDIR ? 0755 : 0644);
    if (e.type == AE_IFREG) archive_entry_set_size(ae, static_cast<la_int64_t>(e.data.size()));
    if (e.type == AE_IFLNK) archive_entry_set_symlink(ae, e.data.c_str());
    if (e.type == AE_IFCHR || e.type == AE_IFBLK) archive_entry_set_rdev(ae, e.rdev);
    archive_write_header(a, ae);
    if (e.type == AE_IFREG) archive_write_data(a, e.data.data(), e.data.size());
    archive_entry_free(ae);
  }
  archive_write_close(a);
  archive_write_free(a);
  return Bytes(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(used));
}
void layer_seeds() {
  seed("layer_fuzz", "plain", tar({{"etc", AE_IFDIR, ""}, {"etc/motd", AE_IFREG, "hello\n"},
                                   {"bin", AE_IFDIR, ""}, {"bin/sh", AE_IFLNK, "busybox"},
                                   {"dev", AE_IFDIR, ""}, {"dev/console", AE_IFCHR, "", makedev(5, 1)},
                                   {"run/fifo", AE_IFIFO, ""}},
                                  false));
  seed("layer_fuzz", "gzip-whiteouts", tar({{"a", AE_IFDIR, ""}, {"a/.wh.b", AE_IFREG, ""},
                                            {"c/.wh..wh..opq", AE_IFREG, ""}, {"c/d", AE_IFREG, "x"}},
                                           true));
  seed("layer_fuzz", "escapes", tar({{"../outside", AE_IFREG, "x"}, {"/abs", AE_IFREG, "y"},
                                     {"l", AE_IFLNK, "/"}, {"l/etc/passwd", AE_IFREG, "z"},
                                     {"up", AE_IFLNK, "../../.."}, {"up/x", AE_IFREG, "w"}},
                                    false));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds OUTDIR\n");
    return 2;
  }
  g_out = argv[1];
  agent_seeds();
  net_seeds();
  oci_seeds();
  layer_seeds();
  // snapshot_fuzz: a small valid state file; virtio_fuzz: no seeds (any bytes are rings).
  std::vector<sm::snapshot::Section> sections(2);
  sections[0].name = "machine";
  sections[0].payload.assign(64, std::byte{1});
  sections[1].name = "virtio.0";
  sections[1].payload.assign(16, std::byte{2});
  seed("snapshot_fuzz", "two-sections", of(sm::snapshot::encode_state_file(sections)));
  return 0;
}
