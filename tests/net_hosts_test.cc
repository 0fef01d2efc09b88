// A hub and its clients on two hosts: each side in a network namespace of its own, joined by
// a veth pair (10.211.0.1 the hub's, 10.211.0.2 the clients'), so that what crosses between
// them goes over an interface other than loopback, from an address that is not local to the
// hub: UCX's TCP lanes on that interface, admission (the clients' address must prove the
// token: `--admission on` lets in only loopback unasked), the best-effort UDP path, and a
// tensor delta. The hub listens on all its addresses (--bind 0.0.0.0).
//
// Needs root (CAP_SYS_ADMIN for unshare and CAP_NET_ADMIN for the pair) and iproute2's `ip`
// with veth in the kernel; where any is missing the test skips.
//
// gtest assertions made in a forked child never reach the parent: each child prints what
// went wrong to stderr and exits with one of the Outcome codes below.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "easysync/easysync.h"
#include "easysync/net.h"
#include "net_test_util.h"
#include "net_udp_test_util.h"
#include "netns_util.h"
#include "process_util.h"

namespace easysync {
namespace {

using std::chrono::seconds;
using testing::FindTool;
using testing::Gate;
using testing::HubProcess;
using testing::InterfaceRunning;
using testing::kTestToken;
using testing::LoopbackUp;
using testing::Player;
using testing::Run;
using testing::Spawn;
using testing::WaitChild;
using testing::WaitFor;

enum Outcome : int {
  kOk = 0,
  kNoNamespace = 10,    // unshare(CLONE_NEWNET) refused, or lo would not come up
  kNoAddress = 11,      // ip could not configure the veth end
  kNoGo = 12,           // the parent never said go (it could not make the pair)
  kHubDown = 20,        // the hub did not start
  kHubExit = 21,        // the hub did not exit cleanly on SIGTERM
  kNotAdmitted = 22,    // the hub's log does not show the clients' address admitted
  kWrongValue = 30,     // a reliable value did not arrive as written
  kNoDelta = 31,        // the tensor's second write did not arrive as a delta
  kUdpMissing = 32,     // the best-effort attribute never reached its last value
  kTokenAccepted = 33,  // a client with a wrong token was let in
};

constexpr char kHubAddress[] = "10.211.0.1";
constexpr char kClientAddress[] = "10.211.0.2";

// n bytes through a pipe, with a deadline.
bool ReadExactly(int fd, void* out, size_t n, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, static_cast<int>(timeout.count())) != 1) return false;
  return read(fd, out, n) == static_cast<ssize_t>(n);
}

// In a child: a namespace of its own with lo up, then opens `up`, then waits for the
// parent's go (the veth end is there) and gives the end its address.
Outcome EnterHost(const std::string& ip, Gate& up, Gate& go, const std::string& dev,
                  const std::string& address) {
  // A mount namespace too, with /sys mounted afresh (what `ip netns exec` does): sysfs shows
  // the interfaces of the namespace that mounts it, and UCX looks its devices up there (with
  // the old /sys, UCX's TCP transport found no device for the pair's end: "Destination is
  // unreachable").
  if (unshare(CLONE_NEWNET | CLONE_NEWNS) != 0 || !LoopbackUp() ||
      mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
      umount2("/sys", MNT_DETACH) != 0 || mount("sysfs", "/sys", "sysfs", 0, nullptr) != 0) {
    std::fprintf(stderr, "entering network and mount namespaces: %s\n", std::strerror(errno));
    return kNoNamespace;
  }
  up.Open();
  if (!go.Wait(seconds(30))) return kNoGo;
  if (Run({ip, "addr", "add", address + "/24", "dev", dev}) != 0 ||
      Run({ip, "link", "set", dev, "up"}) != 0) {
    std::fprintf(stderr, "configuring %s as %s failed\n", dev.c_str(), address.c_str());
    return kNoAddress;
  }
  // UCX takes only a running interface (carrier up: both ends up, which the kernel reports
  // after a moment) for its TCP transport.
  if (!WaitFor([&] { return InterfaceRunning(dev); }, seconds(10))) {
    std::fprintf(stderr, "%s never came up\n", dev.c_str());
    return kNoAddress;
  }
  return kOk;
}

struct Model : SyncedObject {
  Synced<int64_t> step{this, "step", 0};
  Synced<std::string> name{this, "name", std::string()};
  Synced<Tensor> weights{this, "weights"};
  explicit Model(Client& c) : SyncedObject(c, "Model") {}
};

// The clients' side: A writes, B reads, over the pair.
int RunClients(uint16_t port) {
  NetOptions o;
  o.host = kHubAddress;
  o.port = port;
  o.token = kTestToken;
  o.ucx_transports = "tcp";
  o.connect_timeout = std::chrono::seconds(20);
  auto ca = connect(o);
  auto cb = connect(o);
  Model a(*ca), b(*cb);
  a.step = 7;
  a.name = "over the pair";
  Tensor w(DType::kBFloat16, {1 << 20});  // 2 MiB
  auto* bits = w.mutable_data_as<uint16_t>();
  for (int i = 0; i < (1 << 20); ++i) bits[i] = static_cast<uint16_t>(0x3f80 + (i % 97));
  a.weights = w;
  if (!WaitFor([&] { return b.weights.get() == w && b.step.get() == 7; }, seconds(30)) ||
      b.name.get() != "over the pair") {
    std::fprintf(stderr, "B has step %lld, name '%s'\n", static_cast<long long>(b.step.get()),
                 b.name.get().c_str());
    return kWrongValue;
  }
  const uint64_t deltas = cb->stats().deltas_recv;
  for (int i = 0; i < (1 << 20); i += 100) bits[i] += 1;  // 1% of the elements
  a.weights = w;
  if (!WaitFor([&] { return b.weights.get() == w; }, seconds(30))) return kWrongValue;
  if (cb->stats().deltas_recv != deltas + 1) {
    std::fprintf(stderr, "deltas_recv %llu, expected %llu\n",
                 static_cast<unsigned long long>(cb->stats().deltas_recv),
                 static_cast<unsigned long long>(deltas + 1));
    return kNoDelta;
  }

  Player pa(*ca), pb(*cb);  // pos_x best effort (UDP), inventory reliable
  for (int i = 1; i <= 50; ++i) pa.pos_x = i;
  if (!WaitFor([&] { return pb.pos_x.get() == 50.0; }, seconds(30))) {
    std::fprintf(stderr, "B's pos_x is %g, not 50\n", pb.pos_x.get());
    return kUdpMissing;
  }

  NetOptions wrong = o;
  wrong.token = "not-the-token";
  try {
    auto intruder = connect(wrong);
    std::fprintf(stderr, "a wrong token connected\n");
    return kTokenAccepted;
  } catch (const Error& e) {
    if (e.status().code() != StatusCode::kPermissionDenied) {
      std::fprintf(stderr, "a wrong token: %s (not PermissionDenied)\n", e.what());
      return kTokenAccepted;
    }
  }
  return kOk;
}

TEST(NetHosts, ClientsOnAnotherHostSyncThroughAHubListeningOnAllAddresses) {
  const std::string ip = FindTool("ip");
  if (ip.empty()) GTEST_SKIP() << "no ip (iproute2)";
  if (geteuid() != 0) GTEST_SKIP() << "needs root for network namespaces and a veth pair";
  Gate hub_up, hub_go, hub_stop, cl_up, cl_go;
  int hub_port[2];  // the hub's port, from the hub's side to the clients'
  ASSERT_EQ(pipe2(hub_port, O_CLOEXEC), 0);
  const std::string log =
      ::testing::TempDir() + "easysync-net-hosts-hub." + std::to_string(getpid()) + ".log";

  const pid_t hub = Spawn([&] {
    if (const Outcome o = EnterHost(ip, hub_up, hub_go, "esh0", kHubAddress); o != kOk) {
      return static_cast<int>(o);
    }
    HubProcess h({"--bind", "0.0.0.0", "--admission", "on"}, log);
    const uint16_t port = h.port();
    (void)!write(hub_port[1], &port, sizeof(port));
    if (port == 0) return static_cast<int>(kHubDown);
    (void)hub_stop.Wait(seconds(120));
    if (h.Stop() != 0) return static_cast<int>(kHubExit);
    std::ifstream in(log);
    std::stringstream text;
    text << in.rdbuf();
    if (text.str().find(std::string("admitted ") + kClientAddress) == std::string::npos) {
      std::fprintf(stderr, "hub log:\n%s\n", text.str().c_str());
      return static_cast<int>(kNotAdmitted);
    }
    return static_cast<int>(kOk);
  });
  const pid_t clients = Spawn([&] {
    if (const Outcome o = EnterHost(ip, cl_up, cl_go, "esc0", kClientAddress); o != kOk) {
      return static_cast<int>(o);
    }
    uint16_t port = 0;
    if (!ReadExactly(hub_port[0], &port, sizeof(port), seconds(60)) || port == 0) {
      return static_cast<int>(kHubDown);
    }
    return RunClients(port);
  });
  const bool up = hub_up.Wait(seconds(30)) && cl_up.Wait(seconds(30));
  // The pair, one end in each namespace (named by a process in it).
  const int made =
      up ? testing::Run({ip, "link", "add", "esh0", "netns", std::to_string(hub), "type", "veth",
                         "peer", "name", "esc0", "netns", std::to_string(clients)})
         : -1;
  if (made == 0) {
    hub_go.Open();
    cl_go.Open();
  }
  const int clients_rc = WaitChild(clients, seconds(180));
  hub_stop.Open();
  const int hub_rc = WaitChild(hub, seconds(60));
  close(hub_port[0]);
  close(hub_port[1]);
  if (hub_rc == kNoNamespace || clients_rc == kNoNamespace) {
    GTEST_SKIP() << "no network namespaces here";
  }
  if (made != 0) GTEST_SKIP() << "ip could not make a veth pair (exit " << made << ")";
  EXPECT_EQ(clients_rc, kOk) << "the clients' side (see stderr)";
  EXPECT_EQ(hub_rc, kOk) << "the hub's side (see stderr)";
}

}  // namespace
}  // namespace easysync
