// A child process for tests: spawns argv with stdout and stderr captured through pipes, lets a
// test wait for a line to appear while the child runs, and reaps it with a deadline (the
// child is killed when the deadline passes, so a hung guest fails the test instead of CI).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace sm::test {

class ChildProcess {
 public:
  explicit ChildProcess(const std::vector<std::string>& argv,
                        const std::vector<std::string>& extra_env = {});
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();

  // Reads output until `needle` appears in stdout (true) or the timeout/EOF passes (false).
  bool wait_for_output(const std::string& needle, std::chrono::milliseconds timeout);
  // Reaps the child; kills it (SIGKILL) if it has not exited by the deadline. Returns the exit
  // status, 128+signal when killed by a signal, or nullopt when the deadline killed it.
  std::optional<int> wait(std::chrono::milliseconds timeout);

  [[nodiscard]] int pid() const { return pid_; }
  [[nodiscard]] const std::string& out() const { return out_; }
  [[nodiscard]] const std::string& err() const { return err_; }

 private:
  bool pump(std::chrono::steady_clock::time_point deadline);

  int pid_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  std::string out_;
  std::string err_;
  std::optional<int> status_;
};

}  // namespace sm::test
