// The CLI's record of its VMs, so that `ps`, `exec`, `stop`, `kill`, `rm` and `logs` from any
// shell find a VM that `run` started. Layout under runtime_root():
//
//   lock                  flock, held while a VM is created (names are unique) or removed
//   vms/<key>/state.json   the record below, rewritten atomically (rename)
//   vms/<key>/vm.vsock     the agent's control socket (while the VM runs)
//   vms/<key>/output.log   the main process's stdout/stderr (runtime/output_log.h)
//   vms/<key>/console.log  the guest console
//
// <key> is the first 16 hex digits of the id, not all 64: the VM's Unix sockets live in that
// directory, and a socket path must fit in sun_path (108 bytes) under a runtime root such as
// /run/user/1000/supermachine. create() never reuses a key.
//
// A VM runs inside the process that started it (its supervisor: the `run` process itself, or
// the background process `run -d` forks). A record is running while that process lives; one
// whose supervisor died without writing an exit status reads as "dead".
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace sm::runtime {

// $SUPERMACHINE_RUNTIME_DIR, else $XDG_RUNTIME_DIR/supermachine, else /run/supermachine for
// root, else /tmp/supermachine-<uid>.
[[nodiscard]] std::filesystem::path runtime_root();

struct VmRecord {
  std::string id;       // 64 hex digits; commands accept any unique prefix
  std::string name;
  std::string image;    // the reference as given
  std::vector<std::string> command;
  int64_t created = 0;  // unix seconds
  pid_t pid = 0;        // the supervisor process
  uint64_t pid_start = 0;  // its start time (/proc/<pid>/stat field 22), against pid reuse
  std::optional<int> exit_code;
  int64_t finished = 0;
  bool auto_remove = false;  // --rm
  // What `exec` starts from, as Docker does: the main process's environment, user and
  // working directory.
  std::vector<std::string> env;
  std::string user;
  std::string working_dir;
  // Published ports, as `port` prints them ("80/tcp -> 0.0.0.0:18080"), once the VM runs.
  std::vector<std::string> ports;

  [[nodiscard]] std::string short_id() const { return id.substr(0, 12); }
};

enum class VmState { kCreated, kRunning, kExited, kDead };
[[nodiscard]] const char* state_name(VmState s);

// The start time of `pid` in clock ticks since boot, or 0 when it does not exist.
[[nodiscard]] uint64_t process_start_time(pid_t pid);

class VmRegistry {
 public:
  explicit VmRegistry(std::filesystem::path root = runtime_root());

  [[nodiscard]] const std::filesystem::path& root() const { return root_; }
  [[nodiscard]] std::filesystem::path dir(const VmRecord& r) const { return root_ / "vms" / r.id.substr(0, kDirKeyLength); }
  static constexpr size_t kDirKeyLength = 16;

  // Allocates an id and a directory. An empty name gets a generated one; a name in use, or
  // one that is not [a-zA-Z0-9][a-zA-Z0-9_.-]*, is refused with sm::Error.
  VmRecord create(std::string name, std::string image, std::vector<std::string> command, bool auto_remove);
  void save(const VmRecord& r) const;
  // Every record, oldest first. Unreadable entries are skipped with a warning.
  [[nodiscard]] std::vector<VmRecord> list() const;
  // By exact name, exact id or unique id prefix; sm::Error when there is none or it is ambiguous.
  [[nodiscard]] VmRecord find(const std::string& ref) const;
  // Re-reads a record (after its supervisor may have updated it).
  [[nodiscard]] VmRecord reload(const VmRecord& r) const;
  void remove(const VmRecord& r) const;

  [[nodiscard]] static VmState state(const VmRecord& r);

 private:
  std::filesystem::path root_;
};

}  // namespace sm::runtime
