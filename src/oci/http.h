// A small libcurl wrapper for the registry client: one easy handle per HttpClient (reused for
// keep-alive; one thread at a time), response headers collected per hop, the body either
// buffered under a cap or streamed to a sink only when the final response is a 2xx.
// Every remote byte here is untrusted: header and body sizes are capped.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"

namespace sm::oci {

// A transfer that failed below HTTP (DNS, connect, reset, timeout, truncated body).
class HttpTransportError : public Error {
 public:
  HttpTransportError(const std::string& what, bool transient, bool unreachable)
      : Error(what), transient_(transient), unreachable_(unreachable) {}
  // Worth retrying: resets, timeouts, truncated bodies.
  [[nodiscard]] bool transient() const { return transient_; }
  // The host could not be reached at all (no network, DNS failure, refused).
  [[nodiscard]] bool unreachable() const { return unreachable_; }

 private:
  bool transient_;
  bool unreachable_;
};

struct HttpRequest {
  std::string method = "GET";
  std::string url;
  std::vector<std::string> headers;  // "Name: value"
  std::optional<std::pair<std::string, std::string>> basic_auth;  // user, password
  std::string body;                  // for POST
  // Streams a 2xx body; `head` has the final status and headers. Returning false aborts the
  // transfer. Without a sink the body is buffered in HttpResponse::body up to max_body bytes
  // (then the transfer fails).
  std::function<bool(const struct HttpResponse& head, std::span<const std::byte>)> sink;
  std::size_t max_body = 1u << 20;
  bool follow_redirects = true;
  bool allow_plain_http_redirects = false;  // https -> http downgrades refused unless set
  // Polled during the transfer; returning true aborts it (another layer failed).
  std::function<bool()> cancelled;
};

struct HttpResponse {
  long status = 0;
  std::multimap<std::string, std::string> headers;  // last hop only; names lowercased
  std::string body;                                 // buffered body, or the error body (capped)
  std::string effective_url;

  [[nodiscard]] std::optional<std::string> header(const std::string& lower_name) const;
  [[nodiscard]] std::vector<std::string> headers_named(const std::string& lower_name) const;
};

class HttpClient {
 public:
  HttpClient();
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Performs the request. Throws HttpTransportError when no complete response arrived, or
  // sm::Error when the sink threw or the body exceeded max_body; any HTTP status is returned.
  HttpResponse perform(const HttpRequest& req);

  // Seconds to wait for a connection, and how long a transfer may stall before it fails.
  void set_timeouts(long connect_s, long stall_s) {
    connect_timeout_s_ = connect_s;
    stall_timeout_s_ = stall_s;
  }

 private:
  void* curl_;  // CURL*
  long connect_timeout_s_ = 30;
  long stall_timeout_s_ = 60;
};

// RFC 7235 challenges: `Bearer realm="https://auth", service="registry", scope="x"`.
struct AuthChallenge {
  std::string scheme;  // lowercased: "bearer", "basic"
  std::map<std::string, std::string> params;  // keys lowercased
};
// Parses one WWW-Authenticate header value; throws sm::Error when it is malformed.
[[nodiscard]] std::vector<AuthChallenge> parse_www_authenticate(std::string_view value);

// Standard base64 (padding optional); throws sm::Error on invalid input.
[[nodiscard]] std::string base64_decode(std::string_view in);
[[nodiscard]] std::string base64_encode(std::string_view in);

// Percent-encodes a query parameter value (RFC 3986 unreserved characters kept).
[[nodiscard]] std::string url_encode(std::string_view in);

}  // namespace sm::oci
