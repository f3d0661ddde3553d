// Rules -> decisions (see policy.h).
#include "net/policy.h"

#include <algorithm>

#include "common/error.h"

namespace sm::net {

std::optional<Policy::Cidr> Policy::parse_cidr(std::string_view text) {
  const size_t slash = text.find('/');
  auto addr = IpAddr::parse(text.substr(0, slash));
  if (!addr) return std::nullopt;
  Cidr c{*addr, static_cast<unsigned>(addr->size() * 8)};
  if (slash != std::string_view::npos) {
    const std::string_view len = text.substr(slash + 1);
    if (len.empty() || len.size() > 3) return std::nullopt;
    unsigned bits = 0;
    for (char ch : len) {
      if (ch < '0' || ch > '9') return std::nullopt;
      bits = bits * 10 + static_cast<unsigned>(ch - '0');
    }
    if (bits > c.bits) return std::nullopt;
    c.bits = bits;
  }
  // An IPv4-mapped prefix (::ffff:10.0.0.0/104) is the IPv4 prefix it carries (10.0.0.0/8):
  // destinations are judged unmapped, so as IPv6 it would never match.
  if (c.net.v6 && c.bits >= 96 && c.net.unmapped().v6 == false) {
    c.net = c.net.unmapped();
    c.bits -= 96;
  }
  // Clear the host bits: 10.1.2.3/8 is 10.0.0.0/8.
  for (size_t i = 0; i < c.net.size(); ++i) {
    const size_t first = i * 8;
    if (first >= c.bits) {
      c.net.b[i] = 0;
    } else if (c.bits - first < 8) {
      c.net.b[i] &= static_cast<uint8_t>(0xff << (8 - (c.bits - first)));
    }
  }
  return c;
}

std::optional<std::string> Policy::parse_domain(std::string_view text) {
  if (text.starts_with("*.")) text.remove_prefix(2);
  if (text.ends_with('.')) text.remove_suffix(1);
  if (text.empty() || text.size() > 253) return std::nullopt;
  std::string name;
  name.reserve(text.size());
  size_t label_len = 0;
  bool label_all_digits = true;
  for (char c : text) {
    if (c == '.') {
      if (label_len == 0) return std::nullopt;
      label_len = 0;
      label_all_digits = true;
      name.push_back('.');
      continue;
    }
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    const bool digit = c >= '0' && c <= '9';
    if (!digit && !(c >= 'a' && c <= 'z') && c != '-' && c != '_') return std::nullopt;
    label_all_digits = label_all_digits && digit;
    if (++label_len > 63) return std::nullopt;
    name.push_back(c);
  }
  // An all-numeric last label is no domain (RFC 3696 2): "10.0.0" is a mistyped address.
  if (label_len == 0 || label_all_digits) return std::nullopt;
  return name;
}

Policy::Policy(const EgressPolicy& policy, Clock clock)
    : default_allow_(policy.default_allow), clock_(std::move(clock)) {
  for (const Rule& r : policy.rules) {
    if (auto c = parse_cidr(r.target)) {
      cidrs_.push_back({*c, r.allow});
    } else if (r.target.find('/') == std::string::npos && parse_domain(r.target)) {
      domains_.push_back({*parse_domain(r.target), r.allow});
    } else {
      throw Error(fmt::format("--{} {}: not a CIDR or domain name", r.allow ? "allow" : "deny",
                              r.target));
    }
  }
}

std::chrono::steady_clock::time_point Policy::now() const {
  return clock_ ? clock_() : std::chrono::steady_clock::now();
}

bool Policy::allow_ip(const IpAddr& ip_in) const {
  const IpAddr ip = ip_in.unmapped();
  const CidrRule* best = nullptr;
  for (const auto& r : cidrs_) {
    if (!ip.in_prefix(r.cidr.net, r.cidr.bits)) continue;
    if (!best || r.cidr.bits > best->cidr.bits || (r.cidr.bits == best->cidr.bits && !r.allow))
      best = &r;
  }
  if (best) return best->allow;
  if (auto it = learned_.find(ip); it != learned_.end() && now() < it->second) return true;
  return default_allow_;
}

bool Policy::allow_name(std::string_view name) const {
  if (name.ends_with('.')) name.remove_suffix(1);
  const DomainRule* best = nullptr;
  for (const auto& r : domains_) {
    const bool match = name.size() == r.name.size()
                           ? name == r.name
                           : name.size() > r.name.size() && name.ends_with(r.name) &&
                                 name[name.size() - r.name.size() - 1] == '.';
    if (!match) continue;
    if (!best || r.name.size() > best->name.size() ||
        (r.name.size() == best->name.size() && !r.allow))
      best = &r;
  }
  return best ? best->allow : default_allow_;
}

void Policy::learn(std::string_view name, const IpAddr& addr_in, uint32_t ttl_s) {
  // Under default allow a learned address changes no decision (a CIDR rule wins either way).
  if (default_allow_ || !allow_name(name)) return;
  const IpAddr addr = addr_in.unmapped();
  const auto t = now();
  const auto ttl = std::clamp(std::chrono::seconds(ttl_s), kMinTtl, kMaxTtl);
  const auto expiry = t + ttl;
  if (auto it = learned_.find(addr); it != learned_.end()) {
    it->second = std::max(it->second, expiry);
    return;
  }
  if (learned_.size() >= kMaxLearned) {
    // Forget the expired, else the eighth closest to expiry: amortized, so a guest flooding
    // answers costs O(log n) per address, not a scan each.
    std::erase_if(learned_, [&](const auto& kv) { return kv.second <= t; });
    if (learned_.size() >= kMaxLearned) {
      std::vector<std::chrono::steady_clock::time_point> expiries;
      expiries.reserve(learned_.size());
      for (const auto& kv : learned_) expiries.push_back(kv.second);
      const auto cut = expiries.begin() + static_cast<long>(kMaxLearned / 8);
      std::nth_element(expiries.begin(), cut, expiries.end());
      const auto cutoff = *cut;
      std::erase_if(learned_, [&](const auto& kv) { return kv.second <= cutoff; });
    }
  }
  learned_.emplace(addr, expiry);
}

}  // namespace sm::net
