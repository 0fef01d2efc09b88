// OrderedPool: tasks on several threads, results handed back in order, failures stop the rest.
// TaskQueue: posted tasks on several threads; none lost, none after Close.
#include "net/ordered_pool.h"
#include "net/task_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace easysync::net {
namespace {

TEST(OrderedPool, RunsEachTaskOnceAndHandsThemBackInOrder) {
  for (size_t threads : {size_t{0}, size_t{1}, size_t{3}}) {
    OrderedPool pool(threads);
    EXPECT_EQ(pool.workers(), threads + 1);
    for (size_t count : {size_t{0}, size_t{1}, size_t{2}, size_t{57}}) {
      std::vector<std::atomic<int>> runs(count);
      std::vector<size_t> order;
      std::mutex mu;
      std::set<size_t> workers;
      const Status st = pool.Run(
          count,
          [&](size_t i, size_t w) {
            // Later tasks finish first now and then: the order must still hold.
            if (i % 5 == 0) std::this_thread::sleep_for(std::chrono::microseconds(300));
            runs[i].fetch_add(1);
            std::lock_guard<std::mutex> lock(mu);
            workers.insert(w);
            return Status::Ok();
          },
          [&](size_t i) {
            EXPECT_EQ(runs[i].load(), 1) << "handed back before it ran";
            order.push_back(i);
            return Status::Ok();
          });
      ASSERT_TRUE(st.ok()) << st.ToString();
      ASSERT_EQ(order.size(), count);
      for (size_t i = 0; i < count; ++i) {
        EXPECT_EQ(order[i], i);
        EXPECT_EQ(runs[i].load(), 1);
      }
      for (size_t w : workers) EXPECT_LT(w, pool.workers());
    }
  }
}

TEST(OrderedPool, AFailedTaskStopsTheRestAndNothingFromItIsHandedBack) {
  OrderedPool pool(2);
  std::atomic<size_t> started{0};
  std::vector<size_t> order;
  constexpr size_t kTasks = 10000;  // all of them would take the workers ~0.2 s
  const Status st = pool.Run(
      kTasks,
      [&](size_t i, size_t) {
        started.fetch_add(1);
        std::this_thread::sleep_for(std::chrono::microseconds(50));
        return i == 10 ? Status::Corruption("task 10") : Status::Ok();
      },
      [&](size_t i) {
        order.push_back(i);
        return Status::Ok();
      });
  EXPECT_EQ(st.code(), StatusCode::kCorruption);
  EXPECT_EQ(st.message(), "task 10");
  ASSERT_EQ(order.size(), 10u);  // 0..9, in order
  for (size_t i = 0; i < order.size(); ++i) EXPECT_EQ(order[i], i);
  // The rest never started. (How many started beside task 10 before its failure was seen
  // depends on how long its thread was kept off a CPU: a loaded machine saw 67.)
  EXPECT_LT(started.load(), kTasks / 2);
}

TEST(OrderedPool, AFailedHandBackStopsTheRun) {
  OrderedPool pool(2);
  std::vector<size_t> order;
  const Status st = pool.Run(
      100, [](size_t, size_t) { return Status::Ok(); },
      [&](size_t i) {
        if (i == 3) return Status::Unavailable("gone");
        order.push_back(i);
        return Status::Ok();
      });
  EXPECT_EQ(st.code(), StatusCode::kUnavailable);
  EXPECT_EQ(order.size(), 3u);
  // The pool runs the next job as usual.
  size_t handed = 0;
  EXPECT_TRUE(pool.Run(
                      5, [](size_t, size_t) { return Status::Ok(); },
                      [&](size_t) {
                        ++handed;
                        return Status::Ok();
                      })
                  .ok());
  EXPECT_EQ(handed, 5u);
}

TEST(OrderedPool, ManyShortRunsInARow) {
  // A run ends as soon as its last task is handed back, while the pool's threads may still be
  // on their way out of it: the next run must not meet anything of the last one.
  OrderedPool pool(3);
  for (int run = 0; run < 20000; ++run) {
    const size_t count = 1 + static_cast<size_t>(run % 8);
    std::atomic<size_t> done{0};
    size_t handed = 0;
    ASSERT_TRUE(pool.Run(
                        count,
                        [&](size_t, size_t) {
                          done.fetch_add(1);
                          return Status::Ok();
                        },
                        [&](size_t) {
                          ++handed;
                          return Status::Ok();
                        })
                    .ok());
    ASSERT_EQ(done.load(), count);
    ASSERT_EQ(handed, count);
  }
}

TEST(OrderedPool, ThreadsForThisProcessFollowTheCpusItMayUse) {
  const size_t cpus = std::thread::hardware_concurrency();
  EXPECT_EQ(OrderedPool::ThreadsForThisProcess(1), 0u);
  EXPECT_LE(OrderedPool::ThreadsForThisProcess(4), 3u);
  if (cpus >= 1) {
    EXPECT_LE(OrderedPool::ThreadsForThisProcess(64), cpus - 1);
  }
}

TEST(TaskQueue, RunsEveryTaskPostedOnItsThreadsAndCloseWaitsForThem) {
  for (size_t threads : {size_t{0}, size_t{1}, size_t{3}}) {
    std::atomic<int> runs{0};
    std::mutex mu;
    std::set<size_t> workers;
    std::set<std::thread::id> ids;
    {
      TaskQueue q(threads);
      EXPECT_EQ(q.threads(), threads);
      for (int i = 0; i < 200; ++i) {
        q.Post([&, i](size_t w) {
          if (i % 10 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
          std::lock_guard<std::mutex> lock(mu);
          workers.insert(w);
          ids.insert(std::this_thread::get_id());
          runs.fetch_add(1);
        });
      }
      q.Close();  // every task posted has run
      EXPECT_EQ(runs.load(), 200) << threads << " threads";
      // After Close a task runs at once, on the caller's thread, as worker 0.
      std::thread::id where;
      q.Post([&](size_t w) {
        EXPECT_EQ(w, 0u);
        where = std::this_thread::get_id();
      });
      EXPECT_EQ(where, std::this_thread::get_id());
    }
    EXPECT_EQ(runs.load(), 200);
    for (size_t w : workers) EXPECT_LT(w, std::max<size_t>(threads, 1));
    if (threads == 0) {
      EXPECT_EQ(ids, std::set<std::thread::id>{std::this_thread::get_id()});
    } else {
      EXPECT_EQ(ids.count(std::this_thread::get_id()), 0u);  // none on the poster's thread
    }
  }
}

TEST(TaskQueue, TheDestructorRunsWhatWasPosted) {
  std::atomic<int> runs{0};
  {
    TaskQueue q(2);
    for (int i = 0; i < 50; ++i) {
      q.Post([&](size_t) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        runs.fetch_add(1);
      });
    }
  }
  EXPECT_EQ(runs.load(), 50);
}

}  // namespace
}  // namespace easysync::net
