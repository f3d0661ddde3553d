// supermachine images: the tagged images in the local store, as `docker images` shows them.
#include <fmt/format.h>

#include <ctime>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "oci/progress.h"
#include "oci/store.h"

namespace sm::cli {
namespace {

struct ImagesArgs {
  bool digests = false;
  bool quiet = false;
  bool no_trunc = false;
};

// "3 days ago" from an RFC 3339 "created" time; "N/A" when absent or unparsable.
std::string ago(const std::string& created) {
  std::tm tm{};
  if (created.size() < 19 || !strptime(created.c_str(), "%Y-%m-%dT%H:%M:%S", &tm)) return "N/A";
  std::time_t t = timegm(&tm);
  long s = static_cast<long>(std::time(nullptr) - t);
  if (s < 0) return "N/A";
  struct Unit {
    long secs;
    const char* name;
  } units[] = {{365 * 86400L, "year"}, {30 * 86400L, "month"}, {7 * 86400L, "week"}, {86400L, "day"},
               {3600L, "hour"},        {60L, "minute"},         {1L, "second"}};
  for (auto& u : units) {
    if (s >= u.secs) {
      long n = s / u.secs;
      return fmt::format("{} {}{} ago", n, u.name, n == 1 ? "" : "s");
    }
  }
  return "Less than a second ago";
}

int run_images(const ImagesArgs& a) {
  oci::Store store;
  struct Row {
    std::string repo, tag, digest, id, created, size, bakes = "0";
  };
  // Bakes (docs/snapshots.md) sit beside the image's root filesystem: "<manifest>.bake-<key>".
  auto count_bakes = [&](const oci::Digest& manifest) {
    size_t n = 0;
    std::error_code ec;
    const std::string prefix = manifest.file_name() + ".bake-";
    for (auto& ent : std::filesystem::directory_iterator(store.rootfs_dir(), ec)) {
      std::string name = ent.path().filename().string();
      if (name.starts_with(prefix) && name.find(".tmp-") == std::string::npos) ++n;
    }
    return std::to_string(n);
  };
  std::vector<Row> rows;
  for (auto& e : store.list_refs()) {
    Row r;
    std::string name = e.ref.familiar();
    if (!e.ref.tag().empty()) name = name.substr(0, name.find('@'));
    r.repo = name.substr(0, e.ref.tag().empty() ? name.find('@') : name.rfind(':'));
    r.tag = e.ref.tag().empty() ? "<none>" : e.ref.tag();
    r.digest = e.digest.to_string();
    try {
      auto img = store.image(e.digest);
      r.id = img.manifest.config.digest.hex();
      std::string created;
      try {
        auto cfg = nlohmann::json::parse(store.read_blob(img.manifest.config.digest, oci::kMaxConfigBytes));
        if (cfg.contains("created") && cfg["created"].is_string()) created = cfg["created"];
      } catch (const std::exception&) {
      }
      r.created = ago(created);
      r.size = oci::human_size(img.manifest.layers_size());
      r.bakes = count_bakes(img.manifest_digest);
    } catch (const std::exception& ex) {
      r.id = "<missing>";  // e.g. pulled for another platform, or blobs deleted by hand
      r.created = "N/A";
      r.size = "N/A";
    }
    if (!a.no_trunc && r.id.size() > 12) r.id = r.id.substr(0, 12);
    rows.push_back(std::move(r));
  }
  if (a.quiet) {
    for (auto& r : rows) std::printf("%s\n", r.id.c_str());
    return 0;
  }
  std::vector<std::vector<std::string>> table;
  if (a.digests)
    table.push_back({"REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE", "BAKES"});
  else
    table.push_back({"REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "BAKES"});
  for (auto& r : rows) {
    if (a.digests)
      table.push_back({r.repo, r.tag, r.digest, r.id, r.created, r.size, r.bakes});
    else
      table.push_back({r.repo, r.tag, r.id, r.created, r.size, r.bakes});
  }
  std::vector<std::size_t> width(table[0].size(), 0);
  for (auto& row : table)
    for (std::size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  for (auto& row : table) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i)
      line += i + 1 < row.size() ? fmt::format("{:<{}}   ", row[i], width[i]) : row[i];
    std::printf("%s\n", line.c_str());
  }
  return 0;
}

CommandRegistration reg{{"images", "List the images in the local store", [](CLI::App& sub) -> Action {
                           auto a = std::make_shared<ImagesArgs>();
                           sub.add_flag("--digests", a->digests, "Show the digest each tag points at");
                           sub.add_flag("-q,--quiet", a->quiet, "Only show image IDs");
                           sub.add_flag("--no-trunc", a->no_trunc, "Don't truncate image IDs");
                           return [a] { return run_images(*a); };
                         }}};

}  // namespace
}  // namespace sm::cli
