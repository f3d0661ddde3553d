// Content digests (OCI image spec, descriptor.md "Digests"): "algorithm:encoded". supermachine
// stores and verifies sha256 only, the algorithm every registry uses; anything else is refused
// with a clear error rather than stored unverified.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace sm::oci {

class Digest {
 public:
  Digest() = default;  // empty: no digest

  // Parses "sha256:<64 lowercase hex>"; throws sm::Error naming the input when malformed or
  // when the algorithm is not sha256.
  [[nodiscard]] static Digest parse(std::string_view s);
  // Same rules, but returns nullopt instead of throwing.
  [[nodiscard]] static std::optional<Digest> try_parse(std::string_view s);
  // The sha256 digest of a whole buffer.
  [[nodiscard]] static Digest of(std::span<const std::byte> data);
  [[nodiscard]] static Digest of(std::string_view data);

  [[nodiscard]] bool empty() const { return hex_.empty(); }
  [[nodiscard]] const std::string& algorithm() const { return algorithm_; }  // "sha256"
  [[nodiscard]] const std::string& hex() const { return hex_; }              // 64 lowercase hex
  [[nodiscard]] std::string to_string() const;  // "sha256:<hex>", "" when empty
  [[nodiscard]] std::string str() const { return to_string(); }
  // "sha256-<hex>": usable as one file name component.
  [[nodiscard]] std::string file_name() const;

  auto operator<=>(const Digest&) const = default;
  bool operator==(const Digest&) const = default;

 private:
  std::string algorithm_;
  std::string hex_;
};

// Streaming SHA-256 (OpenSSL EVP). update() any number of times, then finish() once.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(const void* data, std::size_t len);
  void update(std::span<const std::byte> data) { update(data.data(), data.size()); }
  void update(std::string_view data) { update(data.data(), data.size()); }
  [[nodiscard]] Digest finish();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

}  // namespace sm::oci

template <>
struct std::hash<sm::oci::Digest> {
  std::size_t operator()(const sm::oci::Digest& d) const noexcept {
    return std::hash<std::string>{}(d.hex());
  }
};
