#include "runtime/state.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/unique_fd.h"

namespace sm::runtime {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr size_t kMaxStateBytes = 1 << 20;

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

bool valid_name(const std::string& n) {
  if (n.empty() || n.size() > 128 || !std::isalnum(static_cast<unsigned char>(n[0]))) return false;
  return std::all_of(n.begin(), n.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
  });
}

std::string random_hex(size_t bytes) {
  std::random_device rd;
  std::string s;
  for (size_t i = 0; i < bytes; ++i) s += fmt::format("{:02x}", rd() & 0xff);
  return s;
}

// Docker-style generated names: adjective_noun.
std::string generate_name() {
  static constexpr const char* kAdj[] = {"brave", "calm", "eager", "fond", "keen", "lucid", "merry", "nimble",
                                         "proud", "quiet", "sharp", "swift", "tidy", "vivid", "witty", "zen"};
  static constexpr const char* kNoun[] = {"babbage", "curie", "dijkstra", "euler", "gauss", "hopper",
                                          "knuth", "lamport", "lovelace", "noether", "shannon", "turing"};
  std::random_device rd;
  return fmt::format("{}_{}_{}", kAdj[rd() % std::size(kAdj)], kNoun[rd() % std::size(kNoun)], rd() % 1000);
}

json to_json(const VmRecord& r) {
  json j = {{"id", r.id},           {"name", r.name},       {"image", r.image},
            {"command", r.command}, {"created", r.created}, {"pid", r.pid},
            {"pid_start", r.pid_start}, {"finished", r.finished}, {"auto_remove", r.auto_remove}};
  j["exit_code"] = r.exit_code ? json(*r.exit_code) : json(nullptr);
  j["env"] = r.env;
  j["user"] = r.user;
  j["working_dir"] = r.working_dir;
  j["ports"] = r.ports;
  return j;
}

VmRecord from_json(const json& j) {
  VmRecord r;
  r.id = j.at("id").get<std::string>();
  r.name = j.at("name").get<std::string>();
  r.image = j.at("image").get<std::string>();
  r.command = j.at("command").get<std::vector<std::string>>();
  r.created = j.at("created").get<int64_t>();
  r.pid = j.at("pid").get<pid_t>();
  r.pid_start = j.at("pid_start").get<uint64_t>();
  r.finished = j.at("finished").get<int64_t>();
  r.auto_remove = j.at("auto_remove").get<bool>();
  if (!j.at("exit_code").is_null()) r.exit_code = j.at("exit_code").get<int>();
  r.env = j.at("env").get<std::vector<std::string>>();
  r.user = j.at("user").get<std::string>();
  r.working_dir = j.at("working_dir").get<std::string>();
  if (j.contains("ports")) r.ports = j.at("ports").get<std::vector<std::string>>();
  return r;
}

VmRecord read_record(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw sys_error("cannot read " + file.string());
  std::string text;
  text.resize(kMaxStateBytes + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxStateBytes) throw Error(file.string() + " is too large");
  try {
    return from_json(json::parse(text));
  } catch (const json::exception& e) {
    throw Error(fmt::format("{} is malformed: {}", file.string(), e.what()));
  }
}

// Exclusive lock on the registry for creating and removing records.
UniqueFd lock_registry(const fs::path& root) {
  UniqueFd fd(::open((root / "lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) throw sys_error("cannot open " + (root / "lock").string());
  while (::flock(fd.get(), LOCK_EX) != 0)
    if (errno != EINTR) throw sys_error("cannot lock " + (root / "lock").string());
  return fd;
}

}  // namespace

fs::path runtime_root() {
  if (const char* d = env("SUPERMACHINE_RUNTIME_DIR")) return d;
  if (const char* x = env("XDG_RUNTIME_DIR")) return fs::path(x) / "supermachine";
  if (::geteuid() == 0) return "/run/supermachine";
  return fs::path("/tmp") / fmt::format("supermachine-{}", ::geteuid());
}

const char* state_name(VmState s) {
  switch (s) {
    case VmState::kCreated: return "created";
    case VmState::kRunning: return "running";
    case VmState::kExited: return "exited";
    case VmState::kDead: return "dead";
  }
  return "?";
}

uint64_t process_start_time(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(in, line)) return 0;
  // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
  auto close = line.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  for (int i = 3; i <= 22 && rest >> field; ++i)
    if (i == 22) return std::strtoull(field.c_str(), nullptr, 10);
  return 0;
}

VmRegistry::VmRegistry(fs::path root) : root_(std::move(root)) {
  std::error_code ec;
  fs::create_directories(root_ / "vms", ec);
  if (ec) throw Error(fmt::format("cannot create the runtime directory {}: {}", (root_ / "vms").string(), ec.message()));
  fs::permissions(root_, fs::perms::owner_all, fs::perm_options::replace, ec);
}

VmRecord VmRegistry::create(std::string name, std::string image, std::vector<std::string> command,
                            bool auto_remove) {
  UniqueFd lock = lock_registry(root_);
  auto existing = list();
  if (name.empty()) {
    do name = generate_name();
    while (std::any_of(existing.begin(), existing.end(), [&](const VmRecord& r) { return r.name == name; }));
  } else if (!valid_name(name)) {
    throw Error(fmt::format("bad VM name '{}': use [a-zA-Z0-9][a-zA-Z0-9_.-]*", name));
  } else {
    for (const auto& r : existing)
      if (r.name == name)
        throw Error(fmt::format("the name '{}' is in use by VM {}; remove it (supermachine rm {}) or pick another",
                                name, r.short_id(), name));
  }
  VmRecord r;
  do r.id = random_hex(32);  // a new directory key too (it is the id's prefix)
  while (fs::exists(dir(r)));
  r.name = std::move(name);
  r.image = std::move(image);
  r.command = std::move(command);
  r.created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  r.pid = ::getpid();
  r.pid_start = process_start_time(r.pid);
  r.auto_remove = auto_remove;
  fs::create_directory(dir(r));
  save(r);
  return r;
}

void VmRegistry::save(const VmRecord& r) const {
  fs::path file = dir(r) / "state.json";
  fs::path tmp = dir(r) / ".state.json.tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << to_json(r).dump(2) << "\n";
    if (!out.flush()) throw sys_error("cannot write " + tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, file, ec);
  if (ec) throw Error(fmt::format("cannot write {}: {}", file.string(), ec.message()));
}

std::vector<VmRecord> VmRegistry::list() const {
  std::vector<VmRecord> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root_ / "vms", ec)) {
    fs::path file = e.path() / "state.json";
    if (!fs::exists(file)) continue;  // being created or removed
    try {
      out.push_back(read_record(file));
    } catch (const Error& err) {
      spdlog::warn("skipping {}: {}", e.path().string(), err.what());
    }
  }
  std::sort(out.begin(), out.end(), [](const VmRecord& a, const VmRecord& b) {
    return a.created != b.created ? a.created < b.created : a.id < b.id;
  });
  return out;
}

VmRecord VmRegistry::find(const std::string& ref) const {
  if (ref.empty()) throw Error("no VM named: give a name or an id");
  auto all = list();
  for (const auto& r : all)
    if (r.name == ref || r.id == ref) return r;
  std::vector<const VmRecord*> hits;
  for (const auto& r : all)
    if (r.id.starts_with(ref)) hits.push_back(&r);
  if (hits.size() == 1) return *hits[0];
  if (hits.empty()) throw Error(fmt::format("no such VM: {} (supermachine ps -a lists them)", ref));
  throw Error(fmt::format("'{}' matches {} VMs; give more of the id", ref, hits.size()));
}

VmRecord VmRegistry::reload(const VmRecord& r) const { return read_record(dir(r) / "state.json"); }

void VmRegistry::remove(const VmRecord& r) const {
  UniqueFd lock = lock_registry(root_);
  std::error_code ec;
  // state.json first, so a half-removed directory is never listed.
  fs::remove(dir(r) / "state.json", ec);
  fs::remove_all(dir(r), ec);
  if (ec) throw Error(fmt::format("cannot remove {}: {}", dir(r).string(), ec.message()));
}

VmState VmRegistry::state(const VmRecord& r) {
  if (r.exit_code) return VmState::kExited;
  if (r.pid == 0) return VmState::kCreated;
  uint64_t start = process_start_time(r.pid);
  if (start != 0 && start == r.pid_start) return VmState::kRunning;
  return VmState::kDead;
}

}  // namespace sm::runtime
