// udp-latency: one-way latency of a double attribute update from client A through the hub to
// client B over the UDP path (Transport::kUdp: authenticated datagrams, best effort, latest
// value wins), against the same update over the reliable UCX path measured in the same run.
//
// Both are the net-latency ping-pong (A writes ping, B waits for the change and writes it back
// as pong, A waits; one-way = round trip / 2), on two attributes of the same transport. A UDP
// write returns at once (no WRITTEN to wait for) and the hub relays it as one datagram; a lost
// datagram is resent after 20 ms, which is what p99 shows under loss. Goal: UDP p50 no worse
// than the reliable path, p99 lower.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "bench.h"
#include "net_ping_pong.h"
#include "stats_util.h"

namespace easysync::bench {
namespace {

constexpr double kSecondsCap = 8;  // per path: the default run stays under ~20 s
// A client's UDP path opens only when the hub answers its REGISTER (repeated every 20 ms until
// it does); until then its UDP writes go over UCX. Warming up this long leaves room for a few
// lost REGISTERs on top of the warm-up round trips.
constexpr auto kMinWarmup = std::chrono::milliseconds(200);

struct PathResult {
  double p50, p99, max;
  int64_t n;
};

PathResult Summarize(std::vector<double>& one_way_us) {
  return {Percentile(one_way_us, 0.5), Percentile(one_way_us, 0.99),
          one_way_us.empty() ? 0 : *std::max_element(one_way_us.begin(), one_way_us.end()),
          static_cast<int64_t>(one_way_us.size())};
}

}  // namespace

int RunUdpLatency(int argc, char** argv, int first) {
  LatencyFlags f;
  if (const int rc = ParseLatencyFlags("udp-latency", argc, argv, first, &f); rc >= 0) return rc;
  const RoundPlan plan{.warmup = std::max<int64_t>(500, f.iters / 10),
                       .min_warmup = kMinWarmup,
                       .iters = f.iters,
                       .seconds_cap = std::chrono::duration<double>(kSecondsCap)};
  LatencySetup setup;
  if (!SetUpLatency("udp-latency", f, &setup)) return 1;

  std::vector<double> udp, reliable;
  if (!NetPingPong<double>("udp-latency", setup, Transport::kUdp, plan, &udp)) {
    std::fprintf(stderr, "easysync-bench: udp-latency: the UDP ping-pong failed\n");
    return 1;
  }
  if (!NetPingPong<double>("udp-latency", setup, Transport::kReliable, plan, &reliable)) {
    std::fprintf(stderr, "easysync-bench: udp-latency: the reliable ping-pong failed\n");
    return 1;
  }
  if (setup.hub && !setup.hub->Stop())
    std::fprintf(stderr, "easysync-bench: the hub did not exit cleanly\n");

  const int64_t spin_us = setup.client_spin_us();
  const PathResult u = Summarize(udp), r = Summarize(reliable);
  const bool p50_met = u.p50 <= r.p50, p99_met = u.p99 < r.p99;
  const std::string hub_name = setup.hub_name();
  if (f.json) {
    JsonLine()
        .Add("suite", "udp-latency")
        .Add("transports", f.transports)
        .Add("udp_p50_us", u.p50)
        .Add("udp_p99_us", u.p99)
        .Add("udp_max_us", u.max)
        .Add("reliable_p50_us", r.p50)
        .Add("reliable_p99_us", r.p99)
        .Add("reliable_max_us", r.max)
        .Add("iters", std::min(u.n, r.n))  // samples per path (fewer when kSecondsCap cut one)
        .Add("hub", hub_name)
        .Add("placement", setup.where.name)
        .Add("client_spin_us", spin_us)
        .Print();
    return 0;
  }
  std::printf(
      "udp-latency: one-way latency of a double update A -> hub -> B (round trip / 2), UDP "
      "path vs reliable (UCX transports '%s'), placement %s, client spin %lld us, hub %s\n",
      f.transports.c_str(), setup.where.name.c_str(), static_cast<long long>(spin_us),
      hub_name.c_str());
  Table table({"path", "p50_us", "p99_us", "max_us", "iters"});
  table.Row({"udp", Fixed(u.p50, 2), Fixed(u.p99, 2), Fixed(u.max, 2), std::to_string(u.n)});
  table.Row({"reliable", Fixed(r.p50, 2), Fixed(r.p99, 2), Fixed(r.max, 2), std::to_string(r.n)});
  table.Print();
  std::printf("goal: UDP p50 <= reliable p50 (%s), UDP p99 < reliable p99 (%s)\n",
              p50_met ? "met" : "missed", p99_met ? "met" : "missed");
  return 0;
}

}  // namespace easysync::bench
