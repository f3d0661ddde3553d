#include "network.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_addr.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <system_error>

#include "common/unique_fd.h"
#include "log.h"

namespace sm::agent {

namespace fs = std::filesystem;

namespace {

// A failed step, as the host sees it: "NETWORK: add 10.0.2.15/24 to eth0: File exists (errno 17)".
ErrorInfo step_failed(const std::string& step, int err) {
  return ErrorInfo{ErrorCode::kNetworkFailed,
                   "NETWORK: " + step + ": " + std::strerror(err) + " (errno " + std::to_string(err) + ")"};
}

std::string lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

// The interface whose /sys/class/net/NAME/address is `mac` (either case), or empty.
std::string interface_with_mac(const std::string& mac) {
  std::error_code ec;
  const std::string want = lower(mac);
  for (const auto& e : fs::directory_iterator("/sys/class/net", ec)) {
    std::ifstream f(e.path() / "address");
    std::string addr;
    if (f && std::getline(f, addr) && lower(addr) == want) return e.path().filename().string();
  }
  return {};
}

// /proc/sys/net/ipv6/conf/IF/KEY = value; returns 0 or an errno.
int write_sysctl(const std::string& path, const char* value) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_TRUNC));
  if (!fd) return errno;
  size_t n = std::strlen(value);
  ssize_t w = ::write(fd.get(), value, n);
  if (w < 0) return errno;
  return static_cast<size_t>(w) == n ? 0 : EIO;
}

int set_mtu(const std::string& name, unsigned mtu) {
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) return errno;
  struct ifreq ifr{};
  std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  ifr.ifr_mtu = static_cast<int>(mtu);
  return ::ioctl(s.get(), SIOCSIFMTU, &ifr) == 0 ? 0 : errno;
}

// One rtnetlink conversation: requests with NLM_F_ACK, each answered by an NLMSG_ERROR whose
// error is 0 or -errno (rtnetlink(7), netlink(7)).
class Rtnl {
 public:
  int open() {
    fd_ = UniqueFd(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
    if (!fd_) return errno;
    sockaddr_nl sa{};
    sa.nl_family = AF_NETLINK;
    if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) return errno;
    // The kernel answers at once; the timeout only keeps a broken kernel from hanging PID 1.
    timeval tv{2, 0};
    ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return 0;
  }

  // A message under construction: header, fixed part, attributes, in one aligned buffer.
  class Msg {
   public:
    Msg(uint16_t type, uint16_t flags, const void* body, size_t body_len) {
      auto* h = hdr();
      h->nlmsg_type = type;
      h->nlmsg_flags = static_cast<uint16_t>(NLM_F_REQUEST | NLM_F_ACK | flags);
      h->nlmsg_len = static_cast<uint32_t>(NLMSG_LENGTH(body_len));
      std::memcpy(NLMSG_DATA(h), body, body_len);
    }
    void attr(uint16_t type, const void* data, size_t len) {
      auto* h = hdr();
      size_t off = NLMSG_ALIGN(h->nlmsg_len);
      size_t total = RTA_LENGTH(len);
      if (off + RTA_ALIGN(total) > sizeof buf_) throw Error("netlink message too large");  // our own bug
      auto* rta = reinterpret_cast<rtattr*>(buf_ + off);
      rta->rta_type = type;
      rta->rta_len = static_cast<uint16_t>(total);
      std::memcpy(RTA_DATA(rta), data, len);
      h->nlmsg_len = static_cast<uint32_t>(off + RTA_ALIGN(total));
    }
    nlmsghdr* hdr() { return reinterpret_cast<nlmsghdr*>(buf_); }

   private:
    alignas(nlmsghdr) char buf_[256] = {};
  };

  // Sends `m` and waits for its ACK; returns 0 or an errno.
  int request(Msg& m) {
    nlmsghdr* h = m.hdr();
    h->nlmsg_seq = ++seq_;
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(fd_.get(), h, h->nlmsg_len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0)
      return errno;
    alignas(nlmsghdr) char buf[8192];
    for (;;) {
      ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno;  // EAGAIN: the receive timeout passed
      }
      auto len = static_cast<unsigned>(n);
      for (auto* r = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(r, len); r = NLMSG_NEXT(r, len)) {
        if (r->nlmsg_seq != seq_ || r->nlmsg_type != NLMSG_ERROR) continue;  // not our answer
        if (r->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr))) return EPROTO;
        return -static_cast<const nlmsgerr*>(NLMSG_DATA(r))->error;
      }
    }
  }

 private:
  UniqueFd fd_;
  uint32_t seq_ = 0;
};

struct Addr {
  int family = AF_UNSPEC;
  unsigned char bytes[16] = {};
  [[nodiscard]] size_t size() const { return family == AF_INET ? 4 : 16; }
};

Addr parse_addr(const std::string& text) {
  Addr a;
  // Validated by decode<NetworkRequest>; a failure here leaves family AF_UNSPEC (EINVAL below).
  if (::inet_pton(AF_INET, text.c_str(), a.bytes) == 1) a.family = AF_INET;
  else if (::inet_pton(AF_INET6, text.c_str(), a.bytes) == 1) a.family = AF_INET6;
  return a;
}

// RTM_NEWADDR, replacing what is there (so a repeat only refreshes it). IPv6 addresses get
// IFA_F_NODAD: usable at once, no duplicate address detection on a link with one guest.
int add_address(Rtnl& nl, int ifindex, const Addr& a, unsigned prefix) {
  if (a.family == AF_UNSPEC) return EINVAL;
  ifaddrmsg ifa{};
  ifa.ifa_family = static_cast<uint8_t>(a.family);
  ifa.ifa_prefixlen = static_cast<uint8_t>(prefix);
  ifa.ifa_scope = RT_SCOPE_UNIVERSE;
  ifa.ifa_index = static_cast<uint32_t>(ifindex);
  uint32_t flags = 0;
  if (a.family == AF_INET6) flags = IFA_F_NODAD | IFA_F_PERMANENT;
  ifa.ifa_flags = static_cast<uint8_t>(flags);
  Rtnl::Msg m(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &ifa, sizeof ifa);
  m.attr(IFA_LOCAL, a.bytes, a.size());
  m.attr(IFA_ADDRESS, a.bytes, a.size());
  if (flags) m.attr(IFA_FLAGS, &flags, sizeof flags);
  int err = nl.request(m);
  return err == EEXIST ? 0 : err;
}

// The default route via `gw` on the interface, replacing any other default route of the family.
int add_default_route(Rtnl& nl, int ifindex, const Addr& gw) {
  if (gw.family == AF_UNSPEC) return EINVAL;
  rtmsg rt{};
  rt.rtm_family = static_cast<uint8_t>(gw.family);
  rt.rtm_dst_len = 0;
  rt.rtm_table = RT_TABLE_MAIN;
  rt.rtm_protocol = RTPROT_BOOT;
  rt.rtm_scope = RT_SCOPE_UNIVERSE;
  rt.rtm_type = RTN_UNICAST;
  Rtnl::Msg m(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &rt, sizeof rt);
  m.attr(RTA_GATEWAY, gw.bytes, gw.size());
  auto oif = static_cast<uint32_t>(ifindex);
  m.attr(RTA_OIF, &oif, sizeof oif);
  int err = nl.request(m);
  return err == EEXIST ? 0 : err;
}

std::optional<ErrorInfo> configure_interface(const NetworkRequest::Interface& in) {
  std::string name = interface_with_mac(in.mac);
  if (name.empty())
    return ErrorInfo{ErrorCode::kNetworkFailed,
                     "NETWORK: no network interface has MAC address " + in.mac +
                         " (is the VM's virtio-net device there, and the kernel's virtio_net driver?)"};
  if (name.size() >= IFNAMSIZ) return step_failed("interface name " + name, ENAMETOOLONG);
  unsigned idx = ::if_nametoindex(name.c_str());
  if (idx == 0) return step_failed("find the index of " + name, errno);
  auto ifindex = static_cast<int>(idx);

  // Before the link comes up and before any address: no DAD (the link-local address and ours
  // are usable at once) and no router solicitations (slirp's RAs would add a second route).
  const std::string conf = "/proc/sys/net/ipv6/conf/" + name + "/";
  for (const char* key : {"accept_dad", "accept_ra"}) {
    int err = write_sysctl(conf + key, "0");
    // A kernel without IPv6 has no such file: only an error when IPv6 is asked for.
    if (err != 0 && !in.ipv6.empty()) return step_failed("set " + conf + key + " = 0", err);
  }
  if (in.mtu != 0)
    if (int err = set_mtu(name, in.mtu)) return step_failed("set the MTU of " + name + " to " + std::to_string(in.mtu), err);
  if (int err = interface_up(name)) return step_failed("bring " + name + " up", err);

  Rtnl nl;
  if (int err = nl.open()) return step_failed("open a NETLINK_ROUTE socket", err);
  const std::string v4 = in.ipv4 + "/" + std::to_string(in.ipv4_prefix);
  if (int err = add_address(nl, ifindex, parse_addr(in.ipv4), in.ipv4_prefix))
    return step_failed("add " + v4 + " to " + name, err);
  if (!in.gateway4.empty())
    if (int err = add_default_route(nl, ifindex, parse_addr(in.gateway4)))
      return step_failed("add the default route via " + in.gateway4 + " on " + name, err);
  if (!in.ipv6.empty()) {
    const std::string v6 = in.ipv6 + "/" + std::to_string(in.ipv6_prefix);
    if (int err = add_address(nl, ifindex, parse_addr(in.ipv6), in.ipv6_prefix))
      return step_failed("add " + v6 + " to " + name, err);
    if (!in.gateway6.empty())
      if (int err = add_default_route(nl, ifindex, parse_addr(in.gateway6)))
        return step_failed("add the default route via " + in.gateway6 + " on " + name, err);
  }
  SM_LOG_DEBUG("network: %s (%s) up, mtu %u, %s%s%s", name.c_str(), in.mac.c_str(), in.mtu, v4.c_str(),
               in.ipv6.empty() ? "" : ", ", in.ipv6.c_str());
  return std::nullopt;
}

}  // namespace

int interface_up(const std::string& name) {
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) return errno;
  struct ifreq ifr{};
  std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  if (::ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) return errno;
  if ((ifr.ifr_flags & IFF_UP) != 0) return 0;
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
  return ::ioctl(s.get(), SIOCSIFFLAGS, &ifr) == 0 ? 0 : errno;
}

std::string resolv_conf_contents(const NetworkRequest& req) {
  std::string out = "# Written by sm-agent from the host's network configuration.\n";
  for (const auto& n : req.nameservers) out += "nameserver " + n + "\n";
  auto line = [&](const char* key, const std::vector<std::string>& words) {
    if (words.empty()) return;
    out += key;
    for (const auto& w : words) out += " " + w;
    out += "\n";
  };
  line("search", req.search);
  line("options", req.options);
  return out;
}

std::string hosts_contents(const NetworkRequest& req) {
  std::string out =
      "127.0.0.1\tlocalhost\n"
      "::1\tlocalhost ip6-localhost ip6-loopback\n";
  if (!req.hostname.empty()) {
    if (req.interface) {
      out += req.interface->ipv4 + "\t" + req.hostname + "\n";
      if (!req.interface->ipv6.empty()) out += req.interface->ipv6 + "\t" + req.hostname + "\n";
    } else {
      // No interface of ours: the name still resolves (Debian's convention for the host's name).
      out += "127.0.1.1\t" + req.hostname + "\n";
    }
  }
  for (const auto& [name, ip] : req.hosts) out += ip + "\t" + name + "\n";
  return out;
}

void write_file_atomically(const fs::path& path, const std::string& contents) {
  const fs::path dir = path.parent_path();
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) throw errno_error("mkdir " + dir.string());
  std::string tmp = (dir / ("." + path.filename().string() + ".sm-XXXXXX")).string();
  UniqueFd fd(::mkostemp(tmp.data(), O_CLOEXEC));
  if (!fd) throw errno_error("create a temporary file beside " + path.string());
  auto fail = [&](const std::string& what) {
    int err = errno;
    ::unlink(tmp.c_str());
    return errno_error(what, err);
  };
  if (::fchmod(fd.get(), 0644) != 0) throw fail("chmod " + tmp);
  for (size_t off = 0; off < contents.size();) {
    ssize_t n = ::write(fd.get(), contents.data() + off, contents.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw fail("write " + tmp);
    off += static_cast<size_t>(n);
  }
  if (::close(fd.release()) != 0) throw fail("close " + tmp);
  // rename(2) replaces the name itself: a symlink there is replaced, never followed.
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw fail("rename into " + path.string());
}

std::optional<ErrorInfo> apply_network(const NetworkRequest& req, const NetworkOptions& opts) {
  if (opts.init) {
    // The agent brings lo up at boot; again here, in case something took it down since.
    if (int err = interface_up("lo")) return step_failed("bring lo up", err);
    if (req.interface)
      if (auto e = configure_interface(*req.interface)) return e;
  }
  if (!opts.root.empty()) {
    for (const auto& [file, contents] :
         {std::pair{"etc/resolv.conf", resolv_conf_contents(req)}, std::pair{"etc/hosts", hosts_contents(req)}}) {
      try {
        write_file_atomically(opts.root / file, contents);
      } catch (const Error& e) {
        return ErrorInfo{ErrorCode::kNetworkFailed, std::string("NETWORK: write /") + file + ": " + e.what()};
      }
    }
  }
  return std::nullopt;
}

}  // namespace sm::agent
