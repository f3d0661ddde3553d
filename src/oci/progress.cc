#include "oci/progress.h"

#include <unistd.h>

#include <algorithm>

#include <fmt/format.h>

namespace sm::oci {

std::string human_size(std::uint64_t b) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1000 && u < 4) {
    v /= 1000;
    ++u;
  }
  if (u == 0) return fmt::format("{}B", b);
  return fmt::format("{:.{}f}{}", v, v < 10 ? 2 : v < 100 ? 1 : 0, units[u]);
}

TerminalProgress::TerminalProgress(std::FILE* out, bool tty) : out_(out), tty_(tty) {}

std::unique_ptr<TerminalProgress> TerminalProgress::for_stderr() {
  return std::make_unique<TerminalProgress>(stderr, ::isatty(STDERR_FILENO) == 1);
}

void TerminalProgress::note(std::string_view line) {
  std::lock_guard lk(mu_);
  if (tty_ && drawn_) {
    std::fprintf(out_, "\x1b[%zuA\x1b[J", drawn_);  // clear the table, print, redraw below
    drawn_ = 0;
  }
  std::fprintf(out_, "%.*s\n", static_cast<int>(line.size()), line.data());
  if (tty_) redraw_locked(true);
  std::fflush(out_);
}

void TerminalProgress::blob_started(const Digest& d, std::string_view kind, std::uint64_t total) {
  std::lock_guard lk(mu_);
  if (!rows_.contains(d)) order_.push_back(d);
  rows_[d] = Row{std::string(kind), total, 0, "Downloading"};
  if (tty_) redraw_locked(true);
}

void TerminalProgress::blob_progress(const Digest& d, std::uint64_t done) {
  std::lock_guard lk(mu_);
  auto it = rows_.find(d);
  if (it == rows_.end()) return;
  it->second.done = done;
  if (tty_) redraw_locked(false);
}

void TerminalProgress::blob_status(const Digest& d, std::string_view status) {
  std::lock_guard lk(mu_);
  auto& row = rows_[d];
  if (std::find(order_.begin(), order_.end(), d) == order_.end()) order_.push_back(d);
  row.status = std::string(status);
  if (tty_) {
    redraw_locked(true);
  } else if (status == "done" || status == "cached" || status == "failed" || status.starts_with("retrying")) {
    std::string size = row.total ? " (" + human_size(row.total) + ")" : "";
    std::fprintf(out_, "%s %s: %s%s\n", d.hex().substr(0, 12).c_str(), row.kind.c_str(), row.status.c_str(),
                 status == "done" ? size.c_str() : "");
    std::fflush(out_);
  }
}

void TerminalProgress::redraw_locked(bool force) {
  auto now = std::chrono::steady_clock::now();
  if (!force && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  std::string buf;
  if (drawn_) buf += fmt::format("\x1b[{}A", drawn_);
  for (auto& d : order_) {
    auto& r = rows_[d];
    std::string line = fmt::format("{} {}: ", d.hex().substr(0, 12), r.kind);
    if (r.status == "Downloading" && r.total)
      line += fmt::format("Downloading {:>8} / {:<8}", human_size(r.done), human_size(r.total));
    else if (r.status == "done")
      line += "Download complete";
    else if (r.status == "cached")
      line += "Already exists";
    else
      line += r.status;
    buf += "\x1b[2K" + line + "\n";
  }
  drawn_ = order_.size();
  std::fputs(buf.c_str(), out_);
  std::fflush(out_);
}

}  // namespace sm::oci
