// UcxWorker's threading: a caller drives the worker when it is free (RunOrPost, TryProgress),
// the progress thread otherwise, and neither loses nor reorders a frame. Two workers in this
// process, connected over UCX TCP on loopback.
#include "net/ucx_worker.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace easysync::net {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

Frame Numbered(uint64_t n, size_t bytes = sizeof(uint64_t)) {
  Frame f(bytes, std::byte{0x5a});
  std::memcpy(f.data(), &n, sizeof(n));
  return f;
}

uint64_t NumberOf(const Frame& f) {
  uint64_t n = 0;
  if (f.size() >= sizeof(n)) std::memcpy(&n, f.data(), sizeof(n));
  return n;
}

// One side: records the frames it gets, and the thread that handled each.
class Side : public UcxWorker::Handler {
 public:
  explicit Side(std::chrono::nanoseconds spin) {
    UcxOptions o;
    o.transports = "tcp";
    o.spin = spin;
    worker_ = ValueOrThrow(UcxWorker::Create(o, this));
  }
  ~Side() override {
    worker_->Stop();
    worker_.reset();
  }
  UcxWorker& worker() { return *worker_; }

  // Starts listening (before Start); the port.
  uint16_t Listen() {
    const Status s = worker_->Listen("127.0.0.1", 0);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return worker_->listen_port();
  }
  void ConnectTo(uint16_t port) { ep_ = ValueOrThrow(worker_->Connect("127.0.0.1", port)); }
  ucp_ep_h ep() const { return ep_; }

  // Sends frame n from the progress thread (Post) or from here when the worker is free.
  void Send(uint64_t n, bool run_here, size_t bytes = sizeof(uint64_t)) {
    auto f = std::make_shared<const Frame>(Numbered(n, bytes));
    auto fn = [this, f] { worker_->Send(ep_, f); };
    if (run_here) {
      worker_->RunOrPost(fn);
    } else {
      worker_->Post(fn);
    }
  }

  // Waits until `count` frames arrived; with `drive`, this thread runs progress passes while
  // it waits. Whether they did.
  bool AwaitFrames(size_t count, bool drive, milliseconds timeout = milliseconds(20000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (got_.size() >= count) return true;
        if (!drive) {
          cv_.wait_until(lock, deadline, [&] { return got_.size() >= count; });
          continue;
        }
      }
      if (!worker_->TryProgress()) std::this_thread::yield();
    }
    std::lock_guard<std::mutex> lock(mu_);
    return got_.size() >= count;
  }

  struct Got {
    uint64_t n;
    size_t bytes;
    std::thread::id on;
  };
  std::vector<Got> got() {
    std::lock_guard<std::mutex> lock(mu_);
    return got_;
  }

  void OnFrame(ucp_ep_h, Frame f) override {
    std::lock_guard<std::mutex> lock(mu_);
    got_.push_back({NumberOf(f), f.size(), std::this_thread::get_id()});
    cv_.notify_all();
  }
  void OnOversize(ucp_ep_h, size_t) override {}
  void OnEndpointError(ucp_ep_h ep, ucs_status_t) override { worker_->Close(ep); }
  void OnConnectRequest(ucp_conn_request_h request) override {
    std::string peer;
    auto ep = worker_->Accept(request, &peer);
    if (ep.ok()) ep_ = *ep;
  }

 private:
  std::unique_ptr<UcxWorker> worker_;
  ucp_ep_h ep_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Got> got_;
};

// A listening side and a connected one, both started; the connection is up once `b` got a
// first frame through it.
struct Pair {
  explicit Pair(std::chrono::nanoseconds spin = std::chrono::microseconds(50)) : a(spin), b(spin) {
    const uint16_t port = b.Listen();
    a.ConnectTo(port);
    a.worker().Start();
    b.worker().Start();
    a.Send(0, /*run_here=*/false);
    EXPECT_TRUE(b.AwaitFrames(1, /*drive=*/false)) << "the connection did not come up";
  }
  Side a, b;
};

TEST(UcxWorker, ACallerSendsItselfWhenTheWorkerIsFreeAndOrderHolds) {
  // No spin: the sender's progress thread sleeps while it has nothing to do, so the worker is
  // free for the caller. First direct sends only, then posts and direct sends interleaved
  // (a post still queued sends the direct ones after it): the receiver sees all of them in
  // the order they were made, whichever thread sent each.
  Pair p(std::chrono::nanoseconds(0));
  constexpr uint64_t kDirect = 500, kFrames = 2000;
  std::atomic<int> ran_here{0};
  const std::thread::id me = std::this_thread::get_id();
  for (uint64_t n = 1; n <= kFrames; ++n) {
    if (n > kDirect && n % 3 == 0) {
      p.a.Send(n, /*run_here=*/false);
    } else {
      // Time for the progress thread to go back to sleep (a post wakes it).
      if (n <= kDirect && n % 10 == 0) std::this_thread::sleep_for(milliseconds(1));
      p.a.worker().RunOrPost([&, me] {
        if (std::this_thread::get_id() == me) ran_here.fetch_add(1);
      });
      p.a.Send(n, /*run_here=*/true);
    }
  }
  ASSERT_TRUE(p.b.AwaitFrames(kFrames + 1, /*drive=*/false));
  const auto got = p.b.got();
  for (uint64_t n = 0; n <= kFrames; ++n)
    ASSERT_EQ(got[n].n, n) << "frame " << n << " out of order";
  EXPECT_GT(ran_here.load(), 0) << "no RunOrPost ran on the calling thread";
}

TEST(UcxWorker, AWaitingCallerHandlesWhatArrivesOnItsOwnThread) {
  // No spin: an idle progress thread sleeps in poll(), so a frame finds the receiving caller
  // polling already and its progress thread still to be woken. One frame at a time.
  Pair p(std::chrono::nanoseconds(0));
  constexpr uint64_t kFrames = 200;
  for (uint64_t n = 1; n <= kFrames; ++n) {
    p.a.Send(n, /*run_here=*/true);
    ASSERT_TRUE(p.b.AwaitFrames(n + 1, /*drive=*/true)) << "frame " << n << " never arrived";
  }
  const auto got = p.b.got();
  size_t here = 0;
  for (uint64_t n = 0; n <= kFrames; ++n) {
    ASSERT_EQ(got[n].n, n);
    if (got[n].on == std::this_thread::get_id()) ++here;
  }
  EXPECT_GT(here, 0u) << "every frame was handled by the progress thread";
}

TEST(UcxWorker, ASleepingProgressThreadFinishesWhatACallerLeftInFlight) {
  // No spin: the progress threads sleep in poll() whenever idle. A large frame (rendezvous)
  // sent from the caller's thread needs progress after the call returns; nobody drives the
  // sender afterwards but its progress thread.
  Pair p(std::chrono::nanoseconds(0));
  constexpr size_t kBytes = 8 << 20;
  for (uint64_t n = 1; n <= 4; ++n) {
    std::this_thread::sleep_for(milliseconds(20));  // both progress threads asleep
    p.a.Send(n, /*run_here=*/true, kBytes);
    ASSERT_TRUE(p.b.AwaitFrames(n + 1, /*drive=*/false, milliseconds(10000)))
        << "frame " << n << " never arrived";
  }
  const auto got = p.b.got();
  for (uint64_t n = 1; n <= 4; ++n) {
    EXPECT_EQ(got[n].n, n);
    EXPECT_EQ(got[n].bytes, kBytes);
  }
}

TEST(UcxWorker, StopWaitsForACallerThatDrivesTheWorker) {
  auto p = std::make_unique<Pair>();
  std::atomic<bool> go{true};
  std::atomic<int64_t> passes{0};
  std::thread driver([&] {
    while (go.load()) {
      p->b.worker().TryProgress();
      passes.fetch_add(1);
    }
  });
  for (uint64_t n = 1; n <= 100; ++n) p->a.Send(n, /*run_here=*/true);
  ASSERT_TRUE(p->b.AwaitFrames(101, /*drive=*/false));
  p->b.worker().Stop();  // while the driver keeps trying
  const int64_t before = passes.load();
  while (passes.load() < before + 1000) std::this_thread::yield();
  EXPECT_FALSE(p->b.worker().TryProgress()) << "a stopped worker was driven";
  go = false;
  driver.join();
  p.reset();
}

TEST(UcxWorker, AYieldShowsAThreadComputingOnTheSameCpu) {
  // Both threads on this thread's CPU: a yield hands the CPU to the computing thread for its
  // time slice, which YieldQuickly reports (a spinning thread then sleeps instead).
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(sched_getcpu(), &one);
  cpu_set_t before;
  ASSERT_EQ(sched_getaffinity(0, sizeof(before), &before), 0);
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
  std::atomic<bool> go{true};
  std::thread computes([&] {
    (void)sched_setaffinity(0, sizeof(one), &one);
    volatile uint64_t x = 0;
    while (go.load(std::memory_order_relaxed)) x = x + 1;
  });
  bool seen = false;
  for (int i = 0; i < 200 && !seen; ++i) seen = !YieldQuickly();
  go = false;
  computes.join();
  ASSERT_EQ(sched_setaffinity(0, sizeof(before), &before), 0);
  EXPECT_TRUE(seen) << "200 yields never gave the CPU to the thread computing beside this one";
}

}  // namespace
}  // namespace easysync::net
