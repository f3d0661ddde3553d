#include "registry_fixture.h"

#include <archive.h>
#include <archive_entry.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/error.h"
#include "oci/http.h"

extern char** environ;

namespace sm::testing {

using nlohmann::json;

TempDir::TempDir(std::string_view prefix) {
  std::string t = (fs::temp_directory_path() / (std::string(prefix) + "-XXXXXX")).string();
  if (!::mkdtemp(t.data())) throw sys_error("mkdtemp");
  path = t;
}
TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path, ec);
}

RunResult run(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) throw sys_error("pipe");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (char** e = environ; *e; ++e) envp.push_back(*e);
  for (auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  pid_t pid;
  int rc = ::posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  ::close(pipefd[1]);
  if (rc != 0) {
    ::close(pipefd[0]);
    throw sys_error("cannot run " + argv[0] + " (is it installed? scripts/setup installs it)", rc);
  }
  RunResult r;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
    if (n > 0) r.output.append(buf, static_cast<std::size_t>(n));
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string run_checked(const std::vector<std::string>& argv) {
  RunResult r = run(argv);
  if (r.status != 0) {
    std::string cmd;
    for (auto& a : argv) cmd += a + " ";
    throw Error(fmt::format("`{}` failed (status {}): {}", cmd, r.status, r.output));
  }
  return r.output;
}

namespace {

int listen_loopback(std::uint16_t port, std::uint16_t* bound) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw sys_error("socket");
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 64) != 0) {
    ::close(fd);
    throw sys_error("bind/listen on 127.0.0.1");
  }
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  *bound = ntohs(a.sin_port);
  return fd;
}

int connect_loopback(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool send_all(int fd, std::string_view s) {
  while (!s.empty()) {
    ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    s.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

std::string_view trim_view(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

void write_file(const fs::path& p, std::string_view data) {
  std::ofstream out(p, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!out) throw Error("cannot write " + p.string());
}

}  // namespace

std::uint16_t free_loopback_port() {
  std::uint16_t port;
  ::close(listen_loopback(0, &port));
  return port;
}

// ---- TestRegistry ------------------------------------------------------------------------------

TestRegistry::TestRegistry() : TestRegistry(Options{}) {}

TestRegistry::TestRegistry(Options opts) : opts_(std::move(opts)) {
  storage_ = dir_.path / "storage";
  fs::create_directories(storage_);
  std::string auth;
  if (opts_.basic_auth) {
    std::string line = run_checked({"htpasswd", "-Bbn", opts_.basic_auth->first, opts_.basic_auth->second});
    write_file(dir_.path / "htpasswd", line.substr(0, line.find('\n')) + "\n");
    auth = fmt::format("auth:\n  htpasswd:\n    realm: supermachine-test\n    path: {}\n", (dir_.path / "htpasswd").string());
  }
  for (int attempt = 0; attempt < 5; ++attempt) {
    port_ = free_loopback_port();
    fs::path config = dir_.path / "config.yml";
    write_file(config, fmt::format("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
                                   "storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n"
                                   "http:\n  addr: 127.0.0.1:{}\n{}",
                                   storage_.string(), port_, auth));
    fs::path log = dir_.path / "registry.log";
    pid_ = ::fork();
    if (pid_ < 0) throw sys_error("fork");
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::execlp("docker-registry", "docker-registry", "serve", config.c_str(), nullptr);
      ::_exit(127);
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (std::chrono::steady_clock::now() < deadline) {
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        break;  // exited: port taken, or not installed
      }
      int fd = connect_loopback(port_);
      if (fd >= 0) {
        ::close(fd);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
    std::ifstream in(log);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.find("address already in use") == std::string::npos)
      throw Error("docker-registry did not start (install the docker-registry package: scripts/setup): " + text);
  }
  throw Error("docker-registry did not start: no free port after 5 tries");
}

TestRegistry::~TestRegistry() {
  // Its storage is a temp dir about to be deleted: no graceful shutdown needed (SIGTERM makes
  // docker-registry wait for idle keep-alive connections, seconds per test).
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
}

void TestRegistry::push(const fs::path& layout, const std::string& layout_tag, const std::string& dest, bool all,
                        bool docker_format) {
  std::vector<std::string> argv{"skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
                                "--preserve-digests"};
  if (docker_format) {
    argv.pop_back();  // converting media types changes the manifest digests by design
    argv.push_back("--format=v2s2");
  }
  if (all) argv.push_back("--all");
  if (opts_.basic_auth) argv.push_back("--dest-creds=" + opts_.basic_auth->first + ":" + opts_.basic_auth->second);
  argv.push_back("oci:" + layout.string() + ":" + layout_tag);
  argv.push_back("docker://" + host() + "/" + dest);
  (void)run_checked(argv);
}

// ---- synthetic images --------------------------------------------------------------------------

namespace {

struct ArchiveSink {
  std::string data;
  static la_ssize_t write(archive*, void* self, const void* buf, size_t n) {
    static_cast<ArchiveSink*>(self)->data.append(static_cast<const char*>(buf), n);
    return static_cast<la_ssize_t>(n);
  }
};

void check(archive* a, int rc) {
  if (rc != ARCHIVE_OK) throw Error(std::string("libarchive: ") + archive_error_string(a));
}

// One regular file in a tar; returns the uncompressed tar.
std::string make_tar(const std::string& name, const std::string& content) {
  ArchiveSink sink;
  archive* a = archive_write_new();
  check(a, archive_write_set_format_pax_restricted(a));
  check(a, archive_write_open(a, &sink, nullptr, ArchiveSink::write, nullptr));
  archive_entry* e = archive_entry_new();
  archive_entry_set_pathname(e, name.c_str());
  archive_entry_set_filetype(e, AE_IFREG);
  archive_entry_set_perm(e, 0644);
  archive_entry_set_size(e, static_cast<la_int64_t>(content.size()));
  archive_entry_set_mtime(e, 1700000000, 0);
  check(a, archive_write_header(a, e));
  archive_write_data(a, content.data(), content.size());
  archive_entry_free(e);
  archive_write_close(a);
  archive_write_free(a);
  return sink.data;
}

std::string gzip(const std::string& raw) {
  ArchiveSink sink;
  archive* a = archive_write_new();
  check(a, archive_write_set_format_raw(a));
  check(a, archive_write_add_filter_gzip(a));
  check(a, archive_write_set_filter_option(a, "gzip", "timestamp", nullptr));  // reproducible
  // No block padding: zeros after the gzip member read as a corrupt second member.
  check(a, archive_write_set_bytes_in_last_block(a, 1));
  check(a, archive_write_open(a, &sink, nullptr, ArchiveSink::write, nullptr));
  archive_entry* e = archive_entry_new();
  archive_entry_set_filetype(e, AE_IFREG);
  archive_entry_set_size(e, static_cast<la_int64_t>(raw.size()));
  check(a, archive_write_header(a, e));
  archive_write_data(a, raw.data(), raw.size());
  archive_entry_free(e);
  archive_write_close(a);
  archive_write_free(a);
  return sink.data;
}

oci::Digest put(const fs::path& layout, const std::string& data) {
  auto d = oci::Digest::of(data);
  write_file(layout / "blobs/sha256" / d.hex(), data);
  return d;
}

}  // namespace

SyntheticImage make_synthetic_image(const fs::path& layout, const std::string& tag,
                                    const std::vector<std::size_t>& sizes, const std::vector<oci::Platform>& platforms,
                                    std::uint32_t seed) {
  SyntheticImage img;
  img.layout = layout;
  img.tag = tag;
  fs::create_directories(layout / "blobs/sha256");
  write_file(layout / "oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
  json index_entries = json::array();
  for (std::size_t p = 0; p < platforms.size(); ++p) {
    json layers = json::array(), diff_ids = json::array();
    std::vector<oci::Digest> digests;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      // The first layer is shared between platforms, like a common base.
      std::mt19937 rng(seed * 1000 + static_cast<std::uint32_t>(i == 0 ? 0 : p * 100 + i));
      std::string content(sizes[i], '\0');
      for (auto& c : content) c = static_cast<char>(rng());
      std::string tar = make_tar(fmt::format("layer{}-{}.bin", i, i == 0 ? 0 : p), content);
      std::string gz = gzip(tar);
      auto d = put(layout, gz);
      digests.push_back(d);
      if (p == 0) img.layer_sizes.push_back(gz.size());
      diff_ids.push_back(oci::Digest::of(tar).to_string());
      layers.push_back({{"mediaType", oci::media::kOciLayerGzip}, {"digest", d.to_string()}, {"size", gz.size()}});
    }
    json config = {{"architecture", platforms[p].architecture},
                   {"os", platforms[p].os},
                   {"created", "2026-01-01T00:00:00Z"},
                   {"config", {{"Cmd", {"/bin/sh"}}, {"Env", {"PATH=/bin"}}}},
                   {"rootfs", {{"type", "layers"}, {"diff_ids", diff_ids}}}};
    if (!platforms[p].variant.empty()) config["variant"] = platforms[p].variant;
    std::string cfg = config.dump();
    auto cd = put(layout, cfg);
    json manifest = {{"schemaVersion", 2},
                     {"mediaType", oci::media::kOciManifest},
                     {"config", {{"mediaType", oci::media::kOciConfig}, {"digest", cd.to_string()}, {"size", cfg.size()}}},
                     {"layers", layers}};
    std::string m = manifest.dump();
    auto md = put(layout, m);
    img.manifests.push_back(md);
    img.layers.push_back(digests);
    json plat = {{"os", platforms[p].os}, {"architecture", platforms[p].architecture}};
    if (!platforms[p].variant.empty()) plat["variant"] = platforms[p].variant;
    index_entries.push_back(
        {{"mediaType", oci::media::kOciManifest}, {"digest", md.to_string()}, {"size", m.size()}, {"platform", plat}});
  }
  json top_entry;
  if (platforms.size() == 1) {
    img.top = img.manifests[0];
    top_entry = index_entries[0];
    top_entry.erase("platform");
  } else {
    std::string idx = json{{"schemaVersion", 2}, {"mediaType", oci::media::kOciIndex}, {"manifests", index_entries}}.dump();
    img.top = put(layout, idx);
    top_entry = {{"mediaType", oci::media::kOciIndex}, {"digest", img.top.to_string()}, {"size", idx.size()}};
  }
  top_entry["annotations"] = {{"org.opencontainers.image.ref.name", tag}};
  write_file(layout / "index.json",
             json{{"schemaVersion", 2}, {"mediaType", oci::media::kOciIndex}, {"manifests", {top_entry}}}.dump());
  return img;
}

// ---- FaultProxy --------------------------------------------------------------------------------

FaultProxy::FaultProxy(std::uint16_t upstream) : upstream_(upstream) {
  listen_fd_ = listen_loopback(0, &port_);
  acceptor_ = std::thread([this] { serve(); });
}

FaultProxy::~FaultProxy() {
  stop_ = true;
  acceptor_.join();
  ::close(listen_fd_);
  std::lock_guard lk(mu_);
  for (auto& t : workers_) t.join();
}

void FaultProxy::corrupt_blob(const oci::Digest& d) {
  std::lock_guard lk(mu_);
  rules_[d.to_string()].corrupt = true;
}
void FaultProxy::drop_blob_midway(const oci::Digest& d, int times) {
  std::lock_guard lk(mu_);
  rules_[d.to_string()].drop = times;
}
void FaultProxy::fail_blob_503(const oci::Digest& d, int times) {
  std::lock_guard lk(mu_);
  rules_[d.to_string()].fail503 = times;
}
void FaultProxy::require_bearer(std::string token, std::optional<std::pair<std::string, std::string>> basic) {
  std::lock_guard lk(mu_);
  bearer_ = std::move(token);
  bearer_basic_ = std::move(basic);
}
int FaultProxy::token_requests() {
  std::lock_guard lk(mu_);
  return token_requests_;
}
std::string FaultProxy::last_token_query() {
  std::lock_guard lk(mu_);
  return last_token_query_;
}
int FaultProxy::blob_requests(const oci::Digest& d) {
  std::lock_guard lk(mu_);
  return rules_[d.to_string()].requests;
}
int FaultProxy::range_requests(const oci::Digest& d) {
  std::lock_guard lk(mu_);
  return rules_[d.to_string()].ranges;
}

void FaultProxy::serve() {
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    std::lock_guard lk(mu_);
    workers_.emplace_back([this, c] {
      handle(c);
      ::close(c);
    });
  }
}

void FaultProxy::handle(int client) {
  std::string req;
  char buf[65536];
  while (req.find("\r\n\r\n") == std::string::npos && req.size() < 65536) {
    ssize_t n = ::recv(client, buf, sizeof buf, 0);
    if (n <= 0) return;
    req.append(buf, static_cast<std::size_t>(n));
  }
  auto head_end = req.find("\r\n\r\n");
  if (head_end == std::string::npos) return;
  std::string head = req.substr(0, head_end);
  std::string body = req.substr(head_end + 4);
  // Rewrite: one request per connection, so the response ends at EOF.
  std::string out;
  std::size_t content_length = 0;
  bool has_range = false;
  std::string authorization;
  std::size_t pos = 0;
  std::string request_line;
  while (pos <= head.size()) {
    auto eol = head.find("\r\n", pos);
    std::string line = head.substr(pos, eol == std::string::npos ? std::string::npos : eol - pos);
    pos = eol == std::string::npos ? head.size() + 1 : eol + 2;
    if (request_line.empty()) {
      request_line = line;
      out += line + "\r\n";
      continue;
    }
    std::string l = lower(line);
    if (l.starts_with("connection:")) continue;
    if (l.starts_with("authorization:")) {  // ours to check; the registry behind has no auth
      authorization = std::string(trim_view(line.substr(14)));
      continue;
    }
    if (l.starts_with("content-length:")) content_length = std::stoul(line.substr(15));
    if (l.starts_with("range:")) has_range = true;
    out += line + "\r\n";
  }
  out += "Connection: close\r\n\r\n";
  while (body.size() < content_length) {
    ssize_t n = ::recv(client, buf, sizeof buf, 0);
    if (n <= 0) return;
    body.append(buf, static_cast<std::size_t>(n));
  }
  out += body;

  // Token auth, when asked for.
  std::optional<std::string> bearer;
  std::optional<std::pair<std::string, std::string>> basic;
  {
    std::lock_guard lk(mu_);
    bearer = bearer_;
    basic = bearer_basic_;
  }
  std::string path = request_line.substr(request_line.find(' ') + 1);
  path = path.substr(0, path.find(' '));
  if (bearer && path.starts_with("/token")) {
    {
      std::lock_guard lk(mu_);
      ++token_requests_;
      last_token_query_ = path.substr(path.find('?') + 1);
    }
    if (basic && authorization != "Basic " + oci::base64_encode(basic->first + ":" + basic->second)) {
      send_all(client, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
      return;
    }
    std::string tok = json{{"token", *bearer}, {"expires_in", 300}}.dump();
    send_all(client, fmt::format("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
                                 "Connection: close\r\n\r\n{}", tok.size(), tok));
    return;
  }
  if (bearer && path.starts_with("/v2/") && authorization != "Bearer " + *bearer) {
    std::string repo = path.substr(4);
    for (std::string_view kind : {"/manifests/", "/blobs/"})
      if (auto k = repo.find(kind); k != std::string::npos) repo.resize(k);
    std::string body = R"({"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]})";
    send_all(client, fmt::format("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{}/token\","
                                 "service=\"sm-test\",scope=\"repository:{}:pull\"\r\nContent-Type: application/json\r\n"
                                 "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                                 port_, repo, body.size(), body));
    return;
  }

  std::string digest;
  bool is_get = request_line.starts_with("GET ");
  if (auto b = request_line.find("/blobs/sha256:"); b != std::string::npos) {
    digest = request_line.substr(b + 7, 7 + 64);
  }
  Rule rule;
  if (!digest.empty()) {
    std::lock_guard lk(mu_);
    auto& r = rules_[digest];
    ++r.requests;
    if (has_range) ++r.ranges;
    rule = r;
    if (r.fail503 > 0 && is_get) --r.fail503;
  }
  if (rule.fail503 > 0 && is_get) {
    send_all(client, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    return;
  }

  int up = connect_loopback(upstream_);
  if (up < 0) return;
  if (!send_all(up, out)) {
    ::close(up);
    return;
  }
  std::string resp;
  ssize_t n;
  while ((n = ::recv(up, buf, sizeof buf, 0)) > 0) resp.append(buf, static_cast<std::size_t>(n));
  ::close(up);

  auto rh = resp.find("\r\n\r\n");
  bool ok_body = rh != std::string::npos && (resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.1 206"));
  if (!digest.empty() && is_get && ok_body && resp.size() > rh + 4) {
    std::size_t body_start = rh + 4, body_len = resp.size() - body_start;
    if (rule.corrupt) resp[body_start + body_len / 2] ^= 0x5a;
    if (rule.drop > 0) {
      {
        std::lock_guard lk(mu_);
        --rules_[digest].drop;
      }
      send_all(client, std::string_view(resp).substr(0, body_start + body_len / 2));
      ::shutdown(client, SHUT_RDWR);
      return;
    }
  }
  send_all(client, resp);
}

}  // namespace sm::testing
