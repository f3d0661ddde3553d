#include "init.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <signal.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "log.h"

namespace sm::agent {

namespace {

// supermachine's paravirtual exit port: a byte written here ends the VM with that status
// (docs/boot.md; tests/vm/guest/sm-poweroff.c).
constexpr unsigned short kExitPort = 0x501;

void make_dir(const std::string& path, mode_t mode) {
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST) throw errno_error("mkdir " + path);
}

void do_mount(const char* source, const std::string& target, const char* type, unsigned long flags,
              const char* data) {
  if (::mount(source, target.c_str(), type, flags, data) != 0)
    throw errno_error(std::string("mount ") + type + " " + source + " on " + target);
}

// The image root: erofs or ext4, read-only. With rootfstype=auto, erofs is tried first (it is
// what the image builder produces by default) and ext4 second.
void mount_image(const BootConfig& c, const std::string& target) {
  if (c.rootfstype != "auto") {
    do_mount(c.root.c_str(), target, c.rootfstype.c_str(), MS_RDONLY, nullptr);
    return;
  }
  std::string errors;
  for (const char* type : {"erofs", "ext4"}) {
    if (::mount(c.root.c_str(), target.c_str(), type, MS_RDONLY, nullptr) == 0) return;
    errors += std::string(type) + ": " + std::strerror(errno) + "; ";
  }
  throw Error("mount the image " + c.root + " on " + target + " failed (" + errors +
              "is it an erofs or ext4 image, attached as the first disk?)");
}

void move_mount(const std::string& from, const std::string& to) {
  make_dir(to, 0755);
  do_mount(from.c_str(), to, "none", MS_MOVE, nullptr);
}

void symlink_if_missing(const char* target, const char* link) {
  if (::symlink(target, link) != 0 && errno != EEXIST) SM_LOG_ERROR("symlink %s: %s", link, std::strerror(errno));
}

void loopback_up() {
  int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return;
  struct ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (::ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (::ioctl(s, SIOCSIFFLAGS, &ifr) != 0) SM_LOG_ERROR("bringing up lo: %s", std::strerror(errno));
  }
  ::close(s);
}

}  // namespace

void mount_early() {
  make_dir("/proc", 0555);
  make_dir("/sys", 0555);
  make_dir("/dev", 0755);
  do_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
  do_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
  if (::mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") != 0 && errno != EBUSY)
    throw errno_error("mount devtmpfs on /dev");
}

void setup_root(const BootConfig& c) {
  if (c.root != "none") {
    const std::string lower = "/sm/lower", rw = "/sm/rw", root = "/sm/root";
    make_dir("/sm", 0700);
    for (const auto& d : {lower, rw, root}) make_dir(d, 0755);
    mount_image(c, lower);
    if (!c.scratch.empty()) do_mount(c.scratch.c_str(), rw, "ext4", MS_NOATIME, nullptr);
    else do_mount("tmpfs", rw, "tmpfs", 0, "mode=0755");
    make_dir(rw + "/upper", 0755);
    make_dir(rw + "/work", 0755);
    std::string opts = "lowerdir=" + lower + ",upperdir=" + rw + "/upper,workdir=" + rw + "/work";
    do_mount("overlay", root, "overlay", 0, opts.c_str());

    // Carry the kernel filesystems over, then make the overlay the root. The initramfs (rootfs)
    // cannot be unmounted or pivot_root'ed away: move the new root over / and chroot, as
    // switch_root does, after freeing the agent binary's pages in the initramfs.
    for (const char* m : {"/proc", "/sys", "/dev"}) move_mount(m, root + m);
    ::unlink("/init");
    if (::chdir(root.c_str()) != 0) throw errno_error("chdir " + root);
    do_mount(".", "/", "none", MS_MOVE, nullptr);
    if (::chroot(".") != 0) throw errno_error("chroot");
    if (::chdir("/") != 0) throw errno_error("chdir /");
  }

  make_dir("/dev/pts", 0755);
  do_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5");
  ::unlink("/dev/ptmx");
  symlink_if_missing("pts/ptmx", "/dev/ptmx");
  make_dir("/dev/shm", 01777);
  do_mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  make_dir("/run", 0755);
  do_mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
  make_dir("/tmp", 01777);
  do_mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  symlink_if_missing("/proc/self/fd", "/dev/fd");
  symlink_if_missing("/proc/self/fd/0", "/dev/stdin");
  symlink_if_missing("/proc/self/fd/1", "/dev/stdout");
  symlink_if_missing("/proc/self/fd/2", "/dev/stderr");

  if (::sethostname(c.hostname.data(), c.hostname.size()) != 0)
    SM_LOG_ERROR("sethostname: %s", std::strerror(errno));
  loopback_up();
  // Containers expect a generous open-file limit (Docker's default is 1048576); processes
  // inherit it from PID 1.
  struct rlimit nofile{1048576, 1048576};
  if (::setrlimit(RLIMIT_NOFILE, &nofile) != 0) SM_LOG_DEBUG("raising RLIMIT_NOFILE: %s", std::strerror(errno));
}

void power_off(int status) {
  // Whatever the main process left behind dies with the VM, as in a container.
  ::kill(-1, SIGKILL);
  ::sync();
  if (::ioperm(kExitPort, 1, 1) == 0) {
    ::outb(static_cast<unsigned char>(status & 0xff), kExitPort);
  } else {
    SM_LOG_ERROR("ioperm(0x%x): %s; rebooting instead, the exit status %d is lost", kExitPort,
                 std::strerror(errno), status);
  }
  // Not reached under supermachine's VMM. Elsewhere, reboot (the i8042 reset ends the VM).
  ::reboot(RB_AUTOBOOT);
  for (;;) ::pause();
}

}  // namespace sm::agent
