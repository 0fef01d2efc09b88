// A few threads that run posted tasks, each on whichever thread is free (tasks start in the
// order posted and may finish in any order). Idle threads sleep on a condition variable.
// Close() (or the destructor) runs what was posted, joins the threads, and from then on
// Post runs a task on the caller's thread, so that no task is lost nor runs after Close.
//
// Thread-safety: Post and Close from any thread.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace easysync::net {

class TaskQueue {
 public:
  explicit TaskQueue(size_t threads);
  ~TaskQueue() { Close(); }
  TaskQueue(const TaskQueue&) = delete;
  TaskQueue& operator=(const TaskQueue&) = delete;

  // How many threads run tasks; a task's `worker` argument is below it.
  size_t threads() const { return threads_.size(); }

  // Runs task(worker) on one of the threads; after Close (or without threads), on the
  // caller's thread as worker 0.
  void Post(std::function<void(size_t worker)> task);

  // Runs every task posted, then joins the threads. Idempotent.
  void Close();

 private:
  void Loop(size_t worker);

  std::mutex mu_;  // guards tasks_, closed_
  std::condition_variable cv_;
  std::deque<std::function<void(size_t)>> tasks_;
  bool closed_ = false;
  std::mutex join_mu_;  // one Close joins
  std::vector<std::thread> threads_;
};

}  // namespace easysync::net
