// sm::Pool: VMs restored ahead of time from an image's bake (and warmed with one exec), one
// background thread keeping `min` of them ready (plus one for each caller waiting in
// acquire()), never more than `max` alive. A VM handed out is the caller's; the pool only counts it (through the lease its
// Vm::Impl holds) until it is dropped.
#include <condition_variable>
#include <deque>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "api/vm_impl.h"
#include "common/error.h"

namespace sm {
using Clock = std::chrono::steady_clock;

struct Pool::Impl : std::enable_shared_from_this<Impl> {
  Image image;
  PoolConfig config;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<Vm> ready;        // guarded by mu
  std::size_t alive = 0;       // guarded by mu: VMs whose lease is held (ready and handed out)
  std::size_t restoring = 0;   // guarded by mu
  std::size_t waiting = 0;     // guarded by mu: callers blocked in acquire()
  bool stopping = false;       // guarded by mu
  bool idle = false;           // guarded by mu: drained after idle_timeout
  std::string last_error;      // guarded by mu
  Clock::time_point last_acquire = Clock::now();
  std::thread filler;

  Impl(Image img, PoolConfig cfg) : image(std::move(img)), config(std::move(cfg)) {}

  // A lease that counts the VM in `alive` until the VM is dropped.
  std::shared_ptr<void> lease() {
    std::weak_ptr<Impl> weak = weak_from_this();
    return std::shared_ptr<void>(nullptr, [weak](void*) {
      if (auto self = weak.lock()) {
        {
          std::lock_guard lock(self->mu);
          --self->alive;
        }
        self->cv.notify_all();
      }
    });
  }

  void adopt(Vm vm) {
    vm.impl_->lease = lease();  // counted from here; `alive` was raised by the caller
    std::lock_guard lock(mu);
    ready.push_back(std::move(vm));
  }

  [[nodiscard]] std::size_t target() const { return idle ? waiting : config.min + waiting; }

  void fill() {
    std::unique_lock lock(mu);
    while (!stopping) {
      // Drop ready VMs that died on their own (a crash): they are replaced below.
      std::vector<Vm> dead;
      for (auto it = ready.begin(); it != ready.end();) {
        if (it->running()) {
          ++it;
        } else {
          dead.push_back(std::move(*it));
          it = ready.erase(it);
        }
      }
      if (!dead.empty()) {
        lock.unlock();
        dead.clear();  // their leases go, and `alive` with them
        lock.lock();
        continue;
      }
      if (config.idle_timeout.count() > 0 && !idle && waiting == 0 &&
          Clock::now() - last_acquire > config.idle_timeout) {
        idle = true;
        std::deque<Vm> drop = std::move(ready);
        ready.clear();
        lock.unlock();
        drop.clear();
        lock.lock();
        continue;
      }
      if (ready.size() + restoring < target() && alive + restoring < config.max) {
        ++restoring;
        lock.unlock();
        std::optional<Vm> vm;
        std::string error;
        try {
          vm.emplace(Vm::start(image, config.vm));
          // Warm it: a clone's first exec faults in the guest pages a process start touches
          // (copy-on-write from the snapshot); paid here, not by the caller of acquire().
          if (vm->exec({"true"}).exit_code != 0) throw Error("the warm-up exec failed");
        } catch (const std::exception& e) {
          vm.reset();
          error = e.what();
        }
        lock.lock();
        --restoring;
        if (vm) {
          ++alive;
          lock.unlock();
          adopt(std::move(*vm));
          lock.lock();
          last_error.clear();
        } else {
          last_error = error;
          spdlog::warn("pool: could not restore a VM: {}", error);
          cv.notify_all();
          cv.wait_for(lock, std::chrono::seconds(1), [&] { return stopping; });
        }
        cv.notify_all();
        continue;
      }
      // Wake for an acquire, a dropped VM, or to check on the ready ones now and then.
      cv.wait_for(lock, std::chrono::milliseconds(500));
    }
  }
};

Pool::Pool(const Image& image, const PoolConfig& config) : impl_(std::make_shared<Impl>(image, config)) {
  if (config.max == 0) throw Error("a pool needs max >= 1");
  if (config.min > config.max) throw Error(fmt::format("a pool's min ({}) exceeds its max ({})", config.min, config.max));
  // The first VM makes the image's bake when it has none (a boot); every later one restores it.
  Vm first = Vm::start(image, config.vm);
  {
    std::lock_guard lock(impl_->mu);
    ++impl_->alive;
  }
  impl_->adopt(std::move(first));
  impl_->filler = std::thread([impl = impl_.get()] { impl->fill(); });
}

Pool::~Pool() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  if (impl_->filler.joinable()) impl_->filler.join();
  std::deque<Vm> drop;
  {
    std::lock_guard lock(impl_->mu);
    drop = std::move(impl_->ready);
    impl_->ready.clear();
  }
  drop.clear();  // stops them and removes their files
}

Vm Pool::acquire() {
  Impl& p = *impl_;
  std::unique_lock lock(p.mu);
  p.last_acquire = Clock::now();
  p.idle = false;
  ++p.waiting;
  p.cv.notify_all();
  const auto deadline = Clock::now() + p.config.acquire_timeout;
  for (;;) {
    while (!p.ready.empty()) {
      Vm vm = std::move(p.ready.front());
      p.ready.pop_front();
      if (vm.running()) {
        --p.waiting;
        p.cv.notify_all();  // refill behind it
        return vm;
      }
      lock.unlock();
      vm.stop();  // died while it waited: never hand it out
      lock.lock();
    }
    if (p.cv.wait_until(lock, deadline) == std::cv_status::timeout && p.ready.empty()) {
      --p.waiting;
      throw Error(fmt::format("no VM became ready in the pool within {} s{}", p.config.acquire_timeout.count(),
                              p.last_error.empty() ? std::string() : " (last failure: " + p.last_error + ")"));
    }
  }
}

std::size_t Pool::ready() const {
  std::lock_guard lock(impl_->mu);
  return impl_->ready.size();
}

std::size_t Pool::alive() const {
  std::lock_guard lock(impl_->mu);
  return impl_->alive;
}

}  // namespace sm
