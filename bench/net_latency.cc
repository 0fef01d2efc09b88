// net-latency: one-way latency of an int64 attribute update from client A through the hub
// to client B, against a raw UCX active-message ping-pong measured in the same run.
//
// EasySync: A and B are two processes, each with its own connect(). A writes `ping` (set():
// WRITE to the hub, which answers WRITTEN to A and relays UPDATE to B; set() returns on
// WRITTEN); B waits for the change, reads it with get() and writes it back as `pong`; A waits
// for pong and reads it. One-way = round trip / 2, so a "hop" here is client -> hub ->
// client: two network messages, the hub's ordering and relaying, and both clients' wake-ups
// (progress thread, then the waiting reader). The WRITTEN ack travels in parallel with the
// relayed UPDATE, so it is on the measured path only through the CPU it takes.
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
#include <string_view>
#include <vector>

#include "bench.h"
#include "easysync/net.h"
#include "easysync/synced.h"
#include "hub_process.h"
#include "net/ucx_worker.h"
#include "net_raw_ucx.h"
#include "ping_pong.h"
#include "proc_util.h"
#include "stats_util.h"

namespace easysync::bench {
namespace {

constexpr int64_t kDefaultIters = 20000;
constexpr double kSecondsCap = 8;  // per measurement: the default run stays under ~20 s
constexpr auto kPeerTimeout = std::chrono::seconds(10);

struct Flags {
  bool json = false;
  int64_t iters = kDefaultIters;
  std::string host;  // empty: start our own hub
  uint16_t port = 0;
  std::string token;
  std::string transports = "tcp";
  int64_t spin_us =
      -1;  // spin of both clients (NetOptions::spin) and of its own hub (--spin-us); < 0: defaults
};

// Runs round_trip(i) for i = 1, 2, ...: `warmup` untimed, then timed until `iters` samples or
// kSecondsCap. Stores round trip / 2 in microseconds.
template <class Fn>
bool Measure(int64_t warmup, int64_t iters, std::vector<double>* one_way_us, Fn&& round_trip) {
  int64_t i = 1;
  for (; i <= warmup; ++i) {
    if (!round_trip(i)) return false;
  }
  one_way_us->clear();
  one_way_us->reserve(static_cast<size_t>(iters));
  const auto cap = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(kSecondsCap));
  for (; static_cast<int64_t>(one_way_us->size()) < iters; ++i) {
    const auto t0 = Clock::now();
    if (!round_trip(i)) return false;
    const auto t1 = Clock::now();
    one_way_us->push_back(NanosSince(t0, t1) / 2e3);
    if (t1 > cap) break;
  }
  return true;
}

// ---- raw UCX floor

bool RawUcxPingPong(const Flags& f, int64_t warmup, std::vector<double>* one_way_us) {
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
    ok = s.ok() && port->load() > 0 && Measure(warmup, f.iters, one_way_us, [&](int64_t i) {
           int64_t v = 0;
           return client.Send(i) && client.AwaitMessage(kPeerTimeout, &v) && v == i;
         });
    // The server exits on -1, so the flush may see it gone: its exit status is what counts.
    if (ok) ok = client.Send(-1);
    if (ok) client.FlushAndClose();
  }
  return JoinChild(pid, !ok) && ok;
}

// ---- EasySync: Synced<int64_t> ping (A writes) and pong (B echoes), through the hub.

bool EasySyncPingPong(const Flags& f, const NetOptions& options, const Placement& where,
                      int64_t warmup, std::vector<double>* one_way_us) {
  // Unique per run, so that a shared (--hub) hub's state from an earlier run does not matter.
  const std::string object = "bench_net_latency_" + RandomToken().substr(0, 12);
  const pid_t pid = ForkPinned([&] {
    PinToCpus(where.b_first, where.b_count);
    auto client = connect(options);
    return PingPong(*client, object).Echo();
  });
  if (pid < 0) return false;
  PinToCpus(where.a_first, where.a_count);
  bool ok = false;
  try {
    auto client = connect(options);
    PingPong pp(*client, object);
    ok = pp.WaitReady() &&
         Measure(warmup, f.iters, one_way_us, [&](int64_t i) { return pp.Round(i); });
    pp.Finish();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "easysync-bench: net-latency: %s\n", e.what());
    ok = false;
  }
  return JoinChild(pid, !ok) && ok;
}

int BadUsage(const std::string& why) {
  std::fprintf(
      stderr,
      "easysync-bench net-latency: %s\n"
      "usage: easysync-bench net-latency [--json] [--iters N] [--hub HOST:PORT --token T]\n"
      "                                  [--ucx-transports LIST] [--spin-us N]\n",
      why.c_str());
  return 2;
}

}  // namespace

int RunNetLatency(int argc, char** argv, int first) {
  Flags f;
  for (int i = first; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--json") {
      f.json = true;
      continue;
    }
    if (i + 1 >= argc) return BadUsage(std::string(flag) + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--iters") {
      char* end = nullptr;
      const long long n = std::strtoll(value.c_str(), &end, 10);
      if (*end != '\0' || n < 1 || n > 100000000) return BadUsage("--iters needs 1..1e8");
      f.iters = n;
    } else if (flag == "--hub") {
      if (!ParseHubAddress(value, &f.host, &f.port)) return BadUsage("--hub needs HOST:PORT");
    } else if (flag == "--token") {
      f.token = value;
    } else if (flag == "--spin-us") {
      char* end = nullptr;
      const long long n = std::strtoll(value.c_str(), &end, 10);
      if (*end != '\0' || n < 0 || n > 1000000) return BadUsage("--spin-us needs 0..1e6");
      f.spin_us = n;
    } else if (flag == "--ucx-transports") {
      f.transports = value;
    } else {
      return BadUsage("unknown flag '" + std::string(flag) + "'");
    }
  }
  if (!f.host.empty() && f.token.empty() && std::getenv("EASYSYNC_TOKEN") == nullptr) {
    return BadUsage("--hub needs --token T (or EASYSYNC_TOKEN)");
  }
  const int64_t warmup = std::max<int64_t>(500, f.iters / 10);
  const Placement where = f.host.empty() ? ChoosePlacement() : Placement{-1, 0, -1, 0, -1, "-"};

  // The hub is started first, while this process has no threads and is not pinned yet.
  NetOptions options;
  options.ucx_transports = f.transports;
  if (f.spin_us >= 0) options.spin = std::chrono::microseconds(f.spin_us);
  std::unique_ptr<HubProcess> hub;
  if (!UseHub(
          f.host, f.port, f.token, f.spin_us, [&] { PinToCpus(where.hub_first, 1); }, &options,
          &hub)) {
    std::fprintf(stderr, "easysync-bench: net-latency: the hub did not start\n");
    return 1;
  }

  std::vector<double> raw, measured;
  if (!RawUcxPingPong(f, warmup, &raw)) {
    std::fprintf(stderr, "easysync-bench: net-latency: the raw UCX ping-pong failed\n");
    return 1;
  }
  if (!EasySyncPingPong(f, options, where, warmup, &measured)) {
    std::fprintf(stderr, "easysync-bench: net-latency: the EasySync ping-pong failed\n");
    return 1;
  }
  if (hub && !hub->Stop()) std::fprintf(stderr, "easysync-bench: the hub did not exit cleanly\n");

  // What the clients resolved a negative (automatic) spin to.
  const int64_t spin_us =
      std::chrono::duration_cast<std::chrono::microseconds>(net::ResolveSpin(options.spin)).count();
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
        .Add("hub", f.host.empty() ? "own" : f.host + ":" + std::to_string(f.port))
        .Add("placement", where.name)
        .Add("client_spin_us", static_cast<int64_t>(spin_us))
        .Print();
    return 0;
  }
  std::printf(
      "net-latency: one-way latency of an int64 update A -> hub -> B (round trip / 2), "
      "UCX transports '%s', placement %s, client spin %lld us\n",
      f.transports.c_str(), where.name, static_cast<long long>(spin_us));
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
