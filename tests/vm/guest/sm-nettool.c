/* A static test program the network VM tests (tests/vm/net_test.cc) copy into a guest:
 *   sm-nettool udp-echo PORT   echo every UDP datagram on PORT back to its sender, forever
 *   sm-nettool hostile IFACE   send malformed Ethernet frames on IFACE through a raw packet
 *                              socket (truncated and lying IP/UDP/TCP headers, a DNS query with a
 *                              compression loop, garbage of every size up to the MTU), then
 *                              print "sent N"
 */
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int udp_echo(int port) {
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (s < 0 || bind(s, (struct sockaddr*)&a, sizeof a) != 0) {
    perror("udp-echo: bind");
    return 1;
  }
  printf("listening\n");
  fflush(stdout);
  static char buf[65536];
  for (;;) {
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr*)&from, &fl);
    if (n < 0) continue;
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &from.sin_addr, ip, sizeof ip);
    ssize_t w = sendto(s, buf, (size_t)n, 0, (struct sockaddr*)&from, fl);
    printf("%zd bytes from %s:%d, echoed %zd\n", n, ip, ntohs(from.sin_port), w);
    fflush(stdout);
  }
}

static unsigned char frame[65600];

static int send_frame(int s, const struct sockaddr_ll* to, size_t len) {
  return sendto(s, frame, len, 0, (const struct sockaddr*)to, sizeof *to) == (ssize_t)len;
}

/* Ethernet header to the gateway's MAC (libslirp's 52:55:0a:00:02:02) from ours. */
static void eth(const unsigned char* src_mac, unsigned short type) {
  static const unsigned char gw[6] = {0x52, 0x55, 0x0a, 0x00, 0x02, 0x02};
  memcpy(frame, gw, 6);
  memcpy(frame + 6, src_mac, 6);
  frame[12] = type >> 8;
  frame[13] = type & 0xff;
}

static void ipv4(unsigned char* p, unsigned ihl_words, unsigned total_len, unsigned char proto) {
  p[0] = 0x40 | (ihl_words & 15);
  p[1] = 0;
  p[2] = total_len >> 8;
  p[3] = total_len & 0xff;
  p[4] = p[5] = 0;
  p[6] = 0x40;
  p[7] = 0;
  p[8] = 64;
  p[9] = proto;
  p[10] = p[11] = 0;
  unsigned char src[4] = {10, 0, 2, 15}, dst[4] = {10, 77, 0, 2};
  memcpy(p + 12, src, 4);
  memcpy(p + 16, dst, 4);
}

static int hostile(const char* ifname) {
  int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  if (s < 0) {
    perror("hostile: socket");
    return 1;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  if (ioctl(s, SIOCGIFINDEX, &ifr) != 0) {
    perror("hostile: SIOCGIFINDEX");
    return 1;
  }
  struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = ifr.ifr_ifindex, .sll_halen = 6};
  if (ioctl(s, SIOCGIFHWADDR, &ifr) != 0) {
    perror("hostile: SIOCGIFHWADDR");
    return 1;
  }
  unsigned char mac[6];
  memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
  int mtu = 1500;
  if (ioctl(s, SIOCGIFMTU, &ifr) == 0) mtu = ifr.ifr_mtu;
  int sent = 0;
  unsigned char* ip = frame + 14;

  /* IPv4 header cut short: 14 + 10 bytes. */
  eth(mac, 0x0800);
  ipv4(ip, 5, 20, 17);
  sent += send_frame(s, &to, 14 + 10);
  /* IHL 15 (60-byte header) in a 30-byte packet. */
  ipv4(ip, 15, 30, 17);
  sent += send_frame(s, &to, 14 + 30);
  /* IHL 2: below the minimum. */
  ipv4(ip, 2, 40, 6);
  sent += send_frame(s, &to, 14 + 40);
  /* Total length larger than the frame. */
  ipv4(ip, 5, 60000, 17);
  sent += send_frame(s, &to, 14 + 28);
  /* UDP length larger than the packet. */
  ipv4(ip, 5, 28, 17);
  ip[20] = 0x30; ip[21] = 0x39; ip[22] = 0; ip[23] = 53; ip[24] = 0xff; ip[25] = 0xff; ip[26] = ip[27] = 0;
  sent += send_frame(s, &to, 14 + 28);
  /* TCP with data offset 15 in a 40-byte packet. */
  ipv4(ip, 5, 40, 6);
  memset(ip + 20, 0, 20);
  ip[22] = 0; ip[23] = 80; ip[32] = 0xf0; ip[33] = 0x02;
  sent += send_frame(s, &to, 14 + 40);
  /* A DNS query to the NAT's DNS with a compression pointer to itself. */
  ipv4(ip, 5, 20 + 8 + 14, 17);
  ip[16] = 10; ip[17] = 0; ip[18] = 2; ip[19] = 3;
  ip[20] = 0x30; ip[21] = 0x39; ip[22] = 0; ip[23] = 53; ip[24] = 0; ip[25] = 8 + 14; ip[26] = ip[27] = 0;
  unsigned char dns[14] = {0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12};
  memcpy(ip + 28, dns, sizeof dns);
  sent += send_frame(s, &to, 14 + 20 + 8 + 14);
  /* IPv6 header cut short, and one whose payload length lies. */
  eth(mac, 0x86dd);
  memset(ip, 0, 40);
  ip[0] = 0x60;
  sent += send_frame(s, &to, 14 + 20);
  ip[4] = 0xff; ip[5] = 0xff; ip[6] = 17; ip[7] = 64;
  sent += send_frame(s, &to, 14 + 40 + 8);
  /* An unknown ethertype, and garbage of many sizes up to the MTU. */
  eth(mac, 0x88b5);
  sent += send_frame(s, &to, 60);
  srand(7);
  for (int len = 14; len <= mtu + 14; len = len * 2 + 1) {
    for (int i = 14; i < len; ++i) frame[i] = (unsigned char)rand();
    eth(mac, (rand() & 1) ? 0x0800 : 0x86dd);
    sent += send_frame(s, &to, (size_t)len);
  }
  printf("sent %d\n", sent);
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 3 && strcmp(argv[1], "udp-echo") == 0) return udp_echo(atoi(argv[2]));
  if (argc == 3 && strcmp(argv[1], "hostile") == 0) return hostile(argv[2]);
  fprintf(stderr, "usage: sm-nettool udp-echo PORT | hostile IFACE\n");
  return 2;
}
