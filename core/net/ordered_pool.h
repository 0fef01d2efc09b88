// A few threads that run the independent parts of one job beside the caller (the segments of
// a large write) and hand the results back in order, so that the caller can send each as soon
// as it and everything before it are ready. Idle threads sleep on a condition variable.
//
// Thread-safety: Run() from one thread at a time.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "easysync/function_ref.h"
#include "easysync/status.h"

namespace easysync::net {

class OrderedPool {
 public:
  // `threads` threads besides the caller's (0: Run runs everything on the caller's thread).
  explicit OrderedPool(size_t threads);
  ~OrderedPool();
  OrderedPool(const OrderedPool&) = delete;
  OrderedPool& operator=(const OrderedPool&) = delete;

  // Workers: the caller's thread (worker 0) and the pool's.
  size_t workers() const { return threads_.size() + 1; }

  // Runs task(i, worker) for every i in [0, count) on the workers, and ready(i) on the
  // caller's thread for each i in increasing order once task(i) and every earlier task are
  // done. After a task or a ready() fails no more tasks start; Run returns the first failure
  // once the tasks already running have finished (ready() is not called from the failed one
  // on). The callables must be safe to call from several threads for different i.
  Status Run(size_t count, FunctionRef<Status(size_t i, size_t worker)> task,
             FunctionRef<Status(size_t i)> ready);

  // The pool's size for this process: one thread fewer than the CPUs it may run on, at most
  // max_workers - 1.
  static size_t ThreadsForThisProcess(size_t max_workers);

 private:
  struct Job;
  void Loop(size_t worker);
  // Takes and runs tasks of `job` until none are left.
  static void Work(Job& job, size_t worker);

  std::vector<std::thread> threads_;
  std::mutex mu_;  // guards job_, generation_, stop_
  std::condition_variable cv_;
  Job* job_ = nullptr;
  size_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace easysync::net
