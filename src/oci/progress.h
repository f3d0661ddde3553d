// Pull progress. The registry client reports per blob; PullProgress implementations must be
// thread-safe (layers download in parallel). TerminalProgress redraws one line per layer on a
// TTY and prints one quiet line per finished blob otherwise.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "oci/digest.h"

namespace sm::oci {

class PullProgress {
 public:
  virtual ~PullProgress() = default;
  virtual void note(std::string_view /*line*/) {}
  // kind: "layer" or "config".
  virtual void blob_started(const Digest& /*d*/, std::string_view /*kind*/, std::uint64_t /*total*/) {}
  virtual void blob_progress(const Digest& /*d*/, std::uint64_t /*done*/) {}
  // status: "done", "cached", "failed", or "retrying: <why>" (the blob continues).
  virtual void blob_status(const Digest& /*d*/, std::string_view /*status*/) {}
};

class TerminalProgress : public PullProgress {
 public:
  // tty: redraw in place (ANSI); otherwise print one line per finished blob.
  TerminalProgress(std::FILE* out, bool tty);
  static std::unique_ptr<TerminalProgress> for_stderr();

  void note(std::string_view line) override;
  void blob_started(const Digest& d, std::string_view kind, std::uint64_t total) override;
  void blob_progress(const Digest& d, std::uint64_t done) override;
  void blob_status(const Digest& d, std::string_view status) override;

 private:
  struct Row {
    std::string kind;
    std::uint64_t total = 0, done = 0;
    std::string status;
  };
  void redraw_locked(bool force);
  std::FILE* out_;
  bool tty_;
  std::mutex mu_;
  std::vector<Digest> order_;
  std::map<Digest, Row> rows_;
  std::size_t drawn_ = 0;  // lines drawn last time (to move the cursor back up)
  std::chrono::steady_clock::time_point last_draw_{};
};

// "12.3MB" style, as docker prints sizes (SI units).
[[nodiscard]] std::string human_size(std::uint64_t bytes);

}  // namespace sm::oci
