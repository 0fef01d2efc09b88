// shm-latency: one-way latency of an int64 attribute update seen by another process.
//
// Two processes ping-pong through two Synced<int64_t> attributes (each side really writes
// with set() and really reads the value with get()); one-way = round trip / 2. Each wait
// mode is compared with the floor of its mechanism measured in the same run:
//   poll:  a raw ping-pong over one shared cache line, both sides spinning;
//   futex: a raw ping-pong over one shared 32-bit futex word, both sides sleeping at once.
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <new>
#include <string>
#include <vector>

#include "bench.h"
#include "easysync/client.h"
#include "easysync/synced.h"
#include "ping_pong.h"
#include "proc_util.h"
#include "stats_util.h"

namespace easysync::bench {
namespace {

constexpr int64_t kDefaultIters = 20000;
constexpr double kDefaultSeconds = 4;  // per configuration: 4 of them stay under 20 s
constexpr auto kPeerTimeout = std::chrono::seconds(10);
constexpr auto kAcquire = std::memory_order_acquire;
constexpr auto kRelease = std::memory_order_release;

struct Plan {
  int64_t warmup;
  int64_t iters;
  double seconds;
};

// Runs round_trip(i) for i = 1, 2, ...: `warmup` untimed ones, then timed ones until
// `iters` samples or `seconds` of measuring. Stores round trip / 2 per sample.
template <class Fn>
bool Measure(const Plan& plan, std::vector<double>* one_way, Fn&& round_trip) {
  int64_t i = 1;
  for (; i <= plan.warmup; ++i) {
    if (!round_trip(i)) return false;
  }
  one_way->clear();
  one_way->reserve(static_cast<size_t>(plan.iters));
  const auto cap = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(plan.seconds));
  for (; static_cast<int64_t>(one_way->size()) < plan.iters; ++i) {
    const auto t0 = Clock::now();
    if (!round_trip(i)) return false;
    const auto t1 = Clock::now();
    one_way->push_back(NanosSince(t0, t1) / 2);
    if (t1 > cap) break;
  }
  return true;
}

// ---- poll floor: one shared cache line, both sides spinning on it.

constexpr uint64_t kSpinStop = ~uint64_t{0};

// Spins until `word` holds `want`; false on kSpinStop or when the peer seems gone. The
// clock is read once per 64Ki spins, so it is off the path being measured.
bool SpinFor(const std::atomic<uint64_t>& word, uint64_t want) {
  uint32_t spins = 0;
  Clock::time_point deadline{};
  for (;;) {
    const uint64_t v = word.load(kAcquire);
    if (v == want) return true;
    if (v == kSpinStop) return false;
    if (++spins == 0x10000) {
      spins = 0;
      const auto now = Clock::now();
      if (deadline == Clock::time_point{}) deadline = now + kPeerTimeout;
      if (now > deadline) return false;
    }
  }
}

bool RawSpinFloor(const Plan& plan, std::vector<double>* one_way) {
  SharedAnon mem(4096);  // page-aligned, so the word has a cache line of its own
  auto* word = new (mem.As<void>()) std::atomic<uint64_t>(0);
  const pid_t pid = ForkPinned([&] {
    for (uint64_t k = 1;; ++k) {
      if (!SpinFor(*word, 2 * k - 1)) return word->load() == kSpinStop ? 0 : 1;
      word->store(2 * k, kRelease);
    }
  });
  if (pid < 0) return false;
  const bool ok = Measure(plan, one_way, [&](int64_t i) {
    word->store(2 * static_cast<uint64_t>(i) - 1, kRelease);
    return SpinFor(*word, 2 * static_cast<uint64_t>(i));
  });
  word->store(kSpinStop, kRelease);
  return JoinChild(pid, !ok) && ok;
}

// ---- futex floor: one shared 32-bit word, FUTEX_WAIT at once, FUTEX_WAKE after each store.

constexpr uint32_t kFutexStop = ~uint32_t{0};

long Futex(std::atomic<uint32_t>* word, int op, uint32_t val, const timespec* timeout) {
  // Not FUTEX_PRIVATE: the word is shared between two processes, like the segment's bell.
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, val, timeout, nullptr, 0);
}

// Sleeps (never spins) until `word` holds `want`; false on kFutexStop or a silent peer.
bool FutexFor(std::atomic<uint32_t>& word, uint32_t want) {
  int timeouts = 0;
  for (;;) {
    const uint32_t v = word.load(kAcquire);
    if (v == want) return true;
    if (v == kFutexStop) return false;
    const timespec one_second{1, 0};
    if (Futex(&word, FUTEX_WAIT, v, &one_second) != 0 && errno == ETIMEDOUT &&
        ++timeouts >= kPeerTimeout.count()) {
      return false;
    }
  }
}

void FutexStore(std::atomic<uint32_t>& word, uint32_t v) {
  word.store(v, kRelease);
  Futex(&word, FUTEX_WAKE, INT_MAX, nullptr);
}

bool RawFutexFloor(const Plan& plan, std::vector<double>* one_way) {
  SharedAnon mem(4096);
  auto* word = new (mem.As<void>()) std::atomic<uint32_t>(0);
  const pid_t pid = ForkPinned([&] {
    for (uint32_t k = 1;; ++k) {
      if (!FutexFor(*word, 2 * k - 1)) return word->load() == kFutexStop ? 0 : 1;
      FutexStore(*word, 2 * k);
    }
  });
  if (pid < 0) return false;
  const bool ok = Measure(plan, one_way, [&](int64_t i) {
    FutexStore(*word, 2 * static_cast<uint32_t>(i) - 1);
    return FutexFor(*word, 2 * static_cast<uint32_t>(i));
  });
  FutexStore(*word, kFutexStop);
  return JoinChild(pid, !ok) && ok;
}

// ---- EasySync: Synced<int64_t> ping (parent writes) and pong (child echoes).

constexpr char kObject[] = "bench_latency";

ShmOptions OptionsFor(WaitMode mode) {
  ShmOptions options;
  options.wait_mode = mode;
  if (mode == WaitMode::kFutex) options.spin = std::chrono::nanoseconds(0);  // sleep at once
  return options;
}

bool EasySyncPingPong(WaitMode mode, const std::string& cluster, const Plan& plan,
                      std::vector<double>* one_way) {
  const ShmOptions options = OptionsFor(mode);
  const pid_t pid = ForkPinned([&] {
    auto client = shm_connect(cluster, options);
    return PingPong(*client, kObject).Echo();
  });
  if (pid < 0) return false;
  bool ok = false;
  try {
    auto client = shm_connect(cluster, options);
    PingPong pp(*client, kObject);
    ok = pp.WaitReady() && Measure(plan, one_way, [&](int64_t i) { return pp.Round(i); });
    pp.Finish();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "easysync-bench: shm-latency: %s\n", e.what());
    ok = false;
  }
  return JoinChild(pid, !ok) && ok;
}

struct ModeResult {
  const char* mode;
  double p50, p99, floor_p50, floor_p99;
  int64_t iters;
};

}  // namespace

int RunShmLatency(const Args& args) {
  const int64_t iters = args.iters > 0 ? args.iters : kDefaultIters;
  const Plan plan{std::max<int64_t>(1000, iters / 10), iters,
                  args.seconds > 0 ? args.seconds : kDefaultSeconds};
  std::vector<ModeResult> results;
  for (WaitMode mode : {WaitMode::kPoll, WaitMode::kFutex}) {
    const bool poll = mode == WaitMode::kPoll;
    const char* name = poll ? "poll" : "futex";
    std::vector<double> floor, measured;
    const bool floor_ok = poll ? RawSpinFloor(plan, &floor) : RawFutexFloor(plan, &floor);
    if (!floor_ok) {
      std::fprintf(stderr, "easysync-bench: shm-latency: the %s floor ping-pong failed\n", name);
      return 1;
    }
    const std::string cluster = "bench_lat_" + std::to_string(getpid()) + "_" + std::string(name);
    if (!EasySyncPingPong(mode, cluster, plan, &measured)) {
      std::fprintf(stderr, "easysync-bench: shm-latency: the %s ping-pong failed\n", name);
      return 1;
    }
    ModeResult r{name,
                 Percentile(measured, 0.5),
                 Percentile(measured, 0.99),
                 Percentile(floor, 0.5),
                 Percentile(floor, 0.99),
                 static_cast<int64_t>(measured.size())};
    if (args.json) {
      JsonLine()
          .Add("suite", "shm-latency")
          .Add("mode", r.mode)
          .Add("p50_ns", r.p50)
          .Add("p99_ns", r.p99)
          .Add("floor_p50_ns", r.floor_p50)
          .Add("floor_p99_ns", r.floor_p99)
          .Add("ratio_p50", r.p50 / r.floor_p50)
          .Add("iters", r.iters)
          .Print();
    }
    results.push_back(r);
  }
  if (!args.json) {
    std::printf("shm-latency: one-way latency of a Synced<int64_t> update (round trip / 2)\n");
    Table table({"mode", "p50_ns", "p99_ns", "floor_p50_ns", "floor_p99_ns", "ratio_p50", "iters"});
    for (const auto& r : results) {
      table.Row({r.mode, Fixed(r.p50, 0), Fixed(r.p99, 0), Fixed(r.floor_p50, 0),
                 Fixed(r.floor_p99, 0), Fixed(r.p50 / r.floor_p50, 2), std::to_string(r.iters)});
    }
    table.Print();
    std::printf("floors: poll = raw spin on one shared cache line; futex = raw FUTEX_WAIT/WAKE.\n");
  }
  return 0;
}

}  // namespace easysync::bench
