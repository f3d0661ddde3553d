// Guest side of the vsock VM tests (AF_VSOCK, static, no libc extras).
//   sm-vsock echo-server PORT        accept one connection, echo every byte until EOF
//   sm-vsock echo-client CID PORT N  send N pattern bytes, half-close, read N bytes back and
//                                    verify them; prints "vsock-echo-ok N" on success
#include <errno.h>
#include <linux/vm_sockets.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static unsigned char pattern_byte(size_t i) { return (unsigned char)((i * 131u + (i >> 12)) & 0xff); }

static int write_all(int fd, const unsigned char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int echo_server(unsigned port) {
  int s = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (s < 0) return perror("socket"), 1;
  struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_ANY};
  if (bind(s, (struct sockaddr*)&addr, sizeof addr) != 0) return perror("bind"), 1;
  if (listen(s, 1) != 0) return perror("listen"), 1;
  printf("vsock-listening %u\n", port);
  fflush(stdout);
  int c = accept(s, NULL, NULL);
  if (c < 0) return perror("accept"), 1;
  static unsigned char buf[65536];
  size_t total = 0;
  for (;;) {
    ssize_t r = read(c, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return perror("read"), 1;
    if (r == 0) break;
    if (write_all(c, buf, (size_t)r) != 0) return perror("write"), 1;
    total += (size_t)r;
  }
  close(c);
  printf("vsock-echoed %zu\n", total);
  return 0;
}

static int echo_client(unsigned cid, unsigned port, size_t n) {
  int s = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (s < 0) return perror("socket"), 1;
  struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = cid};
  if (connect(s, (struct sockaddr*)&addr, sizeof addr) != 0) return perror("connect"), 1;
  unsigned char* out = malloc(n);
  unsigned char* in = malloc(n);
  if (!out || !in) return 1;
  for (size_t i = 0; i < n; ++i) out[i] = pattern_byte(i);
  // Send and receive interleaved so neither side's buffers have to hold the whole payload.
  size_t sent = 0, got = 0;
  while (got < n) {
    if (sent < n) {
      size_t chunk = n - sent < 65536 ? n - sent : 65536;
      if (write_all(s, out + sent, chunk) != 0) return perror("write"), 1;
      sent += chunk;
      if (sent == n) shutdown(s, SHUT_WR);
    }
    while (got < sent) {
      ssize_t r = read(s, in + got, n - got);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return perror("read"), 1;
      if (r == 0) {
        fprintf(stderr, "vsock: EOF after %zu of %zu bytes\n", got, n);
        return 1;
      }
      got += (size_t)r;
      if (sent < n) break;
    }
  }
  if (memcmp(in, out, n) != 0) {
    fprintf(stderr, "vsock: echoed bytes differ\n");
    return 1;
  }
  printf("vsock-echo-ok %zu\n", n);
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 3 && strcmp(argv[1], "echo-server") == 0) return echo_server((unsigned)atoi(argv[2]));
  if (argc == 5 && strcmp(argv[1], "echo-client") == 0)
    return echo_client((unsigned)atoi(argv[2]), (unsigned)atoi(argv[3]), (size_t)atoll(argv[4]));
  fprintf(stderr, "usage: sm-vsock echo-server PORT | echo-client CID PORT BYTES\n");
  return 2;
}
