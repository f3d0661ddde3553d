// The supervisor's control socket: how `supermachine snapshot VM DIR` reaches the process that
// runs a VM (the `run` process or the background supervisor of `run -d`). One request per
// connection, one line each way:
//   "snapshot <absolute dir>\n"  ->  "ok\n" | "error <message>\n"
// The socket is <VM dir>/control.sock, owner-only like the directory it is in.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <thread>

#include "common/unique_fd.h"

namespace sm::cli {

class ControlServer {
 public:
  using SnapshotHandler = std::function<void(const std::filesystem::path& dir)>;  // throws on failure
  ControlServer(std::filesystem::path socket, SnapshotHandler on_snapshot);
  ~ControlServer();  // stops serving and removes the socket
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

 private:
  void serve();
  std::filesystem::path path_;
  SnapshotHandler on_snapshot_;
  UniqueFd listener_;
  UniqueFd stop_;  // eventfd that ends serve()
  std::thread thread_;
};

// Sends one request to a supervisor's control socket and returns its reply line without the
// newline; throws sm::Error when the supervisor cannot be reached or answers with an error.
void control_snapshot(const std::filesystem::path& socket, const std::filesystem::path& dir);

}  // namespace sm::cli
