// The best-effort UDP path between real processes through a real hub: a mixed object (UDP
// positions, reliable inventory), convergence under injected loss, reordering and
// duplication, a 4 MiB tensor at 5% loss (whole or not at all), spoofed and replayed
// datagrams. Faults come from the socket layer's test hook (EASYSYNC_UDP_FAULTS, read by
// every UDP socket the hub and the clients open), set before they start.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "easysync/easysync.h"
#include "easysync/net.h"
#include "net/net_client.h"
#include "net/udp_wire.h"
#include "net_test_util.h"
#include "net_udp_test_util.h"

namespace easysync {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using testing::Filled;
using testing::HubProcess;
using testing::Player;
using testing::Scan;
using testing::UdpTestOptions;
using testing::WaitFor;

// Faults for everything started while it lives (the hub inherits the environment).
class ScopedFaults {
 public:
  explicit ScopedFaults(const std::string& spec) { setenv("EASYSYNC_UDP_FAULTS", spec.c_str(), 1); }
  ~ScopedFaults() { unsetenv("EASYSYNC_UDP_FAULTS"); }
};

TEST(NetUdp, MixedObjectKeepsTheReliableInventoryExact) {
  ScopedFaults faults("loss=0.3,dup=0.1,reorder=0.2,seed=3");
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  auto ca = connect(UdpTestOptions(hub.port()));
  auto cb = connect(UdpTestOptions(hub.port()));
  Player a(*ca), b(*cb);
  std::vector<std::string> items;
  for (int i = 1; i <= 200; ++i) {
    a.pos_x = static_cast<double>(i);
    if (i % 20 == 0) {
      items.push_back("item" + std::to_string(i));
      a.inventory = items;  // reliable: every version arrives, in order
    }
  }
  ASSERT_TRUE(WaitFor([&] { return b.pos_x.get() == 200.0; }, seconds(30)))
      << "b holds " << b.pos_x.get();
  ASSERT_TRUE(WaitFor([&] { return b.inventory.get() == items; }, seconds(30)));
  EXPECT_EQ(b.inventory.version(), a.inventory.version());
  const Stats s = cb->stats();
  std::fprintf(stderr, "b: %s\n", s.ToString().c_str());
  EXPECT_EQ(s.datagrams_dropped_bad, 0u);
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetUdp, LossReorderingAndDuplicationConvergeAndNeverGoBack) {
  ScopedFaults faults("loss=0.2,dup=0.2,reorder=0.3,seed=11");
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  auto ca = connect(UdpTestOptions(hub.port()));
  auto cb = connect(UdpTestOptions(hub.port()));
  Player a(*ca), b(*cb);
  testing::MonotonicWatch watch(b.pos_x);
  constexpr int kWrites = 2000;
  for (int i = 1; i <= kWrites; ++i) {
    a.pos_x = static_cast<double>(i);
    if (i % 100 == 0) std::this_thread::sleep_for(milliseconds(2));
  }
  const bool converged = WaitFor([&] { return b.pos_x.get() == kWrites; }, seconds(30));
  watch.Stop();
  EXPECT_TRUE(converged) << "b holds " << b.pos_x.get();
  EXPECT_EQ(watch.backwards(), 0);
  EXPECT_GT(watch.seen(), 1);
  EXPECT_EQ(a.pos_x.get(), kWrites);  // the writer converges on its own last write too
  const Stats s = cb->stats();
  std::fprintf(stderr, "b saw %d values; %s\n", watch.seen(), s.ToString().c_str());
  // Duplicates and late ones were refused (counted as stale; how many depends on the draw),
  // and none was taken for a forgery.
  EXPECT_EQ(s.datagrams_dropped_bad, 0u);
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetUdp, ReaderProcessUnderLossNeverGoesBackAndConverges) {
  // The same with the reader in a process of its own: it watches, then says by its exit
  // code whether values ever went back (3) or it did not converge (4).
  ScopedFaults faults("loss=0.2,dup=0.2,reorder=0.3,seed=13");
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  const uint16_t port = hub.port();
  constexpr int kWrites = 2000;
  testing::Gate ready;
  const pid_t reader = testing::Spawn([&] {
    auto cb = connect(UdpTestOptions(port));
    Player b(*cb);
    ready.Open();
    double last = 0;
    uint64_t last_version = 0;
    const auto deadline = std::chrono::steady_clock::now() + seconds(60);
    while (b.pos_x.get() != kWrites) {
      if (std::chrono::steady_clock::now() > deadline) return 4;
      b.pos_x.wait_for_change(milliseconds(5));
      const double v = b.pos_x.get();
      const uint64_t version = b.pos_x.version();
      if (v < last || version < last_version) return 3;
      last = v;
      last_version = version;
    }
    const Stats s = cb->stats();
    std::fprintf(stderr, "reader: %s\n", s.ToString().c_str());
    return s.datagrams_dropped_bad == 0 ? 0 : 5;
  });
  ASSERT_TRUE(ready.Wait(seconds(30)));
  auto ca = connect(UdpTestOptions(port));
  Player a(*ca);
  for (int i = 1; i <= kWrites; ++i) {
    a.pos_x = static_cast<double>(i);
    if (i % 100 == 0) std::this_thread::sleep_for(milliseconds(2));
  }
  EXPECT_EQ(testing::WaitChild(reader, seconds(90)), 0);
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetUdp, FourMibTensorAtFivePercentLossArrivesWholeOrNotAtAll) {
  ScopedFaults faults("loss=0.05,seed=5");
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  const testing::WholeOrNot r = testing::SendTwoTensors(hub.port());
  ASSERT_TRUE(r.first_arrived);
  EXPECT_TRUE(r.whole);
  EXPECT_TRUE(r.second_arrived);
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetUdp, TensorDeltasGoAgainstTheAcknowledgedVersion) {
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  auto ca = connect(UdpTestOptions(hub.port()));
  auto cb = connect(UdpTestOptions(hub.port()));
  Scan a(*ca), b(*cb);
  Tensor t = Filled(1);
  a.image = t;
  ASSERT_TRUE(WaitFor([&] { return b.image.get() == t; }, seconds(60)));
  std::this_thread::sleep_for(milliseconds(100));  // b's ACK reaches the hub
  // One element changes: b acknowledged the version before, so it gets a delta.
  // The writer's side too: the hub acknowledged a's write, so a sends a delta against it.
  t.mutable_data_as<uint32_t>()[12345] ^= 1;
  const Stats before = cb->stats();
  const Stats a_before = ca->stats();
  a.image = t;
  ASSERT_TRUE(WaitFor([&] { return b.image.get() == t; }, seconds(60)));
  const Stats after = cb->stats();
  const Stats a_after = ca->stats();
  EXPECT_EQ(after.deltas_recv, before.deltas_recv + 1);
  EXPECT_LT(after.bytes_recv - before.bytes_recv, 64u << 10) << "4 MiB tensor, one change";
  EXPECT_EQ(a_after.deltas_sent, a_before.deltas_sent + 1);
  EXPECT_LT(a_after.bytes_sent - a_before.bytes_sent, 64u << 10);
  EXPECT_TRUE(WaitFor([&] { return a.image.version() == b.image.version(); }));
  // Another writer moves the value on: a's next delta names a base the hub no longer holds,
  // so the hub refuses it and a sends the whole value; everyone ends with a's.
  Tensor other = Filled(9);
  b.image = other;
  ASSERT_TRUE(WaitFor([&] { return a.image.get() == other; }, seconds(60)));
  t.mutable_data_as<uint32_t>()[7] ^= 1;
  a.image = t;
  EXPECT_TRUE(WaitFor([&] { return b.image.get() == t && a.image.get() == t; }, seconds(60)));
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetUdp, TensorStepsUnderLossShowOnlyWrittenValuesAndConverge) {
  ScopedFaults faults("loss=0.2,dup=0.1,reorder=0.2,seed=9");
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  auto ca = connect(UdpTestOptions(hub.port()));
  auto cb = connect(UdpTestOptions(hub.port()));
  Scan a(*ca), b(*cb);
  Tensor t = Filled(3);
  std::vector<Tensor> written;
  for (int step = 0; step < 20; ++step) {
    for (int k = 0; k < 50; ++k)
      t.mutable_data_as<uint32_t>()[(step * 7919 + k * 104729) % (1 << 20)] += 1;
    a.image = t;
    written.push_back(t);
    // b never shows anything but a value that was written: a delta against the wrong
    // base, or a mix of fragments, would show something else.
    const Tensor seen = b.image.get();
    bool known = seen.numel() == 0;
    for (const Tensor& w : written) known = known || seen == w;
    EXPECT_TRUE(known) << "step " << step;
    std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_TRUE(WaitFor([&] { return b.image.get() == t; }, seconds(60)));
  std::fprintf(stderr, "b: %s\n", cb->stats().ToString().c_str());
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetUdp, ATensorTooBigForDatagramsReachesAUdpSubscriberOverUcx) {
  // Over 64 MiB a value does not go by datagrams: a subscriber that asked for UDP gets it
  // over UCX like everyone else, also when a delta is relayed before the hub applies it.
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  auto cw = connect(UdpTestOptions(hub.port()));
  auto cr = connect(UdpTestOptions(hub.port()));
  struct Writer : SyncedObject {
    Synced<Tensor> t{this, "t"};
    explicit Writer(Client& c) : SyncedObject(c, "Huge") {}
  } w(*cw);
  struct Reader : SyncedObject {
    Synced<Tensor> t{this, "t"};
    explicit Reader(Client& c) : SyncedObject(c, "Huge", "", Transport::kUdp) {}
  } r(*cr);
  Tensor t(DType::kFloat32, {int64_t{17} << 20});  // 68 MiB
  w.t = t;
  ASSERT_TRUE(WaitFor([&] { return r.t.version() == 1; }, seconds(60)));
  t.mutable_data_as<float>()[12345] = 1;  // a delta, relayed before the hub applies it
  w.t = t;
  EXPECT_TRUE(WaitFor([&] { return r.t.get() == t; }, seconds(60)));
  EXPECT_EQ(cr->stats().deltas_recv, 1u);
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetUdp, SpoofedAndReplayedDatagramsAreDroppedAndCounted) {
  const std::string log = "/tmp/easysync_udp_spoof_" + std::to_string(getpid()) + ".log";
  HubProcess hub({}, log);
  ASSERT_NE(hub.port(), 0);
  auto ca = connect(UdpTestOptions(hub.port()));
  Player a(*ca);
  ASSERT_TRUE(WaitFor([&] { return net::UdpPortForTests(*ca) != 0; }));
  const uint16_t port = net::UdpPortForTests(*ca);
  // The client's socket is connected to the hub's: it only takes datagrams from the hub's
  // address and port. The forger sends from there (SO_REUSEADDR, as the hub binds it).
  const int fd = socket(AF_INET, SOCK_DGRAM, 0);
  ASSERT_GE(fd, 0);
  const int one = 1;
  ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)), 0);
  sockaddr_in from{};
  from.sin_family = AF_INET;
  from.sin_port = htons(hub.port());
  from.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof(from)), 0) << strerror(errno);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const auto send = [&](ByteSpan d) {
    ASSERT_EQ(sendto(fd, d.data(), d.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to)),
              static_cast<ssize_t>(d.size()));
  };
  // A hub->client datagram sealed with the connection's key, far ahead of the hub's counter.
  net::udp::Datagram d;
  d.type = net::udp::Type::kRegistered;
  d.direction = net::udp::Direction::kHubToClient;
  d.client_id = ca->id();
  d.counter = uint64_t{1} << 40;
  std::array<std::byte, net::udp::kMaxDatagram> good{}, forged{};
  const size_t n = net::udp::Seal(net::UdpKeyForTests(*ca), d, good);
  ASSERT_GT(n, 0u);
  net::udp::Key wrong = net::UdpKeyForTests(*ca);
  wrong[0] ^= 1;
  ASSERT_EQ(net::udp::Seal(wrong, d, forged), n);
  const Stats s0 = ca->stats();
  send(ByteSpan(forged.data(), n));    // spoofed: a MAC under another key
  send(ByteSpan(good.data(), n));      // authentic: accepted
  send(ByteSpan(good.data(), n));      // replayed: a duplicate
  send(ByteSpan(good.data(), n / 2));  // truncated
  // (The authentic one moved the replay window far ahead: anything the hub still sends this
  // connection, e.g. a late REGISTERED, now counts as stale too; hence "at least".)
  EXPECT_TRUE(WaitFor([&] {
    const Stats s = ca->stats();
    return s.datagrams_dropped_bad == s0.datagrams_dropped_bad + 2 &&
           s.datagrams_dropped_stale >= s0.datagrams_dropped_stale + 1;
  })) << ca->stats().ToString();
  // Junk on the hub's UDP port changes nothing: the client still syncs by datagram. (From a
  // socket of its own: while the forger shares the hub's port, datagrams to that port may
  // go to either.)
  close(fd);
  const int junk = socket(AF_INET, SOCK_DGRAM, 0);
  ASSERT_GE(junk, 0);
  to.sin_port = htons(hub.port());
  for (int i = 0; i < 50; ++i) {
    const size_t len = n - static_cast<size_t>(i % 7);
    ASSERT_EQ(sendto(junk, forged.data(), len, 0, reinterpret_cast<sockaddr*>(&to), sizeof(to)),
              static_cast<ssize_t>(len));
  }
  close(junk);
  auto cb = connect(UdpTestOptions(hub.port()));
  Player b(*cb);
  a.pos_x = 42.0;
  EXPECT_TRUE(WaitFor([&] { return b.pos_x.get() == 42.0; }, seconds(30)));
  EXPECT_EQ(hub.Stop(), 0);
  // The hub said so, once (at most a line a minute), naming where they came from.
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("UDP datagram(s) that did not authenticate"), std::string::npos) << text;
  EXPECT_NE(text.find("(the last from 127.0.0.1:"), std::string::npos) << text;
  std::remove(log.c_str());
}

}  // namespace
}  // namespace easysync
