#include "oci/registry.h"

#include <algorithm>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <spdlog/spdlog.h>
#include <thread>

#include "common/error.h"
#include "oci/http.h"

namespace sm::oci {

namespace {

constexpr std::size_t kMaxTokenResponse = 1u << 20;
constexpr std::uint64_t kMaxBlobBytes = 1ull << 40;  // a 1 TiB "layer" is an attack, not an image

const std::string kManifestAccept = fmt::format("Accept: {}, {}, {}, {}", media::kOciManifest, media::kOciIndex,
                                                media::kDockerManifest, media::kDockerManifestList);

// A response status worth retrying (5xx, 429); the retry loop catches it.
class RetryableStatus : public Error {
 public:
  RetryableStatus(const std::string& what, std::chrono::milliseconds after = {}) : Error(what), after_(after) {}
  std::chrono::milliseconds after_;
};

std::string strip_params(std::string ct) {
  if (auto semi = ct.find(';'); semi != std::string::npos) ct.resize(semi);
  while (!ct.empty() && ct.back() == ' ') ct.pop_back();
  return ct;
}

// "HTTP 404 (MANIFEST_UNKNOWN: manifest unknown)" from the distribution spec's error body.
std::string describe_status(const HttpResponse& r) {
  std::string s = fmt::format("HTTP {}", r.status);
  try {
    auto j = nlohmann::json::parse(r.body);
    std::vector<std::string> parts;
    for (auto& e : j.at("errors")) {
      std::string code = e.value("code", "");
      std::string msg = e.value("message", "");
      parts.push_back(code.empty() ? msg : msg.empty() ? code : code + ": " + msg);
    }
    if (!parts.empty()) {
      s += " (";
      for (std::size_t i = 0; i < parts.size() && i < 3; ++i) s += (i ? "; " : "") + parts[i].substr(0, 200);
      s += ")";
    }
  } catch (const std::exception&) {
    std::string text = r.body.substr(0, 120);
    if (!text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= 0x20 && c < 0x7f; }))
      s += ": " + text;
  }
  return s;
}

}  // namespace

bool is_loopback_registry(std::string_view reg) {
  std::string host(reg);
  if (host.starts_with("[")) {
    host = host.substr(1, host.find(']') == std::string::npos ? std::string::npos : host.find(']') - 1);
  } else if (auto colon = host.rfind(':'); colon != std::string::npos) {
    host.resize(colon);
  }
  if (host == "localhost" || host == "::1") return true;
  if (host.starts_with("127.")) {
    return std::all_of(host.begin(), host.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)) || c == '.'; });
  }
  return false;
}

struct Registry::Impl {
  Reference ref;
  std::string registry;  // as the user named it, for messages
  std::string base_url;
  bool plain_http = false;
  RegistryOptions opts;

  std::mutex mu;  // guards everything below
  std::vector<std::unique_ptr<HttpClient>> idle;
  bool creds_loaded = false;
  std::optional<Credentials> creds;
  enum class Scheme { none, basic, bearer } scheme = Scheme::none;
  std::string token;

  std::string where() const { return fmt::format("registry {}", registry); }

  const std::optional<Credentials>& credentials() {
    std::lock_guard lk(mu);
    if (!creds_loaded) {
      creds_loaded = true;
      creds = opts.credentials ? opts.credentials : docker_config_credentials(registry, opts.docker_config_dir);
    }
    return creds;
  }

  std::unique_ptr<HttpClient> acquire() {
    std::lock_guard lk(mu);
    if (!idle.empty()) {
      auto c = std::move(idle.back());
      idle.pop_back();
      return c;
    }
    auto c = std::make_unique<HttpClient>();
    c->set_timeouts(opts.connect_timeout_s, opts.stall_timeout_s);
    return c;
  }
  void release(std::unique_ptr<HttpClient> c) {
    std::lock_guard lk(mu);
    idle.push_back(std::move(c));
  }

  void add_auth(HttpRequest& r) {
    const auto& c = credentials();
    std::lock_guard lk(mu);
    if (scheme == Scheme::basic && c) r.basic_auth = std::make_pair(c->username, c->password);
    if (scheme == Scheme::bearer && !token.empty()) r.headers.push_back("Authorization: Bearer " + token);
  }

  [[noreturn]] void auth_failed(const HttpResponse& r, std::string_view what, bool had_creds) {
    throw Error(fmt::format(
        "{}: authentication failed for {}: {}; {}", where(), what, describe_status(r),
        had_creds ? "the registry refused the username/password (check them in the Docker config, "
                    "~/.docker/config.json or $DOCKER_CONFIG, or the credentials given)"
                  : "it needs credentials and none were found (add them to ~/.docker/config.json with "
                    "`docker login`, or set DOCKER_CONFIG)"));
  }

  // Reads the 401's challenge and obtains what it asks for.
  // `sent_basic`: the refused request already carried the basic credentials.
  void authenticate(HttpClient& http, const HttpResponse& r401, std::string_view what, bool sent_basic) {
    auto values = r401.headers_named("www-authenticate");
    const auto& c = credentials();
    if (values.empty()) auth_failed(r401, what, c.has_value());
    std::vector<AuthChallenge> challenges;
    for (auto& v : values) {
      try {
        for (auto& ch : parse_www_authenticate(v)) challenges.push_back(std::move(ch));
      } catch (const Error& e) {
        throw Error(fmt::format("{}: {}", where(), e.what()));
      }
    }
    auto bearer = std::find_if(challenges.begin(), challenges.end(), [](auto& ch) { return ch.scheme == "bearer"; });
    if (bearer != challenges.end()) {
      std::string realm = bearer->params["realm"];
      bool realm_ok = realm.starts_with("https://") || (plain_http && realm.starts_with("http://"));
      if (!realm_ok)
        throw Error(fmt::format("{}: the token realm \"{}\" is not an https URL; refusing to send credentials there",
                                where(), realm.substr(0, 200)));
      std::string scope = bearer->params.contains("scope") ? bearer->params["scope"]
                                                            : "repository:" + ref.repository() + ":pull";
      std::string url = realm + (realm.find('?') == std::string::npos ? "?" : "&");
      if (bearer->params.contains("service")) url += "service=" + url_encode(bearer->params["service"]) + "&";
      url += "scope=" + url_encode(scope);
      HttpRequest tr;
      tr.url = url;
      tr.max_body = kMaxTokenResponse;
      tr.allow_plain_http_redirects = plain_http;
      if (c) tr.basic_auth = std::make_pair(c->username, c->password);
      HttpResponse resp = http.perform(tr);
      if (resp.status == 401 || resp.status == 403) auth_failed(resp, "a token from " + realm, c.has_value());
      if (resp.status >= 500 || resp.status == 429)
        throw RetryableStatus(fmt::format("{}: token server {}: {}", where(), realm, describe_status(resp)));
      if (resp.status != 200)
        throw Error(fmt::format("{}: token server {}: {}", where(), realm, describe_status(resp)));
      std::string tok;
      try {
        auto j = nlohmann::json::parse(resp.body);
        if (j.contains("token") && j["token"].is_string()) tok = j["token"].get<std::string>();
        if (tok.empty() && j.contains("access_token") && j["access_token"].is_string())
          tok = j["access_token"].get<std::string>();
      } catch (const std::exception&) {
      }
      if (tok.empty() || tok.size() > 64 * 1024 ||
          std::any_of(tok.begin(), tok.end(), [](char ch) { return ch <= 0x20 || ch >= 0x7f; }))
        throw Error(fmt::format("{}: token server {} returned no usable token", where(), realm));
      std::lock_guard lk(mu);
      scheme = Scheme::bearer;
      token = tok;
      return;
    }
    if (std::any_of(challenges.begin(), challenges.end(), [](auto& ch) { return ch.scheme == "basic"; })) {
      if (!c) auth_failed(r401, what, false);
      if (sent_basic) auth_failed(r401, what, true);
      std::lock_guard lk(mu);
      scheme = Scheme::basic;
      return;
    }
    throw Error(fmt::format("{}: {}: unsupported authentication scheme \"{}\"", where(), what, challenges[0].scheme));
  }

  // One request with auth: on 401 authenticate and resend once.
  HttpResponse send(HttpClient& http, const HttpRequest& req, std::string_view what) {
    for (int round = 0;; ++round) {
      HttpRequest r = req;
      add_auth(r);
      HttpResponse resp = http.perform(r);
      if (resp.status != 401) return resp;
      if (round == 1) auth_failed(resp, what, credentials().has_value());
      authenticate(http, resp, what, r.basic_auth.has_value());
    }
  }

  void check_retryable(const HttpResponse& r, std::string_view what) {
    if (r.status >= 500 || r.status == 429 || r.status == 408) {
      std::chrono::milliseconds after{};
      if (auto ra = r.header("retry-after")) {
        long s = std::atol(ra->c_str());
        if (s > 0) after = std::chrono::seconds(std::min(s, 30L));
      }
      throw RetryableStatus(fmt::format("{}: {}: {}", where(), what, describe_status(r)), after);
    }
  }

  template <class F>
  auto with_retries(std::string_view what, PullProgress* progress, const Digest* d,
                    const std::atomic<bool>* cancel, F&& fn) {
    static thread_local std::mt19937 rng(std::random_device{}());
    for (unsigned attempt = 1;; ++attempt) {
      std::string why;
      std::chrono::milliseconds after{};
      try {
        return fn();
      } catch (const HttpTransportError& e) {
        // A host that refuses or cannot be resolved gets one retry, not the full budget:
        // offline, the user should hear so at once.
        unsigned limit = e.unreachable() ? std::min(opts.max_attempts, 2u) : opts.max_attempts;
        if (!e.transient() || attempt >= limit)
          throw HttpTransportError(fmt::format("{}: {} failed{}: {}", where(), what,
                                               attempt > 1 ? fmt::format(" after {} attempts", attempt) : "",
                                               e.what()),
                                   e.transient(), e.unreachable());
        why = e.what();
      } catch (const RetryableStatus& e) {
        if (attempt >= opts.max_attempts)
          throw Error(fmt::format("{} (gave up after {} attempts)", e.what(), attempt));
        why = e.what();
        after = e.after_;
      }
      if (cancel && cancel->load()) throw Error(fmt::format("{}: {}: cancelled", where(), what));
      auto backoff = opts.backoff_base * (1u << std::min(attempt - 1, 5u));
      backoff = std::min<std::chrono::milliseconds>(backoff, std::chrono::seconds(8));
      backoff += std::chrono::milliseconds(std::uniform_int_distribution<long>(0, backoff.count() / 4 + 1)(rng));
      backoff = std::max(backoff, after);
      spdlog::debug("{}: {} failed ({}); retry {} in {} ms", where(), what, why, attempt, backoff.count());
      if (progress && d) progress->blob_status(*d, "retrying: " + why.substr(0, 100));
      std::this_thread::sleep_for(backoff);
    }
  }
};

Registry::Registry(const Reference& ref, RegistryOptions opts) : impl_(std::make_unique<Impl>()) {
  impl_->ref = ref;
  impl_->registry = ref.registry();
  std::string host = ref.endpoint_host();
  bool insecure = is_loopback_registry(host);
  for (auto& h : opts.insecure_registries) {
    std::string bare = host.substr(0, host.rfind(':') == std::string::npos || host.starts_with("[") ? host.size()
                                                                                                      : host.rfind(':'));
    if (h == host || h == ref.registry() || h == bare) insecure = true;
  }
  impl_->plain_http = insecure;
  impl_->opts = std::move(opts);
  if (impl_->opts.max_attempts == 0) impl_->opts.max_attempts = 1;
  base_url_ = (insecure ? "http://" : "https://") + host;
  impl_->base_url = base_url_;
}

Registry::~Registry() = default;

Registry::FetchedManifest Registry::get_manifest(const std::string& tag_or_digest, const Digest& expected) {
  Impl& m = *impl_;
  std::string what = fmt::format("manifest {}:{}", m.ref.repository(), tag_or_digest);
  if (!expected.empty()) what = fmt::format("manifest {}@{}", m.ref.repository(), expected.to_string());
  return m.with_retries(what, nullptr, nullptr, nullptr, [&] {
    auto http = m.acquire();
    HttpRequest req;
    req.url = fmt::format("{}/v2/{}/manifests/{}", base_url_, m.ref.repository(), tag_or_digest);
    req.headers.push_back(kManifestAccept);
    req.max_body = kMaxManifestBytes;
    req.allow_plain_http_redirects = m.plain_http;
    HttpResponse resp = m.send(*http, req, what);
    m.release(std::move(http));
    m.check_retryable(resp, what);
    if (resp.status == 404)
      throw Error(fmt::format("{}: {} not found: {} (check the name and tag)", m.where(), what, describe_status(resp)));
    if (resp.status == 403)
      throw Error(fmt::format("{}: access to {} denied: {}", m.where(), what, describe_status(resp)));
    if (resp.status != 200) throw Error(fmt::format("{}: {}: {}", m.where(), what, describe_status(resp)));
    FetchedManifest out;
    std::string ct = strip_params(resp.header("content-type").value_or(""));
    try {
      out.media_type = detect_media_type(resp.body, ct);
    } catch (const Error& e) {
      throw Error(fmt::format("{}: {}: {}", m.where(), what, e.what()));
    }
    if (!is_manifest_media_type(out.media_type) && !is_index_media_type(out.media_type))
      throw Error(fmt::format("{}: {} has unsupported media type \"{}\" (expected an OCI or Docker v2 manifest or "
                              "index)", m.where(), what, out.media_type.substr(0, 200)));
    out.digest = Digest::of(resp.body);
    if (!expected.empty() && out.digest != expected)
      throw Error(fmt::format("{}: {} content hashes to {}; refusing it", m.where(), what, out.digest.to_string()));
    if (auto hd = resp.header("docker-content-digest")) {
      auto claimed = Digest::try_parse(*hd);
      if (claimed && *claimed != out.digest)
        throw Error(fmt::format("{}: {}: the registry says its digest is {} but the content hashes to {}",
                                m.where(), what, claimed->to_string(), out.digest.to_string()));
    }
    out.body = std::move(resp.body);
    return out;
  });
}

std::uint64_t Registry::fetch_blob(Store& store, const Descriptor& d, std::string_view kind, PullProgress* progress,
                                   const std::atomic<bool>* cancel) {
  Impl& m = *impl_;
  std::string what = fmt::format("{} {}", kind, d.digest.to_string());
  if (d.size > kMaxBlobBytes)
    throw Error(fmt::format("{}: {} claims {} bytes, more than supermachine accepts", m.where(), what, d.size));
  auto ing = store.begin_ingest(d.digest, d.size);
  if (ing.complete()) {
    if (progress) {
      progress->blob_started(d.digest, kind, d.size);
      progress->blob_status(d.digest, "cached");
    }
    return 0;
  }
  if (progress) {
    progress->blob_started(d.digest, kind, d.size);
    progress->blob_progress(d.digest, ing.offset());
  }
  std::uint64_t transferred = 0;
  bool restarted_after_mismatch = false;
  try {
    m.with_retries(what, progress, &d.digest, cancel, [&] {
      while (true) {
        std::uint64_t start = ing.offset();
        if (start < d.size || d.size == 0) {
          HttpRequest req;
          req.url = fmt::format("{}/v2/{}/blobs/{}", base_url_, m.ref.repository(), d.digest.to_string());
          if (start > 0) req.headers.push_back(fmt::format("Range: bytes={}-", start));
          req.allow_plain_http_redirects = m.plain_http;
          req.cancelled = [cancel] { return cancel && cancel->load(); };
          bool first = true;
          req.sink = [&](const HttpResponse& head, std::span<const std::byte> data) {
            if (first) {
              first = false;
              if (start > 0 && head.status == 200) {
                ing.restart();  // the server ignored Range: take the whole body
              } else if (start > 0 && head.status == 206) {
                auto cr = head.header("content-range").value_or("");
                if (!cr.starts_with(fmt::format("bytes {}-", start)))
                  throw Error(fmt::format("{}: {}: asked for bytes from {} but got Content-Range \"{}\"", m.where(),
                                          what, start, cr.substr(0, 100)));
              }
            }
            ing.write(data);
            transferred += data.size();
            if (progress) progress->blob_progress(d.digest, ing.offset());
            return true;
          };
          auto http = m.acquire();
          HttpResponse resp = m.send(*http, req, what);
          m.release(std::move(http));
          if (resp.status == 416) {  // our partial is no prefix the server knows: start over
            ing.restart();
            throw RetryableStatus(fmt::format("{}: {}: {}", m.where(), what, describe_status(resp)));
          }
          m.check_retryable(resp, what);
          if (resp.status == 404)
            throw Error(fmt::format("{}: {} not found: {}", m.where(), what, describe_status(resp)));
          if (resp.status != 200 && resp.status != 206)
            throw Error(fmt::format("{}: {}: {}", m.where(), what, describe_status(resp)));
        }
        try {
          ing.commit();
          return;
        } catch (const Error& e) {
          // A resumed download can carry bad bytes from an earlier attempt: one fresh try.
          if (start > 0 && !restarted_after_mismatch) {
            restarted_after_mismatch = true;
            spdlog::debug("{}: {}: {}; downloading it again from the start", m.where(), what, e.what());
            ing.restart();
            continue;
          }
          throw Error(fmt::format("{}: {} failed verification: {}", m.where(), what, e.what()));
        }
      }
    });
  } catch (const HttpTransportError&) {
    if (progress) progress->blob_status(d.digest, "failed");
    throw;  // the partial stays: a later pull resumes it
  } catch (...) {
    // Another blob failed and cancelled this one: keep what arrived for the next pull.
    if (!(cancel && cancel->load())) ing.discard();
    if (progress) progress->blob_status(d.digest, "failed");
    throw;
  }
  if (progress) progress->blob_status(d.digest, "done");
  return transferred;
}

// ---- pull ----------------------------------------------------------------------------------------

PullResult pull(Store& store, const Reference& ref, const PullOptions& opts) {
  auto lease = store.lease();  // keeps prune away until the ref is written
  PullResult result{ref, {}, {}, {}, 0, false};
  Registry reg(ref, opts.registry);
  auto note = [&](const std::string& s) {
    if (opts.progress) opts.progress->note(s);
  };

  Registry::FetchedManifest top;
  try {
    top = ref.digest() ? reg.get_manifest(ref.digest()->to_string(), *ref.digest()) : reg.get_manifest(ref.tag());
  } catch (const HttpTransportError& e) {
    if (!e.unreachable()) throw;
    auto cached = store.resolve(ref);
    if (!cached)
      throw Error(fmt::format("{} is not in the local image store and the registry cannot be reached ({}); "
                              "connect to the network, or `supermachine load` it from a file",
                              ref.familiar(), e.what()));
    note(fmt::format("registry {} unreachable; using the stored copy of {}", ref.registry(), ref.familiar()));
    auto img = store.image(*cached, opts.platform);
    result.top = img.top;
    result.manifest_digest = img.manifest_digest;
    result.manifest = std::move(img.manifest);
    result.from_cache_offline = true;
    return result;
  }
  result.top = top.digest;
  note(fmt::format("{}: resolved to {}", ref.familiar(), top.digest.to_string()));

  Registry::FetchedManifest chosen = top;
  if (is_index_media_type(top.media_type)) {
    Descriptor want;
    try {
      want = Index::parse(top.body, top.media_type).select(opts.platform);
    } catch (const Error& e) {
      throw Error(fmt::format("registry {}: {}: {}", ref.registry(), ref.familiar(), e.what()));
    }
    chosen = reg.get_manifest(want.digest.to_string(), want.digest);
    if (!is_manifest_media_type(chosen.media_type))
      throw Error(fmt::format("registry {}: the {} entry of {} is a {}, not an image manifest", ref.registry(),
                              opts.platform.str(), ref.familiar(), chosen.media_type));
    if (want.size != chosen.body.size())
      throw Error(fmt::format("registry {}: manifest {} is {} bytes but the index says {}", ref.registry(),
                              want.digest.to_string(), chosen.body.size(), want.size));
  }
  try {
    result.manifest = Manifest::parse(chosen.body, chosen.media_type);
    for (auto& l : result.manifest.layers) (void)layer_compression(l.media_type);
  } catch (const Error& e) {
    throw Error(fmt::format("registry {}: {}: {}", ref.registry(), ref.familiar(), e.what()));
  }
  result.manifest_digest = chosen.digest;

  // Config and layers, a few at a time; the first failure cancels the rest.
  std::vector<std::pair<Descriptor, std::string>> blobs{{result.manifest.config, "config"}};
  for (auto& l : result.manifest.layers)
    if (std::none_of(blobs.begin(), blobs.end(), [&](auto& b) { return b.first.digest == l.digest; }))
      blobs.emplace_back(l, "layer");
  std::atomic<std::size_t> next{0};
  std::atomic<bool> cancel{false};
  std::atomic<std::uint64_t> bytes{0};
  std::mutex err_mu;
  std::exception_ptr first_error;
  auto worker = [&] {
    for (std::size_t i; !cancel.load() && (i = next.fetch_add(1)) < blobs.size();) {
      try {
        bytes += reg.fetch_blob(store, blobs[i].first, blobs[i].second, opts.progress, &cancel);
      } catch (...) {
        std::lock_guard lk(err_mu);
        if (!first_error) first_error = std::current_exception();
        cancel = true;
      }
    }
  };
  unsigned n = std::clamp<unsigned>(opts.registry.parallel_downloads, 1, 16);
  n = std::min<unsigned>(n, static_cast<unsigned>(blobs.size()));
  std::vector<std::thread> threads;
  for (unsigned i = 1; i < n; ++i) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  if (first_error) std::rethrow_exception(first_error);
  result.bytes_downloaded = bytes;

  // Manifests last: a stored manifest promises its blobs are here too.
  (void)store.put_blob_bytes(chosen.body, chosen.digest);
  if (top.digest != chosen.digest) (void)store.put_blob_bytes(top.body, top.digest);
  store.set_ref(ref, top.digest);
  return result;
}

}  // namespace sm::oci
