// net-latency: one-way latency of an int64 attribute update from client A through the hub
// to client B, against a raw UCX active-message ping-pong measured in the same run.
//
// EasySync: A and B are two processes, each with its own connect(). A writes `ping` (set():
// WRITE to the hub, which answers WRITTEN to A and relays UPDATE to B; set() returns on
// WRITTEN); B waits for the change, reads it with get() and writes it back as `pong`; A waits
// for pong and reads it. One-way = round trip / 2, so a "hop" here is client -> hub ->
// client: two network messages, the hub's ordering and relaying, and the hand-over of the
// CPU to the waiting reader (which handles the UPDATE on its own thread). The WRITTEN ack
// travels in parallel with the relayed UPDATE, so it is on the measured path only through
// the CPU it takes. With 2 CPUs the hub has one and the clients share the other
// (ChoosePlacement).
//
// Raw floor: two processes, one ucp worker each (listener + client endpoint over sockaddr,
// the same transports), an 8-byte active message each way, both sides busy-polling
// ucp_worker_progress. One EasySync hop needs two such messages: ratio_vs_two_raw_hops =
// p50 / (2 * raw_ucx_p50). Goal: <= 2.5.
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "bench.h"
#include "easysync/net.h"
#include "easysync/synced.h"
#include "hub_process.h"
#include "net/ucx_worker.h"
#include "net_ping_pong.h"
#include "net_raw_ucx.h"
#include "proc_util.h"
#include "stats_util.h"

namespace easysync::bench {
namespace {

constexpr double kSecondsCap = 8;  // per measurement: the default run stays under ~20 s
constexpr auto kPeerTimeout = std::chrono::seconds(10);

// ---- raw UCX floor

bool RawUcxPingPong(const LatencyFlags& f, const RoundPlan& plan, std::vector<double>* one_way_us) {
  SharedAnon mem(4096);
  auto* port = new (mem.As<void>()) std::atomic<int>(0);  // the child's listener; -1: failed
  const pid_t pid = ForkPinned([&] {
    RawUcxPeer server;
    Status s = server.Init(f.transports);
    uint16_t p = 0;
    if (s.ok()) s = server.Listen(&p);
    if (!s.ok()) {
      std::fprintf(stderr, "easysync-bench: raw UCX server: %s\n", s.ToString().c_str());
      port->store(-1);
      return 1;
    }
    port->store(p);
    if (!server.AwaitConnection(kPeerTimeout)) return 1;
    for (;;) {
      int64_t v = 0;
      if (!server.AwaitMessage(kPeerTimeout, &v)) return 1;
      if (v < 0) return 0;
      if (!server.Send(v)) return 1;
    }
  });
  if (pid < 0) return false;
  bool ok = false;
  {
    RawUcxPeer client;
    Status s = client.Init(f.transports);
    const auto deadline = Clock::now() + kPeerTimeout;
    while (s.ok() && port->load() == 0 && Clock::now() < deadline) poll(nullptr, 0, 1);
    if (s.ok() && port->load() > 0) s = client.Connect(static_cast<uint16_t>(port->load()));
    if (!s.ok()) std::fprintf(stderr, "easysync-bench: raw UCX client: %s\n", s.ToString().c_str());
    ok = s.ok() && port->load() > 0 && MeasureRoundTrips(plan, one_way_us, [&](int64_t i) {
           int64_t v = 0;
           return client.Send(i) && client.AwaitMessage(kPeerTimeout, &v) && v == i;
         });
    // The server exits on -1, so the flush may see it gone: its exit status is what counts.
    if (ok) ok = client.Send(-1);
    if (ok) client.FlushAndClose();
  }
  return JoinChild(pid, !ok) && ok;
}

}  // namespace

int RunNetLatency(int argc, char** argv, int first) {
  LatencyFlags f;
  if (const int rc = ParseLatencyFlags("net-latency", argc, argv, first, &f); rc >= 0) return rc;
  const RoundPlan plan{.warmup = std::max<int64_t>(500, f.iters / 10),
                       .iters = f.iters,
                       .seconds_cap = std::chrono::duration<double>(kSecondsCap)};
  LatencySetup setup;
  if (!SetUpLatency("net-latency", f, &setup)) return 1;

  std::vector<double> raw, measured;
  if (!RawUcxPingPong(f, plan, &raw)) {
    std::fprintf(stderr, "easysync-bench: net-latency: the raw UCX ping-pong failed\n");
    return 1;
  }
  // EasySync: Synced<int64_t> ping (A writes) and pong (B echoes), through the hub.
  if (!NetPingPong<int64_t>("net-latency", setup, Transport::kDefault, plan, &measured)) {
    std::fprintf(stderr, "easysync-bench: net-latency: the EasySync ping-pong failed\n");
    return 1;
  }
  if (setup.hub && !setup.hub->Stop())
    std::fprintf(stderr, "easysync-bench: the hub did not exit cleanly\n");

  const int64_t spin_us = setup.client_spin_us();
  const double p50 = Percentile(measured, 0.5), p99 = Percentile(measured, 0.99);
  const double raw50 = Percentile(raw, 0.5), raw99 = Percentile(raw, 0.99);
  const double ratio = p50 / (2 * raw50);
  const int64_t n = static_cast<int64_t>(measured.size());
  if (f.json) {
    JsonLine()
        .Add("suite", "net-latency")
        .Add("transports", f.transports)
        .Add("p50_us", p50)
        .Add("p99_us", p99)
        .Add("raw_ucx_p50_us", raw50)
        .Add("raw_ucx_p99_us", raw99)
        .Add("ratio_vs_two_raw_hops", ratio)
        .Add("iters", n)
        .Add("hub", setup.hub_name())
        .Add("placement", setup.where.name)
        .Add("client_spin_us", spin_us)
        .Print();
    return 0;
  }
  std::printf(
      "net-latency: one-way latency of an int64 update A -> hub -> B (round trip / 2), "
      "UCX transports '%s', placement %s, client spin %lld us\n",
      f.transports.c_str(), setup.where.name.c_str(), static_cast<long long>(spin_us));
  Table table(
      {"p50_us", "p99_us", "raw_ucx_p50_us", "raw_ucx_p99_us", "ratio_vs_two_raw_hops", "iters"});
  table.Row({Fixed(p50, 2), Fixed(p99, 2), Fixed(raw50, 2), Fixed(raw99, 2), Fixed(ratio, 2),
             std::to_string(n)});
  table.Print();
  std::printf(
      "raw = busy-polled UCX active message between two processes, one-way; goal: "
      "ratio <= 2.5 (%s)\n",
      ratio <= 2.5 ? "met" : "missed");
  return 0;
}

}  // namespace easysync::bench
