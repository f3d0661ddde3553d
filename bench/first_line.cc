// first_line MARKER TIMEOUT_S CMD [ARGS...]
// Starts CMD and prints the milliseconds from just before the spawn to the first output line
// containing MARKER, then kills CMD's process group. Exit 1 (and no number) on timeout or EOF.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: first_line MARKER TIMEOUT_S CMD [ARGS...]\n");
    return 2;
  }
  const std::string marker = argv[1];
  const auto timeout = std::chrono::seconds(std::atoi(argv[2]));
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return 2;
  auto start = std::chrono::steady_clock::now();
  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    dup2(p[1], 1);
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(devnull, 2);
    execvp(argv[3], argv + 3);
    _exit(127);
  }
  close(p[1]);
  std::string buf;
  int rc = 1;
  for (;;) {
    auto left = timeout - (std::chrono::steady_clock::now() - start);
    int ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(left).count());
    if (ms <= 0) break;
    pollfd pfd{p[0], POLLIN, 0};
    if (poll(&pfd, 1, ms) <= 0) break;
    char chunk[4096];
    ssize_t n = read(p[0], chunk, sizeof chunk);
    if (n <= 0) break;
    buf.append(chunk, static_cast<size_t>(n));
    if (buf.find(marker) != std::string::npos) {
      auto t = std::chrono::steady_clock::now() - start;
      std::printf("%.1f\n", std::chrono::duration<double, std::milli>(t).count());
      rc = 0;
      break;
    }
  }
  kill(-pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return rc;
}
