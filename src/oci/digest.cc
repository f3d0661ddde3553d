#include "oci/digest.h"

#include <openssl/evp.h>

#include "common/error.h"

namespace sm::oci {

namespace {
bool is_lower_hex(std::string_view s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// Why try_parse failed, or "" when it did not.
std::string digest_problem(std::string_view s) {
  auto colon = s.find(':');
  if (colon == std::string_view::npos) return "expected \"sha256:<64 hex digits>\"";
  auto algo = s.substr(0, colon);
  auto hex = s.substr(colon + 1);
  if (algo != "sha256")
    return fmt::format("unsupported digest algorithm \"{}\" (only sha256 is supported)", algo);
  if (hex.size() != 64) return fmt::format("sha256 needs 64 hex digits, got {}", hex.size());
  if (!is_lower_hex(hex)) return "the hex part must be lowercase hex digits";
  return {};
}
}  // namespace

std::optional<Digest> Digest::try_parse(std::string_view s) {
  if (!digest_problem(s).empty()) return std::nullopt;
  Digest d;
  d.algorithm_ = "sha256";
  d.hex_ = std::string(s.substr(7));
  return d;
}

Digest Digest::parse(std::string_view s) {
  auto problem = digest_problem(s);
  if (!problem.empty()) {
    // Untrusted input can be long; show only its start.
    std::string shown(s.substr(0, 100));
    throw Error(fmt::format("invalid digest \"{}{}\": {}", shown, s.size() > 100 ? "..." : "", problem));
  }
  return *try_parse(s);
}

Digest Digest::of(std::span<const std::byte> data) {
  Sha256 h;
  h.update(data);
  return h.finish();
}

Digest Digest::of(std::string_view data) {
  Sha256 h;
  h.update(data);
  return h.finish();
}

std::string Digest::to_string() const { return empty() ? std::string() : algorithm_ + ":" + hex_; }
std::string Digest::file_name() const { return empty() ? std::string() : algorithm_ + "-" + hex_; }

struct Sha256::Ctx {
  EVP_MD_CTX* md = nullptr;
  ~Ctx() { EVP_MD_CTX_free(md); }
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  if (!ctx_->md || EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) != 1)
    throw Error("OpenSSL: cannot initialise SHA-256");
}
Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(const void* data, std::size_t len) {
  if (!ctx_) throw Error("Sha256::update after finish");
  if (len && EVP_DigestUpdate(ctx_->md, data, len) != 1) throw Error("OpenSSL: SHA-256 update failed");
}

Digest Sha256::finish() {
  if (!ctx_) throw Error("Sha256::finish called twice");
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_DigestFinal_ex(ctx_->md, out, &n) != 1) throw Error("OpenSSL: SHA-256 final failed");
  ctx_.reset();
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(n * 2);
  for (unsigned i = 0; i < n; ++i) {
    hex += kHex[out[i] >> 4];
    hex += kHex[out[i] & 15];
  }
  return Digest::parse("sha256:" + hex);
}

}  // namespace sm::oci
