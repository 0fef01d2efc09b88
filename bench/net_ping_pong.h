// What the network latency suites (net-latency, udp-latency) share: their flags, the hub and
// placement they set up, and the EasySync ping-pong between clients A and B in two processes,
// each with its own connect().
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "easysync/net.h"
#include "hub_process.h"
#include "net/ucx_worker.h"
#include "ping_pong.h"
#include "proc_util.h"

namespace easysync::bench {

struct LatencyFlags {
  bool json = false;
  int64_t iters = 20000;
  std::string host;  // empty: start our own hub
  uint16_t port = 0;
  std::string token;
  std::string transports = "tcp";
  // Spin of both clients (NetOptions::spin) and of its own hub (--spin-us); < 0: defaults.
  int64_t spin_us = -1;
};

// Parses argv[first..argc) into *f; -1, or 2 (bad usage, said on stderr with the usage).
inline int ParseLatencyFlags(const std::string& suite, int argc, char** argv, int first,
                             LatencyFlags* f) {
  auto bad_usage = [&](const std::string& why) {
    const std::string pad(suite.size(), ' ');
    std::fprintf(stderr,
                 "easysync-bench %s: %s\n"
                 "usage: easysync-bench %s [--json] [--iters N] [--hub HOST:PORT --token T]\n"
                 "                      %s [--ucx-transports LIST] [--spin-us N]\n",
                 suite.c_str(), why.c_str(), suite.c_str(), pad.c_str());
    return 2;
  };
  // An integer in full within [lo, hi], or false.
  auto integer = [](const std::string& s, long long lo, long long hi, int64_t* out) {
    char* end = nullptr;
    const long long n = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || n < lo || n > hi) return false;
    *out = n;
    return true;
  };
  for (int i = first; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--json") {
      f->json = true;
      continue;
    }
    if (i + 1 >= argc) return bad_usage(std::string(flag) + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--iters") {
      if (!integer(value, 1, 100000000, &f->iters)) return bad_usage("--iters needs 1..1e8");
    } else if (flag == "--hub") {
      if (!ParseHubAddress(value, &f->host, &f->port)) return bad_usage("--hub needs HOST:PORT");
    } else if (flag == "--token") {
      f->token = value;
    } else if (flag == "--spin-us") {
      if (!integer(value, 0, 1000000, &f->spin_us)) return bad_usage("--spin-us needs 0..1e6");
    } else if (flag == "--ucx-transports") {
      f->transports = value;
    } else {
      return bad_usage("unknown flag '" + std::string(flag) + "'");
    }
  }
  if (!f->host.empty() && f->token.empty() && std::getenv("EASYSYNC_TOKEN") == nullptr) {
    return bad_usage("--hub needs --token T (or EASYSYNC_TOKEN)");
  }
  return -1;
}

struct LatencySetup {
  Placement where;
  NetOptions options;               // what the clients connect with
  std::unique_ptr<HubProcess> hub;  // null with --hub
  // The hub's address as the output names it: "own", or the --hub given.
  std::string hub_name() const {
    return hub ? "own" : options.host + ":" + std::to_string(options.port);
  }
  // What the clients resolved a negative (automatic) spin to.
  int64_t client_spin_us() const {
    return std::chrono::duration_cast<std::chrono::microseconds>(net::ResolveSpin(options.spin))
        .count();
  }
};

// Chooses the placement and points the clients at the hub: the --hub given, or one started
// here (first, while this process has no threads and is not pinned yet). False when that one
// did not start (said on stderr).
inline bool SetUpLatency(const std::string& suite, const LatencyFlags& f, LatencySetup* s) {
  s->where = f.host.empty() ? ChoosePlacement(/*latency=*/true) : Placement{-1, 0, -1, 0, -1, "-"};
  s->options.ucx_transports = f.transports;
  if (f.spin_us >= 0) s->options.spin = std::chrono::microseconds(f.spin_us);
  const int hub_cpu = s->where.hub_first;
  if (!UseHub(
          f.host, f.port, f.token, f.spin_us, [&] { PinToCpus(hub_cpu, 1); }, &s->options,
          &s->hub)) {
    std::fprintf(stderr, "easysync-bench: %s: the hub did not start\n", suite.c_str());
    return false;
  }
  return true;
}

// B (a forked child) echoes, A measures BasicPingPong<T>::Round as `plan` says; the attributes
// travel by `transport`. `suite` names the object and the diagnostics.
// REQUIRES: the caller has no other threads (see ForkPinned).
template <class T>
bool NetPingPong(const std::string& suite, const LatencySetup& s, Transport transport,
                 const RoundPlan& plan, std::vector<double>* one_way_us) {
  // Unique per run, so that a shared (--hub) hub's state from an earlier run does not matter.
  std::string object = "bench_" + suite + "_" + RandomToken().substr(0, 12);
  std::replace(object.begin(), object.end(), '-', '_');
  const pid_t pid = ForkPinned([&] {
    PinToCpus(s.where.b_first, s.where.b_count);
    auto client = connect(s.options);
    return BasicPingPong<T>(*client, object, transport).Echo();
  });
  if (pid < 0) return false;
  PinToCpus(s.where.a_first, s.where.a_count);
  bool ok = false;
  try {
    auto client = connect(s.options);
    BasicPingPong<T> pp(*client, object, transport);
    ok = pp.WaitReady() &&
         MeasureRoundTrips(plan, one_way_us, [&](int64_t i) { return pp.Round(i); });
    pp.Finish();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "easysync-bench: %s: %s\n", suite.c_str(), e.what());
    ok = false;
  }
  return JoinChild(pid, !ok) && ok;
}

}  // namespace easysync::bench
