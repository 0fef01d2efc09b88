// UcxWorker's threading: a caller drives the worker when it is free (RunOrPost, TryProgress),
// the progress thread otherwise, and neither loses nor reorders a frame. Two workers in this
// process, connected over UCX TCP on loopback.
#include "net/ucx_worker.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
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
  explicit Side(std::chrono::nanoseconds spin, uint64_t max_frame_bytes = kDefaultMaxMessageBytes,
                bool relay = false) {
    UcxOptions o;
    o.transports = "tcp";
    o.spin = spin;
    o.max_frame_bytes = max_frame_bytes;
    o.relay = relay;
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
    if (keep_frames_) frames_.push_back(std::move(f));
    cv_.notify_all();
  }
  void OnOversize(ucp_ep_h, size_t bytes) override {
    std::lock_guard<std::mutex> lock(mu_);
    oversize_.push_back(bytes);
  }
  void KeepFrames() { keep_frames_ = true; }
  std::vector<Frame> frames() {
    std::lock_guard<std::mutex> lock(mu_);
    return frames_;
  }
  std::vector<size_t> oversize() {
    std::lock_guard<std::mutex> lock(mu_);
    return oversize_;
  }
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
  std::atomic<bool> keep_frames_{false};
  std::vector<Frame> frames_;
  std::vector<size_t> oversize_;
};

// A listening side and a connected one, both started; the connection is up once `b` got a
// first frame through it.
struct Pair {
  explicit Pair(std::chrono::nanoseconds spin = std::chrono::microseconds(50),
                uint64_t max_frame_bytes = kDefaultMaxMessageBytes)
      : a(spin, max_frame_bytes), b(spin, max_frame_bytes) {
    const uint16_t port = b.Listen();
    a.ConnectTo(port);
    a.worker().Start();
    b.worker().Start();
    a.Send(0, /*run_here=*/false);
    EXPECT_TRUE(b.AwaitFrames(1, /*drive=*/false)) << "the connection did not come up";
  }
  Side a, b;
};

// A plain TCP connection to 127.0.0.1:port, begun without waiting; -1 if no socket.
int BeginConnect(uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  (void)::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
  return fd;
}

// Whether the connection begun on fd completed within `wait`.
bool Connected(int fd, milliseconds wait) {
  pollfd p{fd, POLLOUT, 0};
  if (poll(&p, 1, static_cast<int>(wait.count())) != 1) return false;
  int error = 0;
  socklen_t len = sizeof(error);
  return getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) == 0 && error == 0;
}

TEST(UcxWorker, ConnectionRequestsArrivingWhileAListenerIsDestroyedAreRefused) {
  // UCX 1.13 frees its listener while connections it accepted may still be waiting for their
  // request; one that arrives after that called into the freed listener (a hub stopped while
  // its clients reconnected crashed). Here connections accepted before the worker is
  // destroyed send a request (a header and nothing more: the listener gets one; with no
  // handler left the worker refuses it unread) while the worker is being destroyed.
  for (int round = 0; round < 20; ++round) {
    auto b = std::make_unique<Side>(std::chrono::microseconds(50));
    const uint16_t port = b->Listen();
    b->worker().Start();
    std::vector<int> raw;
    for (int i = 0; i < 48; ++i) {
      raw.push_back(BeginConnect(port));
      ASSERT_GE(raw.back(), 0);
      ASSERT_TRUE(Connected(raw.back(), milliseconds(5000)));
    }
    std::this_thread::sleep_for(milliseconds(20));  // UCX accepts them
    b->worker().Stop();
    std::atomic<bool> go{false};
    std::thread sender([&] {
      while (!go.load()) std::this_thread::yield();
      // UCX's TCP connection manager: a 16-byte header (private data length, status), then
      // that many bytes of private data; none here.
      const uint8_t header[16] = {};
      for (int fd : raw) {
        (void)!send(fd, header, sizeof(header), MSG_NOSIGNAL);
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    });
    go = true;
    b.reset();
    sender.join();
    for (int fd : raw) close(fd);
  }
}

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

TEST(UcxWorker, AFrameSentInTwoPartsArrivesAsOneInItsPlace) {
  // SendSplit (how a tensor's bytes go from where they live): the head as the AM header, the
  // tail as its data, eager (small) and rendezvous (large), between whole frames. The receiver
  // gets head ++ tail, in the order sent.
  Pair p(std::chrono::nanoseconds(0));
  p.b.KeepFrames();
  ASSERT_GE(p.a.worker().max_frame_head(), size_t{64}) << "UCX allows no AM header";
  std::vector<Frame> want;
  std::vector<std::shared_ptr<std::vector<std::byte>>> tails;  // alive until delivered
  uint64_t n = 1;
  for (size_t tail_bytes : {size_t{0}, size_t{100}, size_t{4} << 20, size_t{3}, size_t{9} << 20}) {
    auto head = std::make_shared<Frame>(Numbered(n++, 48));
    auto tail = std::make_shared<std::vector<std::byte>>(tail_bytes);
    for (size_t i = 0; i < tail_bytes; ++i) (*tail)[i] = static_cast<std::byte>(i * 7 + n);
    Frame whole = *head;
    whole.insert(whole.end(), tail->begin(), tail->end());
    want.push_back(std::move(whole));
    tails.push_back(tail);
    std::shared_ptr<const Frame> h = head;
    p.a.worker().RunOrPost([&p, h, tail] {
      p.a.worker().SendSplit(p.a.ep(), h, tail->data(), tail->size(), UCS_MEMORY_TYPE_HOST);
    });
    want.push_back(Numbered(n, 16));
    p.a.Send(n++, /*run_here=*/true, 16);
  }
  ASSERT_TRUE(p.b.AwaitFrames(want.size() + 1, /*drive=*/false));
  const auto frames = p.b.frames();
  ASSERT_EQ(frames.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(frames[i].size(), want[i].size()) << i;
    EXPECT_TRUE(frames[i] == want[i]) << "frame " << i << " differs";
  }
}

TEST(UcxWorker, AHeadOverTheLimitArrivesAsAMalformedFrame) {
  // No sender of ours puts more than kMaxFrameHead bytes in the AM header; a peer that does
  // gets an empty frame handed to the handler (which drops it as malformed), and frames after
  // it still arrive. (UCX over TCP carries AM headers of several KiB.)
  Pair p(std::chrono::nanoseconds(0));
  p.b.KeepFrames();
  auto head = std::make_shared<const Frame>(Numbered(1, kMaxFrameHead + 1));
  auto tail = std::make_shared<std::vector<std::byte>>(100);
  p.a.worker().RunOrPost([&p, head, tail] {
    p.a.worker().SendSplit(p.a.ep(), head, tail->data(), tail->size(), UCS_MEMORY_TYPE_HOST);
  });
  p.a.Send(2, /*run_here=*/true, 16);
  ASSERT_TRUE(p.b.AwaitFrames(3, /*drive=*/false));
  const auto frames = p.b.frames();
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_TRUE(frames[0].empty());
  EXPECT_EQ(NumberOf(frames[1]), 2u);
}

TEST(UcxWorker, ATcpEndpointHasNoRdmaLane) {
  // What decides whether whole GPU values go from device memory (NetOptions::device_direct):
  // over TCP they do not.
  Pair p(std::chrono::nanoseconds(0));
  bool rdma = true;
  std::atomic<bool> asked{false};
  p.a.worker().Post([&] {
    rdma = p.a.worker().HasRdmaLane(p.a.ep());
    asked.store(true);
  });
  for (int i = 0; i < 2000 && !asked.load(); ++i) std::this_thread::sleep_for(milliseconds(1));
  ASSERT_TRUE(asked.load());
  EXPECT_FALSE(rdma);
}

TEST(UcxWorker, ASplitFrameOverTheLimitIsRefusedByItsWholeSize) {
  // The limit holds for head and tail together: a tail just under it with a head refused.
  constexpr uint64_t kMax = 1 << 20;
  Pair p(std::chrono::nanoseconds(0), kMax);
  auto head = std::make_shared<const Frame>(Numbered(1, 64));
  auto tail = std::make_shared<std::vector<std::byte>>(kMax - 32);
  p.a.worker().RunOrPost([&p, head, tail] {
    p.a.worker().SendSplit(p.a.ep(), head, tail->data(), tail->size(), UCS_MEMORY_TYPE_HOST);
  });
  p.a.Send(2, /*run_here=*/true, 16);
  ASSERT_TRUE(p.b.AwaitFrames(2, /*drive=*/false));
  const auto got = p.b.got();
  EXPECT_EQ(got.back().n, 2u);
  const auto oversize = p.b.oversize();
  ASSERT_EQ(oversize.size(), 1u);
  EXPECT_EQ(oversize[0], kMax - 32 + 64);
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

// The se.slice (ns) that /proc reports for thread tid of this process; 0 when not reported.
uint64_t SliceOf(long tid) {
  std::ifstream f("/proc/self/task/" + std::to_string(tid) + "/sched");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("se.slice", 0) == 0) return std::stoull(line.substr(line.find(':') + 1));
  }
  return 0;
}

// How many threads of this process run with the short time slice, once `expected` do (or a
// second passed: threads just started).
size_t ThreadsWithShortSlices(size_t expected) {
  size_t n = 0;
  for (int attempt = 0; attempt < 100; ++attempt) {
    n = 0;
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
      n += SliceOf(std::stol(task.path().filename())) == kShortSliceNs;
    }
    if (n == expected) break;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return n;
}

TEST(UcxWorker, ARelaysProgressThreadAsksForShortSlicesAndItsThreadsDoNot) {
  // Whether this kernel takes the request at all (Linux 6.12 and later), on a thread of its own.
  bool taken = false;
  uint64_t own = 0, child = 0;
  std::thread probe([&] {
    taken = AskForShortSlices();
    own = SliceOf(syscall(SYS_gettid));
    std::thread started([&] { child = SliceOf(syscall(SYS_gettid)); });
    started.join();
  });
  probe.join();
  if (!taken || own != kShortSliceNs) {
    GTEST_SKIP() << "this kernel keeps its own time slices (sched_setattr: " << taken
                 << ", se.slice " << own << ")";
  }
  EXPECT_NE(child, kShortSliceNs) << "a thread started by one with a short slice kept it";
  // A relay's progress thread is the one thread of this process with the short slice; a
  // client's, started first, is not.
  Side client(std::chrono::microseconds(50));
  client.worker().Start();
  Side relay(std::chrono::microseconds(50), kDefaultMaxMessageBytes, /*relay=*/true);
  relay.worker().Start();
  EXPECT_EQ(ThreadsWithShortSlices(1), 1u);
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_EQ(ThreadsWithShortSlices(1), 1u) << "a client's progress thread asked too";
}

}  // namespace
}  // namespace easysync::net
