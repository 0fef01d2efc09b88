// The EasySync side of the latency suites: A writes `ping`, B echoes it as `pong`, through
// whatever transport the two clients use (a shared segment, or a hub over UCX or UDP).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "easysync/synced.h"
#include "proc_util.h"

namespace easysync::bench {

// T: the value type (int64_t, double); round i sends T(i), so T must hold the round numbers
// exactly. `transport` applies to both attributes.
template <class T>
class BasicPingPong : public SyncedObject {
 public:
  // How long either side waits for the other before it gives up.
  static constexpr auto kPeerTimeout = std::chrono::seconds(10);

  BasicPingPong(Client& c, const std::string& object, Transport transport = Transport::kDefault)
      : SyncedObject(c, object, "", transport) {}

  // B: signals it is ready, then echoes every ping until a negative one (echoed too, so that
  // A knows it arrived); an exit code.
  int Echo() {
    pong_.set(T{0});
    for (;;) {
      if (!ping_.wait_for_change(kPeerTimeout)) return 1;
      const T v = ping_.get();
      pong_.set(v);
      if (v < 0) return 0;
    }
  }
  // A: waits until B is ready.
  bool WaitReady() {
    while (pong_.version() == 0) {
      if (!pong_.wait_for_change(kPeerTimeout)) return false;
    }
    return true;
  }
  // A: one round trip; true when B echoed i within kPeerTimeout.
  bool Round(int64_t i) { return Send(static_cast<T>(i), kPeerTimeout); }
  // A: tells B to exit, and stays (its client resends a lost UDP datagram) until B says it got
  // that or a short while passed: B's echo may be lost as B exits, which is no failure.
  void Finish() { (void)Send(T{-1}, std::chrono::seconds(1)); }

 private:
  // Writes ping, then waits until pong holds the same value: a best-effort (UDP) pong may
  // change more than once per ping, or a lost one arrive only when its writer resends it.
  bool Send(T v, std::chrono::nanoseconds timeout) {
    ping_.set(v);
    const auto deadline = Clock::now() + timeout;
    do {
      const auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero() || !pong_.wait_for_change(left)) return false;
    } while (pong_.get() != v);
    return true;
  }

  Synced<T> ping_{this, "ping"};
  Synced<T> pong_{this, "pong"};
};

using PingPong = BasicPingPong<int64_t>;

// How the network latency suites sample round trips.
struct RoundPlan {
  int64_t warmup = 0;                           // untimed round trips first...
  std::chrono::milliseconds min_warmup{0};      // ...for at least this long
  int64_t iters = 0;                            // then timed ones, this many...
  std::chrono::duration<double> seconds_cap{};  // ...or until this much time has gone by
};

// Runs round_trip(i) for i = 1, 2, ... as the plan says. Stores round trip / 2 in
// microseconds.
template <class Fn>
bool MeasureRoundTrips(const RoundPlan& plan, std::vector<double>* one_way_us, Fn&& round_trip) {
  int64_t i = 1;
  const auto warm_until = Clock::now() + plan.min_warmup;
  for (; i <= plan.warmup || Clock::now() < warm_until; ++i) {
    if (!round_trip(i)) return false;
  }
  one_way_us->clear();
  one_way_us->reserve(static_cast<size_t>(plan.iters));
  const auto cap = Clock::now() + std::chrono::duration_cast<Clock::duration>(plan.seconds_cap);
  for (; static_cast<int64_t>(one_way_us->size()) < plan.iters; ++i) {
    const auto t0 = Clock::now();
    if (!round_trip(i)) return false;
    const auto t1 = Clock::now();
    one_way_us->push_back(NanosSince(t0, t1) / 2e3);
    if (t1 > cap) break;
  }
  return true;
}

}  // namespace easysync::bench
