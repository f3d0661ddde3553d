// The supermachine library: run OCI images as microVMs on KVM, from C++.
//
//   auto img = sm::Image::get("alpine");        // from the local store, else pulled
//   auto vm = sm::Vm::start(img);               // boots in its own microVM
//   auto r = vm.exec({"echo", "hi"});           // r.out == "hi\n", r.exit_code == 0
//
// A Vm runs inside the process that starts it (its vCPU and device threads are this process's
// threads); destroying it powers the VM off and removes everything it created. Failures throw
// sm::Error (include/supermachine/error.h) with a message that says what failed and why.
// Reference: docs/api.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "supermachine/error.h"
#include "supermachine/network.h"

namespace sm {

// A command could not be started in the VM (not found, not executable, unknown user or working
// directory). exit_code() is what a shell or `docker exec` reports for it: 127 command not
// found, 126 cannot execute or set-up failure, 125 otherwise.
class ExecError : public Error {
 public:
  ExecError(const std::string& what, int exit_code) : Error(what), exit_code_(exit_code) {}
  [[nodiscard]] int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

struct PullOptions {
  std::string platform;  // "os/arch[/variant]"; empty: this host's
  std::vector<std::string> insecure_registries;  // "host[:port]" reached over plain HTTP
};

// An image in the local store (the user's, or $XDG_DATA_HOME/supermachine), with the read-only
// root filesystem VMs boot from. Cheap to copy.
class Image {
 public:
  // Pulls `reference` ("alpine", "ghcr.io/org/app:1") from its registry, even when stored.
  [[nodiscard]] static Image pull(const std::string& reference, const PullOptions& options = {});
  // The stored image; never touches the network (sm::Error when it is not stored).
  [[nodiscard]] static Image local(const std::string& reference);
  // The stored image, else pulled.
  [[nodiscard]] static Image get(const std::string& reference, const PullOptions& options = {});
  // Loads a `docker save` archive or an OCI image layout (directory or tar) into the store and
  // returns one of its images: the one named `name` (a reference, or an OCI layout's ref name
  // such as "v1"), or the only one when `name` is empty. Naming an archive's only image gives it
  // that name in the store.
  [[nodiscard]] static Image load(const std::filesystem::path& path, const std::string& name = {});

  [[nodiscard]] const std::string& reference() const;  // canonical: docker.io/library/alpine:latest
  [[nodiscard]] const std::string& digest() const;     // the platform manifest's, "sha256:..."
  [[nodiscard]] std::vector<std::string> command() const;  // the image's Entrypoint + Cmd

 private:
  friend class Vm;
  struct Impl;
  explicit Image(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

// How a VM is built. The defaults need nothing: 1 vCPU, 512 MiB, the writable layer in memory.
// env, working_dir and user are the defaults of every exec (over the image's own).
struct VmConfig {
  unsigned cpus = 1;
  std::uint64_t memory_mib = 512;
  std::uint64_t disk_size_mib = 0;  // 0: the writable layer is a tmpfs; else an ext4 disk this large
  std::string hostname = "supermachine";
  std::vector<std::string> env;  // "NAME=value"
  std::string working_dir;       // absolute; empty: the image's WorkingDir, else "/"
  std::string user;              // "name", "uid", "name:group", "uid:gid"; empty: the image's, else root
  std::chrono::seconds boot_timeout{120};
  // Start from the image's bake: a snapshot of it booted with this config and captured once
  // its agent was ready, restored copy-on-write in milliseconds. The first start of an image
  // (per cpus/memory/kernel/VMM build) boots and makes the bake; later ones restore it. false:
  // always boot. VMs with a scratch disk (disk_size_mib > 0) always boot.
  bool snapshot = true;
  // User-mode NAT by default: the VM reaches out, nothing is published, the host's loopback
  // services are out of its reach (network.h, docs/networking.md).
  NetworkConfig network;
};

// A VM restored from a snapshot of one (Vm::snapshot). The clone gets its own hostname, the
// host's wall clock and fresh entropy; env, working_dir and user are its execs' defaults.
struct RestoreOptions {
  std::string hostname = "supermachine";
  std::vector<std::string> env;
  std::string working_dir;
  std::string user;
  std::chrono::seconds timeout{30};  // for the restored agent to answer
  // The clone's network: its own NAT, ports and policy, with the snapshot's addresses. Unset:
  // user mode with the defaults when the snapshot has a network device, none when it has not.
  std::optional<NetworkConfig> network;
};

// Per-exec overrides of the VM's defaults.
struct ExecOptions {
  std::vector<std::string> env;  // "NAME=value", over the VM's environment
  std::string working_dir;       // empty: the VM's
  std::string user;              // empty: the VM's
  std::chrono::milliseconds timeout{0};  // 0: none; on expiry the process group is killed
  std::string stdin_data;        // Vm::exec only: the process's stdin (otherwise /dev/null)
};

struct ExecStatus {
  int exit_code = 0;          // the exit status, or 128 + signal when killed by a signal
  std::optional<int> signal;  // the signal that killed it
  bool timed_out = false;     // killed because ExecOptions::timeout passed (exit_code 137)
  std::chrono::nanoseconds duration{0};  // from the request to the process's exit
};

struct ExecResult : ExecStatus {
  std::string out;  // stdout
  std::string err;  // stderr
};

// Where a streaming exec's stdio comes from and goes to. The callbacks run on the calling thread.
struct ExecStream {
  int stdin_fd = -1;  // read until EOF and sent as stdin (not closed); or:
  std::function<std::string()> stdin_source;  // the next chunk of stdin, "" at EOF
  std::function<void(std::string_view)> on_stdout;
  std::function<void(std::string_view)> on_stderr;
};

// A running microVM. Movable, not copyable. exec, exec_stream, write_file, read_file, running,
// console_tail and stop may run concurrently from several threads: stop() (say, from a watchdog)
// ends the requests in flight, which throw sm::Error saying the VM ended. Moving, destroying
// and dir() must not race the others.
class Vm {
 public:
  // Boots `image` and waits until its agent answers. Throws sm::Error (with the end of the guest
  // console) when the VM cannot be built or does not come up within config.boot_timeout.
  [[nodiscard]] static Vm start(const Image& image, const VmConfig& config = {});
  // A clone of the VM captured in `snapshot` (a directory Vm::snapshot wrote). Many clones of
  // one snapshot may run at once; each maps its memory copy-on-write and never changes the
  // snapshot. Throws sm::Error when the snapshot is damaged, was made by another build, kernel
  // or CPU, or its image's root filesystem changed.
  [[nodiscard]] static Vm restore(const std::filesystem::path& snapshot, const RestoreOptions& options = {});

  Vm(Vm&&) noexcept;
  Vm& operator=(Vm&&) noexcept;
  ~Vm();  // stop()

  // Runs argv to completion and collects its output. Throws ExecError when it cannot start
  // (e.g. "command not found"), sm::Error when the VM is stopped or cannot be reached.
  [[nodiscard]] ExecResult exec(const std::vector<std::string>& argv, const ExecOptions& options = {});
  // Runs argv with its stdio streamed through `io`; returns once it has exited.
  ExecStatus exec_stream(const std::vector<std::string>& argv, const ExecStream& io,
                         const ExecOptions& options = {});

  // Writes `data` to the absolute `path` in the VM, atomically, creating missing directories.
  void write_file(const std::string& path, std::string_view data, std::uint32_t mode = 0644);
  // Reads a regular file of the VM (at most 64 MiB).
  [[nodiscard]] std::string read_file(const std::string& path);

  // Captures the running VM into `dir` (created; must not hold a snapshot yet): its memory,
  // processes and files as they are now. The VM pauses meanwhile and then runs on. Connections
  // and requests in flight carry on here; in clones they end with an error. Returns `dir`.
  std::filesystem::path snapshot(const std::filesystem::path& dir);
  // True when this VM started from a snapshot (a bake or Vm::restore) rather than a boot.
  [[nodiscard]] bool restored() const;

  // Publishes a port while the VM runs (like `-p`); returns it with its host port (picked when
  // 0). Throws sm::Error when the host port cannot be bound, or the VM has no user-mode network.
  PortMapping publish(const PortMapping& port);
  // Removes a published port; false when it was not published.
  bool unpublish(const PortMapping& port);
  // The published ports, with their host ports.
  [[nodiscard]] std::vector<PortMapping> ports() const;
  // A connected TCP stream to guest_port inside the VM, reached at the guest's loopback (a server
  // listening on 127.0.0.1, ::1 or all addresses; not one bound to eth0's address alone), without
  // publishing anything on the host and whatever the network mode. The caller owns the returned
  // file descriptor. Throws sm::Error when nothing listens there.
  [[nodiscard]] int connect(std::uint16_t guest_port);
  // The VM's network counters (all zero without a network device).
  [[nodiscard]] NetStats net_stats() const;

  // Powers the VM off and removes its files. Idempotent; afterwards every call but running()
  // throws sm::Error.
  void stop();
  // False once stopped, or when the guest has ended on its own (e.g. it crashed).
  [[nodiscard]] bool running() const;
  // The host directory holding the VM's sockets and its guest console log (console.log).
  [[nodiscard]] const std::filesystem::path& dir() const;
  // The end of the guest console, for diagnostics.
  [[nodiscard]] std::string console_tail(std::size_t max_bytes = 4000) const;

 private:
  struct Impl;
  friend class Pool;
  explicit Vm(std::unique_ptr<Impl> impl);
  Impl& impl() const;
  std::unique_ptr<Impl> impl_;
};

struct PoolConfig {
  VmConfig vm;             // every VM of the pool is a clone of this config's bake
  std::size_t min = 2;     // VMs kept restored and ready to hand out
  std::size_t max = 16;    // VMs alive at once (ready + handed out); acquire() waits beyond it
  // Ready VMs unused this long are stopped (memory back to the host) until the next acquire();
  // 0: keep them.
  std::chrono::seconds idle_timeout{0};
  std::chrono::seconds acquire_timeout{60};  // acquire() throws when no VM is ready by then
};

// A warm pool: VMs restored ahead of time from the image's bake, handed out one per acquire().
// A handed-out VM belongs to the caller; destroying it (or stop()) discards it, and the pool
// restores a fresh one in the background: no VM is ever handed out twice. A ready VM that died
// is replaced. Destroying the pool stops its ready VMs and its background thread; VMs handed
// out live on until their owners drop them. Thread-safe.
class Pool {
 public:
  // Makes the bake first (booting once) when the image has none for config.vm.
  explicit Pool(const Image& image, const PoolConfig& config = {});
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // A ready VM (restoring one now when none is). Throws sm::Error on acquire_timeout or when
  // the pool cannot restore VMs.
  [[nodiscard]] Vm acquire();
  [[nodiscard]] std::size_t ready() const;  // VMs restored and waiting
  [[nodiscard]] std::size_t alive() const;  // ready + handed out and not yet dropped

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace sm
