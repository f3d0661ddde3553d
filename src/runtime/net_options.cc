#include "runtime/net_options.h"

#include <arpa/inet.h>

#include <cctype>
#include <charconv>

#include <fmt/format.h>

#include "common/error.h"

namespace sm::runtime {
namespace {

std::optional<uint16_t> parse_port_number(std::string_view s) {
  unsigned v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v == 0 || v > 65535) return std::nullopt;
  return static_cast<uint16_t>(v);
}

}  // namespace

bool is_ip_literal(std::string_view s) {
  std::string z(s);
  in_addr a4{};
  in6_addr a6{};
  return ::inet_pton(AF_INET, z.c_str(), &a4) == 1 || ::inet_pton(AF_INET6, z.c_str(), &a6) == 1;
}

net::PortMapping parse_publish(std::string_view s) {
  auto bad = [&](const std::string& why) {
    return Error(fmt::format("bad --publish '{}': {}; use [HOST_IP:][HOST_PORT:]GUEST_PORT[/tcp|/udp], e.g. "
                             "8080:80 or 127.0.0.1:5353:53/udp",
                             s, why));
  };
  net::PortMapping m;
  std::string_view rest = s;
  if (auto slash = rest.rfind('/'); slash != std::string_view::npos) {
    std::string_view proto = rest.substr(slash + 1);
    if (proto == "tcp") m.protocol = net::PortMapping::Protocol::tcp;
    else if (proto == "udp") m.protocol = net::PortMapping::Protocol::udp;
    else throw bad(fmt::format("unknown protocol '{}' (tcp or udp)", proto));
    rest = rest.substr(0, slash);
  }
  // A bracketed IPv6 host address first: "[::1]:8080:80".
  std::string host_ip;
  if (rest.starts_with("[")) {
    auto close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':')
      throw bad("an IPv6 host address is written [ADDR]:HOST_PORT:GUEST_PORT");
    host_ip = std::string(rest.substr(1, close - 1));
    rest = rest.substr(close + 2);
    if (rest.find(':') == std::string_view::npos) throw bad("a host address needs HOST_PORT:GUEST_PORT after it");
  }
  std::vector<std::string_view> parts;
  for (size_t start = 0;;) {
    size_t colon = rest.find(':', start);
    parts.push_back(rest.substr(start, colon - start));
    if (colon == std::string_view::npos) break;
    start = colon + 1;
  }
  if (parts.size() > 3 || (!host_ip.empty() && parts.size() != 2)) throw bad("too many ':'");
  if (parts.size() == 3) {
    host_ip = std::string(parts[0]);
    parts.erase(parts.begin());
  }
  auto guest = parse_port_number(parts.back());
  if (!guest) throw bad(fmt::format("'{}' is not a port (1-65535)", parts.back()));
  m.guest_port = *guest;
  if (parts.size() == 2 && !parts[0].empty()) {
    auto host = parse_port_number(parts[0]);
    if (!host) throw bad(fmt::format("'{}' is not a port (1-65535)", parts[0]));
    m.host_port = *host;
  }
  if (!host_ip.empty()) {
    if (!is_ip_literal(host_ip)) throw bad(fmt::format("'{}' is not an IP address", host_ip));
    m.host_ip = host_ip;
  }
  return m;
}

std::pair<std::string, std::string> parse_add_host(std::string_view s, const net::AddressPlan& plan) {
  auto colon = s.find(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == s.size())
    throw Error(fmt::format("bad --add-host '{}': use NAME:IP (e.g. db:10.0.0.5)", s));
  std::string name(s.substr(0, colon));
  std::string ip(s.substr(colon + 1));
  if (ip == "host-gateway") ip = plan.gateway_ipv4;
  if (ip.starts_with("[") && ip.ends_with("]")) ip = ip.substr(1, ip.size() - 2);
  if (!is_ip_literal(ip)) throw Error(fmt::format("bad --add-host '{}': '{}' is not an IP address", s, ip));
  for (char c : name) {
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
    if (!ok) throw Error(fmt::format("bad --add-host '{}': '{}' is not a host name", s, name));
  }
  if (name.size() > 253) throw Error(fmt::format("bad --add-host '{}': the name is too long", s));
  return {name, ip};
}

void parse_network_mode(std::string_view s, net::NetworkConfig& out) {
  if (s == "none") out.mode = net::Mode::none;
  else if (s == "user" || s == "bridge" || s == "default") out.mode = net::Mode::user;
  else if (s.starts_with("tap:") && s.size() > 4 && s.size() - 4 < 16) {
    out.mode = net::Mode::tap;
    out.tap_name = std::string(s.substr(4));
  } else
    throw Error(fmt::format("bad --network '{}': use none, user or tap:NAME (an existing TAP interface)", s));
}

bool parse_egress(std::string_view s) {
  if (s == "allow") return true;
  if (s == "deny") return false;
  throw Error(fmt::format("bad --egress '{}': use allow or deny", s));
}

std::string format_port(const net::PortMapping& m) {
  bool v6 = m.host_ip.find(':') != std::string::npos;
  return fmt::format("{}/{} -> {}{}{}:{}", m.guest_port, m.protocol == net::PortMapping::Protocol::udp ? "udp" : "tcp",
                     v6 ? "[" : "", m.host_ip, v6 ? "]" : "", m.host_port);
}

}  // namespace sm::runtime
