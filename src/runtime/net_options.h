// The CLI's network flags, parsed as Docker spells them (docs/cli.md): -p/--publish, --network,
// --add-host, --egress, and `port`'s output lines. Pure and host-testable.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "net/config.h"

namespace sm::runtime {

// -p [HOST_IP:][HOST_PORT:]GUEST_PORT[/tcp|/udp]: "80", "8080:80", "127.0.0.1:8080:80",
// "127.0.0.1::80" (a free host port), "[::1]:8080:80", "53/udp". Throws sm::Error saying what is
// wrong and showing the form.
[[nodiscard]] net::PortMapping parse_publish(std::string_view s);
// --add-host NAME:IP (IP may be IPv6; "host-gateway" is the gateway address of the plan, which
// reaches the host's loopback when --allow-host-loopback is given).
[[nodiscard]] std::pair<std::string, std::string> parse_add_host(std::string_view s, const net::AddressPlan& plan);
// --network none|user|tap:NAME ("bridge" and "default" are user, as Docker's default network).
void parse_network_mode(std::string_view s, net::NetworkConfig& out);
// --egress allow|deny; returns default_allow.
[[nodiscard]] bool parse_egress(std::string_view s);
// An IP address literal (IPv4 or IPv6)?
[[nodiscard]] bool is_ip_literal(std::string_view s);
// `port`'s line for a mapping, as Docker prints it: "80/tcp -> 0.0.0.0:18080".
[[nodiscard]] std::string format_port(const net::PortMapping& m);

}  // namespace sm::runtime
