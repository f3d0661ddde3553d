#include "oci/http.h"

#include <curl/curl.h>

#include <algorithm>
#include <exception>
#include <mutex>

#include "supermachine_version.h"

namespace sm::oci {

namespace {

constexpr std::size_t kMaxHeaderBytes = 64 << 10;  // per response
constexpr std::size_t kMaxErrorBody = 64 << 10;    // error bodies are only for messages

std::string lower(std::string_view s) {
  std::string r(s);
  std::transform(r.begin(), r.end(), r.begin(), [](unsigned char c) { return std::tolower(c); });
  return r;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) throw Error("libcurl initialisation failed");
  });
}

struct Transfer {
  const HttpRequest* req;
  HttpResponse* resp;
  long hop_status = 0;
  std::size_t header_bytes = 0;
  bool header_overflow = false;
  bool body_overflow = false;
  bool sink_refused = false;
  std::exception_ptr sink_error;
};

std::size_t on_header(char* data, std::size_t size, std::size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::size_t len = size * n;
  std::string_view line(data, len);
  if (line.starts_with("HTTP/")) {  // a new response (redirect hop, 100-continue, ...)
    t->resp->headers.clear();
    t->resp->body.clear();  // a redirect's own body is not the answer
    t->header_bytes = 0;
    auto sp = line.find(' ');
    t->hop_status = sp == std::string_view::npos ? 0 : std::atol(std::string(line.substr(sp + 1, 3)).c_str());
  }
  t->header_bytes += len;
  if (t->header_bytes > kMaxHeaderBytes) {
    t->header_overflow = true;
    return 0;
  }
  auto colon = line.find(':');
  if (colon != std::string_view::npos && !line.starts_with("HTTP/"))
    t->resp->headers.emplace(lower(trim(line.substr(0, colon))), std::string(trim(line.substr(colon + 1))));
  return len;
}

std::size_t on_body(char* data, std::size_t size, std::size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::size_t len = size * n;
  bool ok_status = t->hop_status >= 200 && t->hop_status < 300;
  if (ok_status && t->req->sink) {
    try {
      t->resp->status = t->hop_status;
      if (!t->req->sink(*t->resp, std::as_bytes(std::span(data, len)))) {
        t->sink_refused = true;
        return 0;
      }
    } catch (...) {
      t->sink_error = std::current_exception();
      return 0;
    }
    return len;
  }
  std::size_t cap = ok_status ? t->req->max_body : kMaxErrorBody;
  if (t->resp->body.size() + len > cap) {
    if (!ok_status) {  // keep the start of an error body for the message, drop the rest
      t->resp->body.append(data, cap - t->resp->body.size());
      return len;
    }
    t->body_overflow = true;
    return 0;
  }
  t->resp->body.append(data, len);
  return len;
}

int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  return t->req->cancelled && t->req->cancelled() ? 1 : 0;
}

}  // namespace

std::optional<std::string> HttpResponse::header(const std::string& name) const {
  auto it = headers.find(name);
  if (it == headers.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> HttpResponse::headers_named(const std::string& name) const {
  std::vector<std::string> out;
  auto [b, e] = headers.equal_range(name);
  for (auto it = b; it != e; ++it) out.push_back(it->second);
  return out;
}

HttpClient::HttpClient() {
  global_init();
  curl_ = curl_easy_init();
  if (!curl_) throw Error("libcurl: cannot create a transfer handle");
}

HttpClient::~HttpClient() { curl_easy_cleanup(static_cast<CURL*>(curl_)); }

HttpResponse HttpClient::perform(const HttpRequest& req) {
  CURL* c = static_cast<CURL*>(curl_);
  curl_easy_reset(c);  // options only; the connection cache stays for keep-alive
  HttpResponse resp;
  Transfer t{&req, &resp};

  struct SList {
    curl_slist* l = nullptr;
    ~SList() { curl_slist_free_all(l); }
  } hdrs;
  for (auto& h : req.headers) hdrs.l = curl_slist_append(hdrs.l, h.c_str());

  curl_easy_setopt(c, CURLOPT_URL, req.url.c_str());
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, req.allow_plain_http_redirects ? "http,https" : "https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, req.follow_redirects ? 1L : 0L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "supermachine/" SUPERMACHINE_VERSION);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, connect_timeout_s_);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, stall_timeout_s_);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs.l);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, &t);
  if (req.basic_auth) {
    curl_easy_setopt(c, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
    curl_easy_setopt(c, CURLOPT_USERNAME, req.basic_auth->first.c_str());
    curl_easy_setopt(c, CURLOPT_PASSWORD, req.basic_auth->second.c_str());
  }
  if (req.method == "POST") {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, req.body.c_str());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(req.body.size()));
  } else if (req.method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else if (req.method != "GET") {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  }

  char errbuf[CURL_ERROR_SIZE] = {};
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  CURLcode rc = curl_easy_perform(c);
  if (t.sink_error) std::rethrow_exception(t.sink_error);
  if (t.header_overflow) throw Error(fmt::format("{}: response headers exceed {} bytes", req.url, kMaxHeaderBytes));
  if (t.body_overflow)
    throw Error(fmt::format("{}: response body exceeds the {} byte limit for this request", req.url, req.max_body));
  if (rc == CURLE_ABORTED_BY_CALLBACK) throw Error(fmt::format("{}: cancelled", req.url));
  if (t.sink_refused) throw Error(fmt::format("{}: the transfer was stopped by its receiver", req.url));
  if (rc != CURLE_OK) {
    std::string detail = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    bool unreachable = rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_COULDNT_RESOLVE_PROXY ||
                       rc == CURLE_COULDNT_CONNECT;
    bool transient = rc == CURLE_COULDNT_CONNECT || rc == CURLE_OPERATION_TIMEDOUT || rc == CURLE_PARTIAL_FILE ||
                     rc == CURLE_RECV_ERROR || rc == CURLE_SEND_ERROR || rc == CURLE_GOT_NOTHING ||
                     rc == CURLE_HTTP2 || rc == CURLE_HTTP2_STREAM || rc == CURLE_SSL_CONNECT_ERROR;
    throw HttpTransportError(fmt::format("{}: {}", req.url, detail), transient, unreachable);
  }
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp.status);
  char* eff = nullptr;
  if (curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &eff) == CURLE_OK && eff) resp.effective_url = eff;
  return resp;
}

// ---- WWW-Authenticate (RFC 7235 section 4.1, RFC 6750 section 3) ------------------------------

std::vector<AuthChallenge> parse_www_authenticate(std::string_view v) {
  if (v.size() > 8192) throw Error("WWW-Authenticate header is too long");
  std::vector<AuthChallenge> out;
  std::size_t i = 0;
  auto bad = [&](std::string_view why) {
    return Error(fmt::format("malformed WWW-Authenticate header \"{}\": {}", v.substr(0, 200), why));
  };
  auto skip_ws = [&] {
    while (i < v.size() && (v[i] == ' ' || v[i] == '\t')) ++i;
  };
  auto is_tchar = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
  };
  auto token = [&] {
    std::size_t s = i;
    while (i < v.size() && is_tchar(v[i])) ++i;
    return std::string(v.substr(s, i - s));
  };
  while (true) {
    skip_ws();
    while (i < v.size() && v[i] == ',') {
      ++i;
      skip_ws();
    }
    if (i >= v.size()) break;
    AuthChallenge ch;
    ch.scheme = lower(token());
    if (ch.scheme.empty()) throw bad("expected an authentication scheme");
    // Parameters until a token that is not followed by '=' (the next challenge's scheme).
    while (true) {
      skip_ws();
      std::size_t mark = i;
      std::string key = token();
      skip_ws();
      if (key.empty() || i >= v.size() || v[i] != '=') {
        i = mark;
        // token68 credentials (e.g. "Negotiate abc=="): skip to the next comma.
        if (!key.empty() && ch.params.empty()) {
          while (i < v.size() && v[i] != ',') ++i;
        }
        break;
      }
      // token68 credentials end in '=' padding ("Negotiate abc=="): skip them.
      std::size_t j = i;
      while (j < v.size() && v[j] == '=') ++j;
      while (j < v.size() && (v[j] == ' ' || v[j] == '\t')) ++j;
      if (ch.params.empty() && (j >= v.size() || v[j] == ',')) {
        i = j;
        break;
      }
      ++i;  // '='
      skip_ws();
      std::string val;
      if (i < v.size() && v[i] == '"') {
        ++i;
        bool closed = false;
        while (i < v.size()) {
          char c = v[i++];
          if (c == '\\' && i < v.size()) {
            val += v[i++];
          } else if (c == '"') {
            closed = true;
            break;
          } else {
            val += c;
          }
        }
        if (!closed) throw bad("unterminated quoted string");
      } else {
        val = token();
      }
      ch.params[lower(key)] = val;
      skip_ws();
      if (i < v.size() && v[i] == ',') {
        ++i;
        continue;
      }
      if (i < v.size()) throw bad(fmt::format("unexpected character '{}'", v[i]));
      break;
    }
    out.push_back(std::move(ch));
  }
  if (out.empty()) throw bad("no challenge");
  return out;
}

// ---- base64 (RFC 4648 section 4) -------------------------------------------------------------

std::string base64_encode(std::string_view in) {
  static constexpr char kAlpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    unsigned v = (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8) |
                 static_cast<unsigned char>(in[i + 2]);
    out += kAlpha[v >> 18];
    out += kAlpha[(v >> 12) & 63];
    out += kAlpha[(v >> 6) & 63];
    out += kAlpha[v & 63];
  }
  if (i < in.size()) {
    unsigned v = static_cast<unsigned char>(in[i]) << 16;
    if (i + 1 < in.size()) v |= static_cast<unsigned char>(in[i + 1]) << 8;
    out += kAlpha[v >> 18];
    out += kAlpha[(v >> 12) & 63];
    out += i + 1 < in.size() ? kAlpha[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string base64_decode(std::string_view in) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  while (!in.empty() && in.back() == '=') in.remove_suffix(1);
  if (in.size() % 4 == 1) throw Error("invalid base64: truncated");
  std::string out;
  unsigned acc = 0;
  int bits = 0;
  for (char c : in) {
    int v = val(c);
    if (v < 0) throw Error("invalid base64: unexpected character");
    acc = (acc << 6) | static_cast<unsigned>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return out;
}

std::string url_encode(std::string_view in) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : in) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace sm::oci
