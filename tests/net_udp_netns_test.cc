// The best-effort UDP path under real packet loss: the kernel drops the datagrams, not the
// socket layer's test hook (net_udp_test.cc). Each test forks a child that enters a fresh
// network namespace (unshare(CLONE_NEWNET)), brings its loopback up and has nftables drop a
// share of all UDP packets at random on input; the hub and both clients run inside it, so
// every datagram between them crosses that rule. TCP (UCX, the reliable connection) is left
// alone. The kernel here has no netem, hence nftables' numgen.
//
// Entering a network namespace needs CAP_SYS_ADMIN, and the rules need the nft tool and
// nf_tables in the kernel: where any of that is missing the tests skip, found out by a probe
// child before any test child runs.
//
// gtest assertions made in a forked child never reach the parent: the child prints its
// diagnostics to stderr and exits with one of the Outcome codes below.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "easysync/easysync.h"
#include "easysync/net.h"
#include "net_test_util.h"
#include "net_udp_test_util.h"
#include "netns_util.h"
#include "process_util.h"

namespace easysync {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using testing::FindTool;
using testing::HubProcess;
using testing::LoopbackUp;
using testing::Player;
using testing::Run;
using testing::Spawn;
using testing::UdpTestOptions;
using testing::WaitChild;
using testing::WaitFor;

// What a child reports through its exit code (Spawn's 99 is an exception, e.g. from connect).
enum Outcome : int {
  kOk = 0,
  kNoNamespace = 10,     // unshare(CLONE_NEWNET) refused: not root / no CAP_SYS_ADMIN
  kNoLoopback = 11,      // lo would not come up in the new namespace
  kNftFailed = 12,       // nft could not install the rules (no nf_tables in the kernel?)
  kHubDown = 20,         // the hub did not start inside the namespace
  kNotConverged = 30,    // the reader never reached the last value
  kWentBack = 31,        // the reader saw a value or version older than one it had shown
  kReliableWrong = 32,   // the reliable attribute is not exactly what was written
  kNoLoss = 33,          // the rule dropped nothing or far too little: nothing was proven
  kNothingWatched = 34,  // the reader showed no value before the last: nothing was checked
  kTorn = 40,            // a tensor was shown that is neither of the two written: a mix
  kTensorMissing = 41,   // the second tensor never arrived
  kHubExit = 50,         // the hub did not exit cleanly on SIGTERM
};

std::string Describe(int rc) {
  switch (rc) {
    case kOk:
      return "ok";
    case kNoNamespace:
      return "unshare(CLONE_NEWNET) failed";
    case kNoLoopback:
      return "could not bring lo up";
    case kNftFailed:
      return "nft failed to install the loss rules";
    case kHubDown:
      return "the hub did not start";
    case kNotConverged:
      return "the reader did not converge on the last value";
    case kWentBack:
      return "the reader saw a value go back";
    case kReliableWrong:
      return "the reliable attribute is not exact";
    case kNoLoss:
      return "the nft rule dropped (almost) nothing";
    case kNothingWatched:
      return "the reader showed no intermediate value";
    case kTorn:
      return "a torn tensor was shown";
    case kTensorMissing:
      return "the second tensor never arrived";
    case kHubExit:
      return "the hub did not exit cleanly";
    case 99:
      return "exception in the child (see stderr)";
    case -1:
      return "the child timed out";
    default:
      return "exit code " + std::to_string(rc);
  }
}

constexpr char kTable[] = "easysync_loss";

// Puts this process into a new network namespace with lo up and `percent`% of UDP packets
// dropped at random on input. On loopback every datagram is input exactly once, so this is
// the loss rate each direction sees. The first rule only counts (every UDP packet), the
// second counts what it drops: LossCounters reads both.
Outcome EnterLossyNamespace(const std::string& nft, int percent) {
  if (unshare(CLONE_NEWNET) != 0) {
    std::fprintf(stderr, "unshare(CLONE_NEWNET): %s\n", std::strerror(errno));
    return kNoNamespace;
  }
  if (!LoopbackUp()) {
    std::fprintf(stderr, "bringing lo up: %s\n", std::strerror(errno));
    return kNoLoopback;
  }
  const std::vector<std::vector<std::string>> commands = {
      {nft, "add", "table", "inet", kTable},
      {nft, "add", "chain", "inet", kTable, "input",
       "{ type filter hook input priority 0; policy accept; }"},
      {nft, "add", "rule", "inet", kTable, "input", "meta", "l4proto", "udp", "counter"},
      {nft, "add", "rule", "inet", kTable, "input", "meta", "l4proto", "udp", "numgen", "random",
       "mod", "100", "<", std::to_string(percent), "counter", "drop"},
  };
  for (const auto& c : commands) {
    if (const int rc = Run(c); rc != 0) {
      std::fprintf(stderr, "nft %s %s ...: exit %d\n", c[1].c_str(), c[2].c_str(), rc);
      return kNftFailed;
    }
  }
  return kOk;
}

struct Counters {
  uint64_t udp = 0;      // UDP packets input
  uint64_t dropped = 0;  // of which the random rule dropped
};

// The two rules' counters, in rule order, from `nft list chain`.
std::optional<Counters> LossCounters(const std::string& nft) {
  std::string listing;
  if (Run({nft, "list", "chain", "inet", kTable, "input"}, &listing) != 0) return std::nullopt;
  const std::regex re("counter packets ([0-9]+)");
  std::vector<uint64_t> packets;
  for (auto it = std::sregex_iterator(listing.begin(), listing.end(), re);
       it != std::sregex_iterator(); ++it) {
    packets.push_back(std::stoull((*it)[1].str()));
  }
  if (packets.size() != 2) {
    std::fprintf(stderr, "unexpected nft listing:\n%s\n", listing.c_str());
    return std::nullopt;
  }
  return Counters{packets[0], packets[1]};
}

// Loss that really happened, and at about the rate asked for (a rule that matched far less
// would leave the test proving little). The bound is loose, at least half the rule's rate:
// over thousands of packets the random draw lands far above it.
Outcome CheckLoss(const std::string& nft, int percent) {
  const auto c = LossCounters(nft);
  if (!c) return kNoLoss;
  std::fprintf(stderr, "nft: %llu UDP packets input, %llu dropped (%.1f%%, rule: %d%%)\n",
               static_cast<unsigned long long>(c->udp), static_cast<unsigned long long>(c->dropped),
               c->udp != 0 ? 100.0 * static_cast<double>(c->dropped) / c->udp : 0.0, percent);
  if (c->dropped == 0 || c->dropped * 200 < c->udp * static_cast<uint64_t>(percent)) {
    return kNoLoss;
  }
  return kOk;
}

// Probed once, in a child so that the test process keeps its own namespace: "" when the
// tests can run, else why they skip.
const std::string& SkipReason() {
  static const std::string reason = [] {
    const std::string nft = FindTool("nft");
    if (nft.empty()) return std::string("nft (nftables) not found on PATH or in /usr/sbin");
    const int rc = WaitChild(Spawn([&] { return EnterLossyNamespace(nft, 20); }), seconds(30));
    if (rc == kOk) return std::string();
    return Describe(rc) + " (needs root / CAP_SYS_ADMIN and nf_tables in the kernel)";
  }();
  return reason;
}

// Runs scenario inside a lossy namespace, in a child, and returns the child's Outcome.
template <class Scenario>
int RunInLossyNamespace(int percent, Scenario scenario) {
  const std::string nft = FindTool("nft");
  const pid_t pid = Spawn([&]() -> int {
    unsetenv("EASYSYNC_UDP_FAULTS");  // the kernel drops, nothing else
    if (const Outcome o = EnterLossyNamespace(nft, percent); o != kOk) return o;
    int rc;
    {
      HubProcess hub;
      if (hub.port() == 0) return kHubDown;
      rc = scenario(hub.port());
      // The hub's exit code matters only when all else passed: a failure is reported first.
      const int hub_rc = hub.Stop();
      if (rc == kOk && hub_rc != 0) {
        std::fprintf(stderr, "hub exit code %d\n", hub_rc);
        rc = kHubExit;
      }
    }
    if (rc == kOk) rc = CheckLoss(nft, percent);
    return rc;
  });
  return WaitChild(pid, seconds(120));
}

TEST(NetUdpNetns, TwentyPercentKernelLossConvergesAndNeverGoesBack) {
  if (!SkipReason().empty()) GTEST_SKIP() << SkipReason();
  const int rc = RunInLossyNamespace(20, [](uint16_t port) -> int {
    auto ca = connect(UdpTestOptions(port));
    auto cb = connect(UdpTestOptions(port));
    Player a(*ca), b(*cb);
    testing::MonotonicWatch watch(b.pos_x);
    constexpr int kWrites = 2000;
    std::vector<std::string> items;
    for (int i = 1; i <= kWrites; ++i) {
      a.pos_x = static_cast<double>(i);
      if (i % 100 == 0) {
        items.push_back("item" + std::to_string(i));
        a.inventory = items;  // reliable (TCP, which the rule leaves alone): every version
        // Pauses let the reader show intermediate values, so there is something to watch.
        std::this_thread::sleep_for(milliseconds(2));
      }
    }
    const bool converged = WaitFor([&] { return b.pos_x.get() == kWrites; }, seconds(30));
    watch.Stop();
    const bool reliable_exact = WaitFor([&] { return b.inventory.get() == items; }, seconds(30)) &&
                                b.inventory.version() == a.inventory.version();
    std::fprintf(stderr, "b saw %d values, holds %g; %s\n", watch.seen(), b.pos_x.get(),
                 cb->stats().ToString().c_str());
    if (watch.backwards() != 0) return kWentBack;
    if (!converged || a.pos_x.get() != kWrites) return kNotConverged;
    if (!reliable_exact) return kReliableWrong;
    if (watch.seen() <= 1) return kNothingWatched;
    return kOk;
  });
  EXPECT_EQ(rc, kOk) << Describe(rc);
}

TEST(NetUdpNetns, FourMibTensorAtFivePercentKernelLossArrivesWholeOrNotAtAll) {
  if (!SkipReason().empty()) GTEST_SKIP() << SkipReason();
  const int rc = RunInLossyNamespace(5, [](uint16_t port) -> int {
    const testing::WholeOrNot r = testing::SendTwoTensors(port);
    if (!r.whole) return kTorn;
    if (!r.first_arrived || !r.second_arrived) return kTensorMissing;
    return kOk;
  });
  EXPECT_EQ(rc, kOk) << Describe(rc);
}

}  // namespace
}  // namespace easysync
