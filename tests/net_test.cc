// Network mode end to end: a real easysync-hub process, real client processes, loopback.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "easysync/easysync.h"
#include "easysync/net.h"
#include "net/net_client.h"
#include "net/protocol.h"
#include "net/ucx_worker.h"
#include "net_test_util.h"

namespace easysync {
namespace {

using std::chrono::seconds;
using testing::Gate;
using testing::HubProcess;
using testing::kTestToken;
using testing::Spawn;
using testing::WaitChild;

NetOptions Options(uint16_t port, std::string transports = "",
                   std::chrono::nanoseconds spin = std::chrono::nanoseconds(-1)) {
  NetOptions o;
  o.port = port;
  o.token = kTestToken;
  o.ucx_transports = std::move(transports);
  o.spin = spin;
  return o;
}

struct Kinds : SyncedObject {
  Synced<int64_t> score{this, "score"};
  Synced<double> ratio{this, "ratio"};
  Synced<bool> flag{this, "flag"};
  Synced<std::string> name{this, "name"};
  Synced<Value> config{this, "config"};
  Synced<std::vector<std::string>> inventory{this, "inventory"};
  Synced<Tensor> weights{this, "weights"};
  Synced<int64_t> done{this, "done"};
  explicit Kinds(Client& c) : SyncedObject(c, "Kinds") {}
};

Tensor Pattern(std::vector<int64_t> shape, uint8_t seed) {
  Tensor t(DType::kFloat32, std::move(shape));
  for (size_t i = 0; i < t.nbytes(); ++i) t.mutable_data()[i] = std::byte(uint8_t(i * 31 + seed));
  return t;
}

Value Config() {
  return Value(Value::Map{
      {"lr", 0.001}, {"layers", Value::List{int64_t{4}, int64_t{8}}}, {"name", "run-7"}});
}

// A tensor large enough to go in segments (32 MiB or more).
struct Big : SyncedObject {
  Synced<Tensor> weights{this, "weights"};
  Synced<int64_t> ready{this, "ready"};  // the reader subscribed
  explicit Big(Client& c) : SyncedObject(c, "Big") {}
};

void EveryKindCrossesTheHub(const std::string& transports,
                            std::chrono::nanoseconds spin = std::chrono::nanoseconds(-1)) {
  HubProcess hub;
  ASSERT_NE(hub.port(), 0) << "the hub did not start";
  const bool big = spin.count() == 0;  // the segmented path too, where nothing spins
  // Children are forked before this process starts UCX.
  const pid_t writer = Spawn([&] {
    auto c = connect(Options(hub.port(), transports, spin));
    if (big) {
      Big b(*c);
      while (b.ready.get() != 1) {
        if (!b.ready.wait_for_change(seconds(30))) return 1;
      }
      Tensor t = Pattern({10, 1 << 20}, 3);  // 40 MiB
      b.weights = t;                         // whole
      t.mutable_data()[12345] ^= std::byte{1};
      t.mutable_data()[t.nbytes() - 1] ^= std::byte{1};
      b.weights = t;  // a delta, in segments
    }
    Kinds s(*c);
    s.score = int64_t{1} << 40;
    s.ratio = 0.125;
    s.flag = true;
    s.name = std::string("player one");
    s.config = Config();
    s.inventory = std::vector<std::string>{"sword", "shield"};
    s.weights = Pattern({17, 33}, 1);
    s.done = 1;
    // Stay until the reader answers, so it can also write back to us.
    return s.done.wait_for_change(seconds(30)) && s.done.get() == 2 ? 0 : 1;
  });
  auto client = connect(Options(hub.port(), transports, spin));
  Big b(*client);
  if (big) b.ready = 1;  // so that the segments come to this client as they are written
  Kinds mine(*client);
  ASSERT_TRUE(client->WaitUntil([&] { return mine.done.get() == 1; }, Clock::now() + seconds(30)));
  if (big) {
    Tensor want = Pattern({10, 1 << 20}, 3);
    want.mutable_data()[12345] ^= std::byte{1};
    want.mutable_data()[want.nbytes() - 1] ^= std::byte{1};
    EXPECT_EQ(b.weights.get(), want);
  }
  EXPECT_EQ(mine.score.get(), int64_t{1} << 40);
  EXPECT_EQ(mine.ratio.get(), 0.125);
  EXPECT_TRUE(mine.flag.get());
  EXPECT_EQ(mine.name.get(), "player one");
  EXPECT_EQ(mine.config.get(), Config());
  EXPECT_EQ(mine.inventory.get(), (std::vector<std::string>{"sword", "shield"}));
  EXPECT_EQ(mine.weights.get(), Pattern({17, 33}, 1));
  EXPECT_NE(mine.score.info().writer, client->id());
  mine.done = 2;
  EXPECT_EQ(WaitChild(writer), 0);
  const Stats st = client->stats();
  EXPECT_GT(st.bytes_recv, 17u * 33u * 4u);
  EXPECT_GE(st.packets_recv, 8u);
  EXPECT_GE(st.packets_sent, 3u);
  EXPECT_EQ(st.updates_sent, big ? 2u : 1u);
  if (big) {
    EXPECT_GE(st.deltas_recv, 1u);  // the segmented delta, applied as it came
  }
  client.reset();
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetBus, EveryKindCrossesTheHub) { EveryKindCrossesTheHub(""); }
TEST(NetBus, EveryKindCrossesTheHubOverUcxTcp) { EveryKindCrossesTheHub("tcp"); }
// No thread spins: frames leave from the writing threads and answers wake the progress thread.
TEST(NetBus, EveryKindCrossesTheHubWithoutSpinning) {
  EveryKindCrossesTheHub("tcp", std::chrono::nanoseconds(0));
}

TEST(NetBus, LateJoinerSeesCurrentStateAndDoesNotResetIt) {
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  Gate go;
  struct Game : SyncedObject {
    Synced<int64_t> score{this, "score", 0};  // an initial value: only if the cluster has none
    Synced<std::string> map{this, "map", std::string("lobby")};
    explicit Game(Client& c) : SyncedObject(c, "Game") {}
  };
  const pid_t late = Spawn([&] {
    if (!go.Wait()) return 2;
    auto c = connect(Options(hub.port()));
    Game g(*c);
    return g.score.get() == 42 && g.map.get() == "arena" && g.score.version() == 2 ? 0 : 1;
  });
  auto client = connect(Options(hub.port()));
  Game g(*client);
  EXPECT_EQ(g.score.get(), 0);
  EXPECT_EQ(g.score.version(), 1u);
  g.score = 42;
  g.map = std::string("arena");
  go.Open();
  EXPECT_EQ(WaitChild(late), 0);
  EXPECT_EQ(g.score.get(), 42);
  EXPECT_EQ(g.score.version(), 2u);
  EXPECT_EQ(client->LatestVersion(g.score.attr()), 2u);
  client.reset();
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetBus, WritesFromTwoProcessesConverge) {
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  struct Counter : SyncedObject {
    Synced<int64_t> a{this, "a"};
    Synced<int64_t> b{this, "b"};
    explicit Counter(Client& c) : SyncedObject(c, "Counter") {}
  };
  const pid_t child = Spawn([&] {
    auto c = connect(Options(hub.port()));
    Counter s(*c);
    for (int64_t i = 1; i <= 200; ++i) s.b = i;
    // Wait for all of the other side's writes, then write while it surely listens.
    if (!c->WaitUntil([&] { return s.a.get() == 200; }, Clock::now() + seconds(30))) return 1;
    for (int64_t i = 201; i <= 216; ++i) s.b = i;
    return 0;
  });
  auto client = connect(Options(hub.port()));
  Counter s(*client);
  for (int64_t i = 1; i <= 200; ++i) s.a = i;
  EXPECT_TRUE(client->WaitUntil([&] { return s.b.get() == 216; }, Clock::now() + seconds(30)));
  EXPECT_EQ(WaitChild(child), 0);
  const Stats st = client->stats();
  EXPECT_GT(st.latency_samples, 0u);
  // Clock offsets are estimated from one handshake round trip (docs/net_protocol.md), whose
  // error can exceed a loopback hop on a loaded machine: every sample may then read as 0.
  // Only the bounds are certain.
  EXPECT_GE(st.latency_max_ms, st.latency_ms);
  EXPECT_LT(st.latency_ms, 10000.0);
  client.reset();
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetBus, ChangeCallbackRunsForRemoteWrites) {
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  struct Obj : SyncedObject {
    Synced<int64_t> x{this, "x"};
    explicit Obj(Client& c) : SyncedObject(c, "Obj") {}
  };
  Gate go;
  const pid_t child = Spawn([&] {
    if (!go.Wait()) return 2;
    auto c = connect(Options(hub.port()));
    Obj o(*c);
    o.x = 7;
    return 0;
  });
  auto client = connect(Options(hub.port()));
  Obj o(*client);
  std::atomic<int64_t> seen{0};
  auto sub = o.x.on_change([&](const int64_t& v) { seen = v; });
  go.Open();
  EXPECT_TRUE(testing::WaitFor([&] { return seen.load() == 7; }));
  EXPECT_EQ(WaitChild(child), 0);
  sub.reset();
  client.reset();
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetBus, KindMismatchIsReportedAndTheConnectionStays) {
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  auto client = connect(Options(hub.port()));
  ASSERT_TRUE(client->Declare("O", "v", ValueKind::kInt64, nullptr).ok());
  auto bad = client->Declare("O", "v", ValueKind::kString, nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kTypeMismatch) << bad.status().ToString();
  EXPECT_TRUE(client->Declare("O", "w", ValueKind::kInt64, nullptr).ok());
  auto empty = client->Declare("", "w", ValueKind::kInt64, nullptr);
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  client.reset();
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetAuth, WrongTokenIsRejectedAndTheHubServesOthers) {
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  NetOptions bad = Options(hub.port());
  bad.token = "not-the-token";
  auto r = TryConnect(bad);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kPermissionDenied) << r.status().ToString();
  EXPECT_NE(r.status().message().find("token"), std::string::npos) << r.status().ToString();
  auto good = TryConnect(Options(hub.port()));
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  EXPECT_GT(good.value()->id(), 0u);
  good.value().reset();
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetAuth, MissingTokenIsAClearError) {
  NetOptions o;
  o.port = 1;
  unsetenv("EASYSYNC_TOKEN");
  auto r = TryConnect(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("token"), std::string::npos);
}

TEST(NetAuth, OtherProtocolVersionIsRejected) {
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  auto r = net::TryConnectWithVersion(Options(hub.port()), net::kProtocolVersion + 1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  EXPECT_NE(
      r.status().message().find("protocol version " + std::to_string(net::kProtocolVersion + 1)),
      std::string::npos)
      << r.status().ToString();
  EXPECT_TRUE(TryConnect(Options(hub.port())).ok());
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetTransports, ATransportWithoutADeviceNamesWhatUcxFound) {
  // No RDMA NIC here (and if there were one, "rc" would simply work: then there is nothing
  // to check). The client's error lists what UCX does have, tcp among it.
  const std::string found = net::AvailableTransports();
  ASSERT_NE(found.find("tcp"), std::string::npos) << found;
  if (found.find("rc") != std::string::npos) GTEST_SKIP() << "this machine has rc: " << found;
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  auto r = TryConnect(Options(hub.port(), "rc"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  EXPECT_NE(r.status().message().find("'rc'"), std::string::npos) << r.status().ToString();
  EXPECT_NE(r.status().message().find("tcp ("), std::string::npos) << r.status().ToString();
  // The hub refuses to start the same way, with the same words.
  HubProcess rdma_hub({"--ucx-transports", "rc"});
  EXPECT_EQ(rdma_hub.port(), 0);
  EXPECT_EQ(rdma_hub.Stop(), 1);
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetAuth, OptionsThatWouldSpinOrGiveUpAtOnceAreRefused) {
  NetOptions o = Options(1);  // refused before any connection is tried
  o.keepalive_interval = std::chrono::milliseconds(0);
  auto r = TryConnect(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("keepalive_interval"), std::string::npos);
  o = Options(1);
  o.keepalive_timeout = o.keepalive_interval;
  EXPECT_EQ(TryConnect(o).status().code(), StatusCode::kInvalidArgument);
  o = Options(1);
  o.reconnect_backoff_max = std::chrono::milliseconds(10);
  o.reconnect_backoff_min = std::chrono::milliseconds(20);
  EXPECT_EQ(TryConnect(o).status().code(), StatusCode::kInvalidArgument);
  o = Options(1);
  o.request_timeout = std::chrono::milliseconds(0);
  EXPECT_EQ(TryConnect(o).status().code(), StatusCode::kInvalidArgument);
  o = Options(1);
  o.encode_threads = 65;
  r = TryConnect(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("encode_threads"), std::string::npos);
  o = Options(1);
  o.decode_threads = 65;
  r = TryConnect(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("decode_threads"), std::string::npos);
}

TEST(NetAuth, NoHubIsUnavailableNotAHang) {
  uint16_t port;
  {
    HubProcess hub;  // a port that was free a moment ago, and is closed now
    ASSERT_NE(hub.port(), 0);
    port = hub.port();
    EXPECT_EQ(hub.Stop(), 0);
  }
  NetOptions o = Options(port);
  o.connect_timeout = std::chrono::milliseconds(5000);
  auto r = TryConnect(o);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.status().code() == StatusCode::kUnavailable ||
              r.status().code() == StatusCode::kTimeout ||
              r.status().code() == StatusCode::kIoError)
      << r.status().ToString();
}

TEST(NetLimits, OversizeMessageIsRejectedAndOnlyThatPeerDropped) {
  HubProcess hub({"--max-message-bytes", "4096"});
  ASSERT_NE(hub.port(), 0);
  auto big = connect(Options(hub.port()));
  auto other = connect(Options(hub.port()));
  auto a = big->Declare("L", "s", ValueKind::kString, nullptr);
  ASSERT_TRUE(a.ok());
  const std::string huge(100000, 'x');
  auto w =
      big->Write(*a, huge.size(), [&](std::byte* p) { std::memcpy(p, huge.data(), huge.size()); });
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kResourceExhausted) << w.status().ToString();
  // The other client is still served.
  auto b = other->Declare("L", "s", ValueKind::kString, nullptr);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  auto v = other->Write(*b, 3, [](std::byte* p) { std::memset(p, 'y', 3); });
  EXPECT_TRUE(v.ok()) << v.status().ToString();
  big.reset();
  other.reset();
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetLimits, HubMemoryBoundsRefuseOneRequestAndKeepTheConnection) {
  HubProcess hub({"--max-total-value-bytes", "100000", "--max-attributes", "3"});
  ASSERT_NE(hub.port(), 0);
  auto c = connect(Options(hub.port()));
  auto s = c->Declare("M", "s", ValueKind::kString, nullptr);
  ASSERT_TRUE(s.ok());
  const std::string fits(60000, 'a'), too_much(50000, 'b');
  auto put = [&](AttrId id, const std::string& v) {
    return c->Write(id, v.size(), [&](std::byte* p) { std::memcpy(p, v.data(), v.size()); });
  };
  ASSERT_TRUE(put(*s, fits).ok());
  auto t = c->Declare("M", "t", ValueKind::kString, nullptr);
  ASSERT_TRUE(t.ok());
  // 60000 + 50000 bytes of values: over the bound. Refused, the connection stays.
  auto w = put(*t, too_much);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kResourceExhausted) << w.status().ToString();
  EXPECT_NE(w.status().message().find("--max-total-value-bytes"), std::string::npos);
  // Replacing a value counts only the difference.
  EXPECT_TRUE(put(*s, std::string(30000, 'c')).ok());
  EXPECT_TRUE(put(*t, too_much).ok());
  // The attribute bound: a fourth attribute is refused, a known one is still found.
  ASSERT_TRUE(c->Declare("M", "u", ValueKind::kInt64, nullptr).ok());
  auto v = c->Declare("M", "v", ValueKind::kInt64, nullptr);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), StatusCode::kResourceExhausted) << v.status().ToString();
  EXPECT_TRUE(c->Declare("M", "s", ValueKind::kString, nullptr).ok());
  c.reset();
  EXPECT_EQ(hub.Stop(), 0);
}

}  // namespace
}  // namespace easysync
