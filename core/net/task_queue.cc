#include "net/task_queue.h"

#include <utility>

namespace easysync::net {

TaskQueue::TaskQueue(size_t threads) {
  threads_.reserve(threads);
  for (size_t w = 0; w < threads; ++w) threads_.emplace_back([this, w] { Loop(w); });
}

void TaskQueue::Post(std::function<void(size_t)> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!closed_ && !threads_.empty()) {
      tasks_.push_back(std::move(task));
      cv_.notify_one();
      return;
    }
  }
  task(0);
}

void TaskQueue::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
  std::lock_guard<std::mutex> join(join_mu_);
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

void TaskQueue::Loop(size_t worker) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return closed_ || !tasks_.empty(); });
    if (tasks_.empty()) return;  // closed, and nothing left to run
    std::function<void(size_t)> task = std::move(tasks_.front());
    tasks_.pop_front();
    lock.unlock();
    task(worker);
    lock.lock();
  }
}

}  // namespace easysync::net
