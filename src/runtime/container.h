// One container VM, run in this process: the image's read-only root filesystem, the agent
// initramfs and the project kernel assembled into a Machine, booted until the guest agent
// reports ready. The CLI's `run` and the public sm::Vm are both built on it.
//
// Files live in a directory the caller owns: the vsock sockets (vm.vsock, vm.vsock_1025), the
// guest console (console.log) and the optional scratch disk (scratch.ext4). The destructor
// powers the VM off, joins its threads and removes the sockets and the scratch disk.
//
// Snapshots: snapshot() captures the running VM (docs/snapshot-format.md); restore() makes a
// clone from one, reaches its agent and hands it the clone's own facts (wall clock, fresh
// entropy, hostname). With ContainerSpec::bake set, the constructor restores that bake when it
// exists and otherwise boots, captures the bake once the agent is ready, and goes on in the
// booted VM: the first run of an image pays for the boot, every later one restores.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/client.h"
#include "agent/protocol.h"
#include "common/unique_fd.h"
#include "net/config.h"
#include "oci/image_config.h"

namespace sm::vmm {
class Machine;
}
namespace sm::net {
class Backend;
}

namespace sm::runtime {

inline constexpr uint64_t kDefaultMemoryMib = 512;

struct ContainerSpec {
  std::filesystem::path rootfs;  // the read-only root filesystem image (EROFS or ext4)
  oci::RunConfig image;          // the image's defaults

  // Docker's `run` overrides.
  std::optional<std::vector<std::string>> entrypoint;  // --entrypoint (an empty vector clears it)
  std::vector<std::string> cmd;                        // CMD...: replaces the image's Cmd when set
  std::vector<std::string> env;                        // "K=V", over the image's Env
  std::optional<std::string> working_dir;              // -w
  std::optional<std::string> user;                     // -u
  std::vector<agent::Rlimit> rlimits;

  std::string hostname = "supermachine";
  // The network (Mode::none: loopback only). The agent configures the interface, /etc/hosts and
  // /etc/resolv.conf right after it is ready (and after a restore), before the main process.
  net::NetworkConfig network;
  unsigned cpus = 1;
  uint64_t memory_mib = kDefaultMemoryMib;
  // 0: the writable layer is a tmpfs in guest memory; otherwise an ext4 scratch disk this large.
  uint64_t disk_size_mib = 0;
  std::chrono::seconds boot_timeout{120};
  // Polled while booting: returning true gives up (e.g. Ctrl-C during boot).
  std::function<bool()> cancel_boot;

  // Recorded in snapshots, so a restore knows what it restores.
  std::string image_reference;
  std::string image_digest;  // the platform manifest's, "sha256:..."
  // The bake directory for this spec (bake_path()); unset: always boot. Ignored with a scratch
  // disk, which a snapshot cannot hold yet (such VMs always boot).
  std::optional<std::filesystem::path> bake;
};

// Where the bake of `spec` lives in the image store: next to the image's root filesystem,
// named by a key over everything that shapes the captured state (the image, its root
// filesystem, kernel, initramfs, vCPUs, memory, the writable layer's kind, the VMM build), so
// a changed input gives another key (a re-bake) and an unchanged one the same. nullopt when the
// spec cannot be baked (a scratch disk).
[[nodiscard]] std::optional<std::filesystem::path> bake_path(const std::filesystem::path& rootfs_dir,
                                                             const ContainerSpec& spec);

// What a clone gets after restore, besides the snapshot's own state.
struct RestoreSettings {
  std::string hostname = "supermachine";
  // The clone's own network: a fresh NAT with these ports and policy, the snapshot's addresses.
  // A snapshot with a network device needs a mode other than none, and one without, none;
  // unset: user mode (default ports and policy: none published, egress allowed) when the
  // snapshot has a network device, none when it has not.
  std::optional<net::NetworkConfig> network;
  std::chrono::seconds timeout{30};
};

// What a snapshot's `container` section records about the VM it holds.
struct SnapshotInfo {
  std::filesystem::path rootfs;
  std::string image_reference;
  std::string image_digest;
  oci::RunConfig image;
  unsigned cpus = 1;
  uint64_t memory_mib = 0;
  bool network = false;  // the VM has a network device
};
// Reads dir/state's `container` section. Throws sm::Error (SnapshotError when damaged).
[[nodiscard]] SnapshotInfo read_snapshot_info(const std::filesystem::path& dir);

// The main process as Docker would run it: Entrypoint + Cmd (an --entrypoint override drops the
// image's Cmd), the image's Env with the overrides on top (same name: the override wins), the
// working directory (created when missing) and user. Throws sm::Error when there is no command.
[[nodiscard]] agent::ExecRequest main_request(const ContainerSpec& spec);

// Throws sm::Error naming the first entry that is not "NAME=value".
void check_env(const std::vector<std::string>& env);

// "K=V" entries of `over` replace same-named entries of `base`, in place; new names append.
[[nodiscard]] std::vector<std::string> merge_env(std::vector<std::string> base, const std::vector<std::string>& over);

class ContainerVm {
 public:
  // Boots and waits for the agent. Throws sm::Error, with the end of the guest console, when
  // the VM cannot be built, ends while booting, or the agent is not ready in boot_timeout.
  ContainerVm(const ContainerSpec& spec, std::filesystem::path dir);
  // A clone of the snapshot in `snapshot_dir`, running in `dir`. Throws sm::Error (with the
  // guest console's end) when it cannot be restored or its agent does not answer in time.
  static std::unique_ptr<ContainerVm> restore(const std::filesystem::path& snapshot_dir,
                                              const RestoreSettings& settings, std::filesystem::path dir);
  ~ContainerVm();
  ContainerVm(const ContainerVm&) = delete;
  ContainerVm& operator=(const ContainerVm&) = delete;

  [[nodiscard]] agent::Client client(agent::ClientOptions options = {}) const;
  [[nodiscard]] const std::filesystem::path& vsock() const { return vsock_; }
  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }
  [[nodiscard]] const agent::HelloReply& hello() const { return hello_; }
  // The snapshot this VM was restored from; empty when it booted.
  [[nodiscard]] const std::filesystem::path& restored_from() const { return restored_from_; }
  // Whether this VM made its spec's bake when it booted.
  [[nodiscard]] bool baked() const { return baked_; }

  // The network backend (ports, counters); nullptr with Mode::none.
  [[nodiscard]] net::Backend* network() const;
  // A connected stream socket to TCP port guest_port inside the VM (on its loopback), through the
  // agent over vsock: works whatever the network mode and without publishing anything. Throws
  // sm::Error when nothing listens there.
  [[nodiscard]] UniqueFd connect(uint16_t guest_port, std::chrono::milliseconds timeout = std::chrono::seconds(10)) const;

  // Captures the running VM into `snapshot_dir` (see vmm::Machine::snapshot); it keeps running.
  void snapshot(const std::filesystem::path& snapshot_dir);

  // Blocks until the VM has ended (its main process ended, or stop()); returns its status. Its
  // vsock connections are closed then, so clients blocked on them see EOF. One thread at a time.
  int wait();
  // Ends the VM now with `status`, without asking the guest. Non-blocking; any thread.
  void stop(int status);
  // Asks the agent to stop everything and power off with `status`; falls back to stop() when
  // the agent cannot be reached. Then waits; returns the VM's status.
  int power_off(int status);
  // The VM's status once it is ending; nullopt while it runs. Any thread.
  [[nodiscard]] std::optional<int> status() const;
  // The last `max_bytes` of the guest console, for error messages.
  [[nodiscard]] std::string console_tail(size_t max_bytes = 2000) const;

 private:
  std::filesystem::path dir_;
  std::filesystem::path vsock_;
  std::filesystem::path console_path_;
  std::optional<std::filesystem::path> scratch_;
  std::unique_ptr<vmm::Machine> machine_;
  agent::HelloReply hello_;
  std::optional<int> final_status_;
  SnapshotInfo info_;
  std::filesystem::path restored_from_;
  bool baked_ = false;

  struct RestoreTag {};
  ContainerVm(RestoreTag, const std::filesystem::path& snapshot_dir, const RestoreSettings& settings,
              std::filesystem::path dir);
  void start_restored(const std::filesystem::path& snapshot_dir, const RestoreSettings& settings);
  void make_bake(const std::filesystem::path& bake);
  void configure_network(agent::Client& c, const net::NetworkConfig& network, const std::string& hostname);
};

}  // namespace sm::runtime
