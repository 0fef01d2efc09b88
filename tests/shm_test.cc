// The shared-memory bus between real processes: every attribute kind, late joiners,
// growth, waiting, callbacks, two writers, stats.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "easysync/easysync.h"
#include "process_util.h"

// A value type whose reads are counted: what a proxy decodes, and when.
struct Counted {
  std::string s;
};
std::atomic<int> counted_decodes{0};

namespace easysync {
template <>
struct ValueTraits<Counted> {
  static constexpr ValueKind kKind = ValueKind::kBytes;
  template <class F>
  static auto WithEncoding(const Counted& v, F&& f) {
    return ValueTraits<std::string>::WithEncoding(v.s, std::forward<F>(f));
  }
  static Status Decode(ByteSpan in, Counted* out) {
    counted_decodes.fetch_add(1);
    return ValueTraits<std::string>::Decode(in, &out->s);
  }
};

namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using testing::Spawn;
using testing::UniqueCluster;
using testing::WaitChild;

struct Everything : SyncedObject {
  Synced<bool> flag{this, "flag"};
  Synced<int64_t> score{this, "score"};
  Synced<int32_t> small{this, "small"};
  Synced<uint8_t> byte{this, "byte"};
  Synced<double> ratio{this, "ratio"};
  Synced<float> pos_x{this, "pos_x"};
  Synced<std::string> name{this, "name"};
  Synced<Bytes> blob{this, "blob"};
  Synced<Value> config{this, "config"};
  Synced<std::vector<std::string>> inventory{this, "inventory"};
  Synced<Tensor> weights{this, "weights"};
  Synced<Tensor> half{this, "half"};
  Synced<Tensor> empty{this, "empty"};
  Synced<int64_t> done{this, "done"};
  explicit Everything(Client& c) : SyncedObject(c, "Everything") {}
};

Tensor Pattern(DType d, std::vector<int64_t> shape, uint8_t seed) {
  Tensor t(d, std::move(shape));
  for (size_t i = 0; i < t.nbytes(); ++i) t.mutable_data()[i] = std::byte(uint8_t(i * 31 + seed));
  return t;
}

Value Config() {
  return Value(Value::Map{{"lr", 0.001},
                          {"layers", Value::List{int64_t{4}, int64_t{8}}},
                          {"name", "run-7"},
                          {"resume", false}});
}

TEST(ShmBus, EveryAttributeKindCrossesProcesses) {
  const std::string cluster = UniqueCluster("kinds");
  auto client = shm_connect(cluster);
  Everything mine(*client);
  const pid_t writer = Spawn([&] {
    auto c = shm_connect(cluster);
    Everything s(*c);
    s.flag = true;
    s.score = int64_t{1} << 40;
    s.small = -7;
    s.byte = uint8_t{200};
    s.ratio = 0.125;
    s.pos_x = -3.5f;
    s.name = std::string("player one");
    s.blob = Bytes{0, 1, 2, 255};
    s.config = Config();
    s.inventory = std::vector<std::string>{"sword", "shield", "potion"};
    s.weights = Pattern(DType::kFloat32, {17, 33}, 1);
    s.half = Pattern(DType::kBFloat16, {5, 3, 2}, 2);
    s.empty = Tensor(DType::kInt64, {0});
    s.done = 1;
    // Stay until the reader has seen everything, so the cluster outlives the write.
    return s.done.wait_for_change(seconds(30)) && s.done.get() == 2 ? 0 : 1;
  });
  ASSERT_TRUE(mine.done.wait_for_change(seconds(30)));
  EXPECT_EQ(mine.flag.get(), true);
  EXPECT_EQ(mine.score.get(), int64_t{1} << 40);
  EXPECT_EQ(mine.small.get(), -7);
  EXPECT_EQ(mine.byte.get(), 200);
  EXPECT_EQ(mine.ratio.get(), 0.125);
  EXPECT_EQ(mine.pos_x.get(), -3.5f);
  EXPECT_EQ(mine.name.get(), "player one");
  EXPECT_EQ(mine.blob.get(), (Bytes{0, 1, 2, 255}));
  EXPECT_EQ(mine.config.get(), Config());
  EXPECT_EQ(mine.inventory.get(), (std::vector<std::string>{"sword", "shield", "potion"}));
  EXPECT_EQ(mine.weights.get(), Pattern(DType::kFloat32, {17, 33}, 1));
  EXPECT_EQ(mine.half.get(), Pattern(DType::kBFloat16, {5, 3, 2}, 2));
  EXPECT_EQ(mine.empty.get(), Tensor(DType::kInt64, {0}));
  EXPECT_EQ(mine.score.info().writer, mine.done.info().writer);
  EXPECT_NE(mine.score.info().writer, client->id());
  mine.done = 2;
  EXPECT_EQ(WaitChild(writer), 0);
}

struct Game : SyncedObject {
  Synced<int64_t> score{this, "score", 0};
  Synced<std::string> level{this, "level", std::string("intro")};
  explicit Game(Client& c, std::string key = "") : SyncedObject(c, "Game", std::move(key)) {}
};

TEST(ShmBus, LateJoinerSeesCurrentStateAndNeverResetsIt) {
  const std::string cluster = UniqueCluster("late");
  auto client = shm_connect(cluster);
  Game g(*client);
  EXPECT_EQ(g.score.get(), 0);
  g.score = 42;
  g.level = std::string("castle");
  const pid_t late = Spawn([&] {
    auto c = shm_connect(cluster);
    Game mine(*c);  // declares score = 0 and level = "intro": must not reset them
    return mine.score.get() == 42 && mine.level.get() == "castle" && mine.score.version() == 2 ? 0
                                                                                               : 1;
  });
  EXPECT_EQ(WaitChild(late), 0);
  EXPECT_EQ(g.score.get(), 42);
  EXPECT_EQ(g.score.version(), 2u);
}

TEST(ShmBus, InfoDescribesTheValueThisProcessWrote) {
  auto client = shm_connect(UniqueCluster("info"));
  auto other = shm_connect(client->cluster());
  Game mine(*client), theirs(*other);
  theirs.score = 5;
  EXPECT_EQ(mine.score.info().writer, other->id());
  const int64_t before = MonotonicNanos();
  const uint64_t v = mine.score.set(6);
  const UpdateInfo info = mine.score.info();  // no read in between: set() alone must update it
  EXPECT_EQ(info.version, v);
  EXPECT_EQ(info.writer, client->id());
  EXPECT_GE(info.write_ns, before);
  EXPECT_EQ(info.bytes, sizeof(int64_t));
  EXPECT_EQ(mine.score.get(), 6);
}

struct CountedDoc : SyncedObject {
  Synced<Counted> body{this, "body"};
  explicit CountedDoc(Client& c) : SyncedObject(c, "CountedDoc") {}
};

TEST(ShmBus, InfoAfterSetReadsTheDetailsNotTheValue) {
  auto client = shm_connect(UniqueCluster("info_details"));
  auto other = shm_connect(client->cluster());
  CountedDoc mine(*client), theirs(*other);
  const uint64_t v = mine.body.set(Counted{std::string(1 << 20, 'x')});
  const int before = counted_decodes.load();
  const UpdateInfo info = mine.body.info();
  EXPECT_EQ(counted_decodes.load(), before);  // a megabyte is not copied to learn its clock
  EXPECT_EQ(info.version, v);
  EXPECT_EQ(info.writer, client->id());
  EXPECT_EQ(info.bytes, 1u << 20);
  // A newer value that came meanwhile is what info() and get() then describe.
  mine.body.set(Counted{"mine"});
  theirs.body.set(Counted{"theirs"});
  EXPECT_EQ(mine.body.info().writer, other->id());
  EXPECT_EQ(mine.body.get().s, "theirs");
}

TEST(ShmBus, KeysSeparateInstancesOfOneClass) {
  auto client = shm_connect(UniqueCluster("keys"));
  Game a(*client, "a"), b(*client, "b");
  a.score = 1;
  b.score = 2;
  Game a2(*client, "a");
  EXPECT_EQ(a2.score.get(), 1);
  EXPECT_EQ(b.score.get(), 2);
}

TEST(ShmBus, ValuesGrowBeyondTheirSlot) {
  const std::string cluster = UniqueCluster("grow");
  auto client = shm_connect(cluster);
  struct Doc : SyncedObject {
    Synced<std::string> text{this, "text", std::string("x")};
    Synced<Tensor> t{this, "t"};
    Synced<int64_t> ack{this, "ack", 0};
    explicit Doc(Client& c) : SyncedObject(c, "Doc") {}
  } doc(*client);
  const std::vector<size_t> sizes{10, 100, 5000, 70000, 3000000, 50};
  const pid_t reader = Spawn([&] {
    auto c = shm_connect(cluster);
    Doc d(*c);
    for (size_t size : sizes) {
      while (d.text.get().size() != size) {
        if (!d.text.wait_for_change(seconds(20))) return 1;
      }
      if (d.text.get() != std::string(size, char('a' + size % 26))) return 2;
      d.ack = static_cast<int64_t>(size);
    }
    while (d.t.get().numel() != 1 << 20) {
      if (!d.t.wait_for_change(seconds(20))) return 3;
    }
    return d.t.get() == Pattern(DType::kFloat32, {1 << 20}, 9) ? 0 : 4;
  });
  for (size_t size : sizes) {
    doc.text = std::string(size, char('a' + size % 26));
    while (doc.ack.get() != static_cast<int64_t>(size)) {
      ASSERT_TRUE(doc.ack.wait_for_change(seconds(20))) << "reader never saw size " << size;
    }
  }
  doc.t = Pattern(DType::kFloat32, {1 << 10}, 8);
  doc.t = Pattern(DType::kFloat32, {1 << 20}, 9);
  EXPECT_EQ(WaitChild(reader), 0);
}

TEST(ShmBus, WaitForChangeHonoursItsDeadline) {
  auto client = shm_connect(UniqueCluster("deadline"));
  Game g(*client);
  const auto t0 = Clock::now();
  EXPECT_FALSE(g.score.wait_for_change(milliseconds(30)));
  EXPECT_GE(Clock::now() - t0, milliseconds(30));
}

// A callback that runs late reads a version newer than the one that woke it; the callback
// thread's next round (woken by that newer version) must not deliver the same value again.
TEST(ShmBus, ACallbackSeesEachValueOnceWhenWritesLandDuringIt) {
  const std::string cluster = UniqueCluster("callback_once");
  auto reader = shm_connect(cluster);
  auto writer = shm_connect(cluster);
  Game r(*reader), w(*writer);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int64_t> seen;
  Subscription sub = r.score.on_change([&](const int64_t& v) {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(v);
    cv.notify_all();
  });
  for (int64_t k = 1; k <= 300; ++k) {
    w.score = 2 * k;  // two writes back to back: the second often lands mid-callback
    w.score = 2 * k + 1;
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(
        cv.wait_for(lock, seconds(20), [&] { return !seen.empty() && seen.back() == 2 * k + 1; }));
  }
  std::lock_guard<std::mutex> lock(mu);
  for (size_t i = 1; i < seen.size(); ++i) ASSERT_LT(seen[i - 1], seen[i]) << "delivery " << i;
}

TEST(ShmBus, CallbacksFireForWritesOfOtherProcesses) {
  const std::string cluster = UniqueCluster("callbacks");
  auto client = shm_connect(cluster);
  Game g(*client);
  std::mutex mu;
  std::vector<int64_t> seen;
  std::condition_variable cv;
  Subscription sub = g.score.on_change([&](const int64_t& v) {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(v);
    cv.notify_all();
  });
  const pid_t writer = Spawn([&] {
    auto c = shm_connect(cluster);
    Game mine(*c);
    for (int64_t i = 1; i <= 5; ++i) mine.score = i * 10;
    return 0;
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    // Versions may coalesce, but the last one is always delivered.
    ASSERT_TRUE(cv.wait_for(lock, seconds(20), [&] { return !seen.empty() && seen.back() == 50; }));
    for (size_t i = 1; i < seen.size(); ++i) EXPECT_LT(seen[i - 1], seen[i]);
  }
  EXPECT_EQ(WaitChild(writer), 0);
  sub.reset();
  g.score = 99;  // no callback after unsubscribing
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(seen.back(), 50);
}

TEST(ShmBus, TwoWritersConvergeOnTheLastWrite) {
  const std::string cluster = UniqueCluster("twowriters");
  auto client = shm_connect(cluster);
  struct Race : SyncedObject {
    Synced<int64_t> value{this, "value", 0};
    explicit Race(Client& c) : SyncedObject(c, "Race") {}
  } race(*client);
  constexpr int kWrites = 2000;
  auto writer = [&](int64_t base) {
    return [&cluster, base] {
      auto c = shm_connect(cluster);
      Race r(*c);
      for (int i = 0; i < kWrites; ++i) r.value = base + i;
      return 0;
    };
  };
  const pid_t a = Spawn(writer(1'000'000));
  const pid_t b = Spawn(writer(2'000'000));
  ASSERT_EQ(WaitChild(a), 0);
  ASSERT_EQ(WaitChild(b), 0);
  const int64_t last = race.value.get();
  const UpdateInfo info = race.value.info();
  EXPECT_EQ(info.version, 1u + 2 * kWrites);  // the initial value, then every write in order
  EXPECT_TRUE(last == 1'000'000 + kWrites - 1 || last == 2'000'000 + kWrites - 1) << last;
  // A third process converges on the same value, with the highest clock of all writes.
  const pid_t c = Spawn([&] {
    auto cl = shm_connect(cluster);
    Race r(*cl);
    return r.value.get() == last && r.value.info().clock == info.clock ? 0 : 1;
  });
  EXPECT_EQ(WaitChild(c), 0);
  EXPECT_GE(info.clock, static_cast<uint64_t>(2 * kWrites));
}

TEST(ShmBus, StatsCountWhatCrossesTheSegmentAndMeasureLatency) {
  const std::string cluster = UniqueCluster("stats");
  auto client = shm_connect(cluster);
  Game g(*client);
  const Stats before = client->stats();
  const pid_t writer = Spawn([&] {
    auto c = shm_connect(cluster);
    Game mine(*c);
    for (int64_t i = 1; i <= 3; ++i) mine.score = i;
    const Stats s = c->stats();
    return s.updates_sent == 3 && s.packets_sent == 3 && s.bytes_sent == 3 * sizeof(int64_t) ? 0
                                                                                             : 1;
  });
  ASSERT_EQ(WaitChild(writer), 0);
  EXPECT_EQ(g.score.get(), 3);
  const Stats after = client->stats();
  EXPECT_EQ(after.updates_applied - before.updates_applied, 1u);  // only the newest is read
  EXPECT_EQ(after.packets_recv - before.packets_recv, 1u);
  EXPECT_EQ(after.bytes_recv - before.bytes_recv, sizeof(int64_t));
  EXPECT_GT(after.latency_ms, 0.0);
  EXPECT_GE(after.latency_max_ms, after.latency_last_ms);
  EXPECT_EQ(client->stats().AsMap().count("packets_recv"), 1u);
}

TEST(ShmBus, DeclaringWithAnotherTypeIsAnError) {
  auto client = shm_connect(UniqueCluster("types"));
  Game g(*client);
  struct Other : SyncedObject {
    Synced<double> score{this, "score", 0.0};
    explicit Other(Client& c) : SyncedObject(c, "Game") {}
  };
  try {
    Other o(*client);
    FAIL() << "declared int64 attribute as double";
  } catch (const Error& e) {
    EXPECT_EQ(e.status().code(), StatusCode::kTypeMismatch);
    EXPECT_NE(std::string(e.what()).find("Game.score"), std::string::npos) << e.what();
  }
}

TEST(ShmBus, OneGibibyteTensor) {
  const std::string cluster = UniqueCluster("gib");
  auto client = shm_connect(cluster);
  struct Big : SyncedObject {
    Synced<Tensor> t{this, "t"};
    explicit Big(Client& c) : SyncedObject(c, "Big") {}
  } big(*client);
  const int64_t n = (int64_t{1} << 30) / 4;
  const pid_t writer = Spawn([&] {
    auto c = shm_connect(cluster);
    Big b(*c);
    Tensor t(DType::kFloat32, {n});
    float* p = t.mutable_data_as<float>();
    for (int64_t i = 0; i < n; i += 4096) p[i] = static_cast<float>(i);
    p[n - 1] = 7.f;
    b.t = t;
    return 0;
  });
  ASSERT_TRUE(big.t.wait_for_change(seconds(120)));
  const Tensor got = big.t.get();
  ASSERT_EQ(got.numel(), static_cast<size_t>(n));
  const float* p = got.data_as<float>();
  for (int64_t i = 0; i < n - 1; i += 4096) ASSERT_EQ(p[i], static_cast<float>(i));
  EXPECT_EQ(p[n - 1], 7.f);
  EXPECT_EQ(p[1], 0.f);
  EXPECT_EQ(WaitChild(writer, seconds(120)), 0);
}

TEST(ShareClient, ATicketIsRedeemedOnceForTheSameConnection) {
  auto client = shm_connect(UniqueCluster("share"));
  const uint64_t ticket = ShareClient(client);
  auto taken = TakeSharedClient(ticket);
  ASSERT_TRUE(taken.ok()) << taken.status().ToString();
  EXPECT_EQ(taken.value().get(), client.get());
  auto again = TakeSharedClient(ticket);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(TakeSharedClient(ticket + 12345).ok());
}

}  // namespace
}  // namespace easysync
