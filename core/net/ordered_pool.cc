#include "net/ordered_pool.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <memory>

namespace easysync::net {

struct OrderedPool::Job {
  size_t count = 0;
  FunctionRef<Status(size_t, size_t)> task;
  std::atomic<size_t> next{0};  // the next task to start; count once stopped
  std::mutex mu;                // guards state, failure, running
  std::condition_variable cv;   // a task finished
  std::vector<uint8_t> state;   // per task: 0 not done, 1 done, 2 failed
  Status failure;               // the first task that failed, by index
  size_t failed_at = SIZE_MAX;
  size_t running = 0;  // pool threads inside Work

  Job(size_t n, FunctionRef<Status(size_t, size_t)> t) : count(n), task(t), state(n, 0) {}
};

OrderedPool::OrderedPool(size_t threads) {
  threads_.reserve(threads);
  for (size_t w = 1; w <= threads; ++w) threads_.emplace_back([this, w] { Loop(w); });
}

OrderedPool::~OrderedPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

size_t OrderedPool::ThreadsForThisProcess(size_t max_workers) {
  cpu_set_t set;
  CPU_ZERO(&set);
  const size_t cpus =
      sched_getaffinity(0, sizeof(set), &set) == 0 ? static_cast<size_t>(CPU_COUNT(&set)) : 1;
  return std::min(cpus, std::max<size_t>(max_workers, 1)) - 1;
}

void OrderedPool::Work(Job& job, size_t worker) {
  for (;;) {
    const size_t i = job.next.fetch_add(1);
    if (i >= job.count) return;
    Status st = job.task(i, worker);
    {
      std::lock_guard<std::mutex> lock(job.mu);
      job.state[i] = st.ok() ? 1 : 2;
      if (!st.ok()) {
        job.next.store(job.count);  // start nothing more
        if (i < job.failed_at) {
          job.failed_at = i;
          job.failure = std::move(st);
        }
      }
    }
    job.cv.notify_all();
  }
}

void OrderedPool::Loop(size_t worker) {
  size_t seen = 0;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    Job* job = job_;
    if (job == nullptr) continue;  // that job ended before this thread woke
    {
      std::lock_guard<std::mutex> job_lock(job->mu);
      ++job->running;
    }
    lock.unlock();
    Work(*job, worker);
    {
      // Notified under the lock: once Run sees no thread running it destroys the job.
      std::lock_guard<std::mutex> job_lock(job->mu);
      --job->running;
      job->cv.notify_all();
    }
    lock.lock();
  }
}

Status OrderedPool::Run(size_t count, FunctionRef<Status(size_t, size_t)> task,
                        FunctionRef<Status(size_t)> ready) {
  Job job(count, task);
  if (!threads_.empty() && count > 1) {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &job;
    ++generation_;
  }
  cv_.notify_all();
  Status result;
  size_t sent = 0;
  // Calls ready() for every task done in order from `sent`; false once something failed.
  const auto flush = [&](std::unique_lock<std::mutex>& lock) {
    while (sent < count && job.state[sent] != 0) {
      if (job.state[sent] == 2) return false;
      lock.unlock();
      Status st = ready(sent);
      lock.lock();
      if (!st.ok()) {
        job.next.store(count);
        result = std::move(st);
        return false;
      }
      ++sent;
    }
    return true;
  };
  bool ok = true;
  for (;;) {
    const size_t i = job.next.fetch_add(1);
    if (i >= count) break;
    Status st = task(i, 0);
    std::unique_lock<std::mutex> lock(job.mu);
    job.state[i] = st.ok() ? 1 : 2;
    if (!st.ok()) {
      job.next.store(count);
      if (i < job.failed_at) {
        job.failed_at = i;
        job.failure = std::move(st);
      }
    }
    if (!(ok = flush(lock))) break;
  }
  {
    // The rest, as the pool's threads finish them; then none of them may still hold the job.
    std::unique_lock<std::mutex> lock(job.mu);
    while (ok && sent < count) {
      job.cv.wait(lock, [&] { return job.state[sent] != 0; });
      ok = flush(lock);
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = nullptr;
  }
  {
    std::unique_lock<std::mutex> lock(job.mu);
    job.cv.wait(lock, [&] { return job.running == 0; });
  }
  if (!result.ok()) return result;
  if (job.failed_at != SIZE_MAX) return job.failure;
  return Status::Ok();
}

}  // namespace easysync::net
