// The shared-memory bus under abuse: writers killed mid-write, truncated and scribbled
// segments, stale segments, racing creators, wrong modes and names.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "easysync/easysync.h"
#include "process_util.h"
#include "shm/layout.h"

namespace easysync {
namespace {

using std::chrono::seconds;
using testing::ClusterFiles;
using testing::Spawn;
using testing::UniqueCluster;
using testing::WaitChild;

constexpr size_t kBlobBytes = 256 * 1024;

// A value that proves its own wholeness: byte i is (counter + i) mod 256.
Bytes Whole(uint64_t counter) {
  Bytes b(kBlobBytes);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(counter + i);
  std::memcpy(b.data(), &counter, sizeof(counter));
  return b;
}
bool IsWhole(const Bytes& b) {
  if (b.size() != kBlobBytes) return false;
  uint64_t counter;
  std::memcpy(&counter, b.data(), sizeof(counter));
  for (size_t i = sizeof(counter); i < b.size(); ++i) {
    if (b[i] != static_cast<uint8_t>(counter + i)) return false;
  }
  return true;
}

struct Torture : SyncedObject {
  Synced<Bytes> blob{this, "blob"};
  Synced<int64_t> stop{this, "stop", 0};
  Synced<int64_t> reads{this, "reads", 0};
  explicit Torture(Client& c) : SyncedObject(c, "Torture") {}
};

TEST(ShmRobustness, WriterKilledMidWrite200TimesLeavesWholeValuesAndBlocksNobody) {
  const std::string cluster = UniqueCluster("sigkill");
  auto client = shm_connect(cluster);
  Torture t(*client);
  t.blob = Whole(0);
  const pid_t reader = Spawn([&] {
    auto c = shm_connect(cluster);
    Torture r(*c);
    int64_t checked = 0;
    while (r.stop.get() == 0) {
      if (!IsWhole(r.blob.get())) return 1;
      ++checked;
    }
    if (!IsWhole(r.blob.get())) return 1;
    r.reads = checked;
    return checked > 0 ? 0 : 2;
  });
  uint64_t counter = 1;
  for (int round = 0; round < 200; ++round) {
    const uint64_t start = counter;
    counter += 1'000'000;
    const pid_t writer = Spawn([&] {
      auto c = shm_connect(cluster);
      Torture w(*c);
      for (uint64_t k = start;; ++k) w.blob = Whole(k);
      return 0;
    });
    // Kill it while it is busy writing: after it has published twice.
    const uint64_t v0 = t.blob.version();
    while (t.blob.version() < v0 + 2) {
      ASSERT_TRUE(t.blob.wait_for_change(seconds(20)))
          << "writer made no progress in round " << round;
    }
    kill(writer, SIGKILL);
    ASSERT_EQ(WaitChild(writer), 128 + SIGKILL);
    ASSERT_TRUE(IsWhole(t.blob.get())) << "round " << round;
  }
  // The slot lock of the last killed writer passes on: this write must not block.
  t.blob = Whole(counter);
  EXPECT_EQ(t.blob.get(), Whole(counter));
  t.stop = 1;
  EXPECT_EQ(WaitChild(reader, seconds(60)), 0);
  EXPECT_GT(t.reads.get(), 0);
}

// The segment's header, mapped to watch its waiter count (read-only unless `writable`, for a
// test that plays another process's part in it).
class HeaderView {
 public:
  explicit HeaderView(const std::string& cluster, bool writable = false) {
    const int fd = open(("/dev/shm/easysync." + cluster).c_str(), writable ? O_RDWR : O_RDONLY);
    if (fd < 0) return;
    void* p = mmap(nullptr, sizeof(shm::SegmentHeader), PROT_READ | (writable ? PROT_WRITE : 0),
                   MAP_SHARED, fd, 0);
    close(fd);
    if (p != MAP_FAILED) h_ = static_cast<shm::SegmentHeader*>(p);
  }
  ~HeaderView() {
    if (h_ != nullptr) munmap(h_, sizeof(shm::SegmentHeader));
  }
  bool ok() const { return h_ != nullptr; }
  uint32_t waiters() const { return h_->waiters.load(); }
  shm::SegmentHeader& header() { return *h_; }  // REQUIRES: writable

 private:
  shm::SegmentHeader* h_ = nullptr;
};

bool WaitUntilTrue(const std::function<bool()>& done, const std::function<void()>& step = {}) {
  const auto until = std::chrono::steady_clock::now() + seconds(20);
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    if (step) step();
    usleep(1000);
  }
  return true;
}

// A process that joins the cluster and sleeps in wait_for_change until `stop` changes.
pid_t SpawnSleeper(const std::string& cluster) {
  return Spawn([&] {
    auto c = shm_connect(cluster);
    Torture r(*c);
    const uint64_t seen = r.stop.version();
    while (r.stop.version() == seen) (void)r.stop.wait_for_change(seconds(3600));
    return 0;
  });
}

// A reader killed in its sleep (wait_for_change) would stay counted as a waiter, and every
// write would wake the bell from then on (a system call each). A write that wakes nobody
// finds the dead client's entry and takes it off; a live waiter in another process is still
// counted and woken.
TEST(ShmRobustness, AWaiterKilledInItsSleepStopsCounting) {
  const std::string cluster = UniqueCluster("deadwaiter");
  auto client = shm_connect(cluster);
  Torture t(*client);
  HeaderView header(cluster);
  ASSERT_TRUE(header.ok());
  const auto sleeper = [&] { return SpawnSleeper(cluster); };
  const pid_t victim = sleeper();
  ASSERT_TRUE(WaitUntilTrue([&] { return header.waiters() == 1; }));
  kill(victim, SIGKILL);
  ASSERT_EQ(WaitChild(victim), 128 + SIGKILL);
  EXPECT_EQ(header.waiters(), 1u);  // nothing else can know yet
  int64_t writes = 0;
  EXPECT_TRUE(WaitUntilTrue([&] { return header.waiters() == 0; }, [&] { t.reads = ++writes; }))
      << "the killed waiter still counts after " << writes << " writes";

  const pid_t live = sleeper();
  ASSERT_TRUE(WaitUntilTrue([&] { return header.waiters() == 1; }));
  for (int i = 0; i < 50; ++i) t.reads = ++writes;  // wakes it; it sleeps again
  ASSERT_TRUE(WaitUntilTrue([&] { return header.waiters() == 1; }));
  t.stop = 1;
  EXPECT_EQ(WaitChild(live, seconds(20)), 0) << "a live waiter missed the write it waited for";
  EXPECT_EQ(header.waiters(), 0u);
}

// A dead waiter's pid taken by another process: the entry records when its process started,
// so a live process of that pid that started at another time does not keep the dead one's
// count (the sweep used to take any live pid for the client's).
TEST(ShmRobustness, AWaiterWhosePidWasReusedStopsCounting) {
  const std::string cluster = UniqueCluster("reusedpid");
  auto client = shm_connect(cluster);
  Torture t(*client);
  HeaderView header(cluster, /*writable=*/true);
  ASSERT_TRUE(header.ok());
  const pid_t victim = SpawnSleeper(cluster);
  ASSERT_TRUE(WaitUntilTrue([&] { return header.waiters() == 1; }));
  kill(victim, SIGKILL);
  ASSERT_EQ(WaitChild(victim), 128 + SIGKILL);
  // Another process gets the victim's pid (the test writes it into the entry: waiting for
  // the kernel to hand the same pid out again would take ~4 million forks). It starts later
  // than the victim did (a tick of /proc's clock is 10 ms).
  usleep(30'000);
  const pid_t impostor = Spawn([] {
    pause();
    return 0;
  });
  ASSERT_GT(impostor, 0);
  int found = 0;
  for (shm::WaiterSlot& w : header.header().waiter_slots) {
    if (w.pid.load() != victim) continue;
    ASSERT_NE(w.start_time.load(), 0u) << "the entry did not record when its process started";
    w.pid.store(impostor);
    ++found;
  }
  ASSERT_EQ(found, 1) << "no entry of the victim's";
  int64_t writes = 0;
  EXPECT_TRUE(WaitUntilTrue([&] { return header.waiters() == 0; }, [&] { t.reads = ++writes; }))
      << "the dead waiter still counts after " << writes << " writes (its pid is alive)";
  EXPECT_EQ(kill(impostor, 0), 0) << "the impostor is left alone";
  kill(impostor, SIGKILL);
  EXPECT_EQ(WaitChild(impostor), 128 + SIGKILL);
}

// Forks a process that joins the cluster and stays until killed, so the segment lives.
pid_t Holder(const std::string& cluster, const std::function<void(SyncedObject&)>& setup = {}) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  const pid_t pid = Spawn([&] {
    auto c = shm_connect(cluster);
    SyncedObject obj(*c, "Obj");
    if (setup) setup(obj);
    char x = 1;
    if (write(fds[1], &x, 1) != 1) return 3;
    pause();
    return 0;
  });
  char x;
  close(fds[1]);
  const bool ready = read(fds[0], &x, 1) == 1;
  close(fds[0]);
  return ready ? pid : -1;
}

std::string SegmentPath(const std::string& cluster) { return "/dev/shm/easysync." + cluster; }

TEST(ShmRobustness, TruncatedSegmentIsAClearError) {
  const std::string cluster = UniqueCluster("truncated");
  const pid_t holder = Holder(cluster);
  ASSERT_GT(holder, 0);
  struct stat st {};
  ASSERT_EQ(stat(SegmentPath(cluster).c_str(), &st), 0);
  for (off_t size : {off_t{0}, off_t{100}, st.st_size / 2}) {
    ASSERT_EQ(truncate(SegmentPath(cluster).c_str(), size), 0);
    auto r = TryShmConnect(cluster);
    ASSERT_FALSE(r.ok()) << size;
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
    EXPECT_NE(r.status().message().find("truncated"), std::string::npos) << r.status().ToString();
  }
  kill(holder, SIGKILL);
  WaitChild(holder);
  // With the holder gone, the broken segment counts as stale and is rebuilt.
  auto c = TryShmConnect(cluster);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
}

// Maps a live cluster's segment as a scribbler would.
struct RawSegment {
  explicit RawSegment(const std::string& cluster) {
    fd = open(SegmentPath(cluster).c_str(), O_RDWR);
    struct stat st {};
    fstat(fd, &st);
    size = static_cast<size_t>(st.st_size);
    base = static_cast<std::byte*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  }
  ~RawSegment() {
    munmap(base, size);
    close(fd);
  }
  shm::SegmentHeader& header() { return *reinterpret_cast<shm::SegmentHeader*>(base); }
  shm::Slot* Find(const char* attribute) {
    auto* slots = reinterpret_cast<shm::Slot*>(base + header().slots_offset);
    for (uint32_t i = 0; i < header().max_attributes; ++i) {
      if (slots[i].state.load() == shm::kSlotReady &&
          std::strcmp(slots[i].attribute, attribute) == 0) {
        return &slots[i];
      }
    }
    return nullptr;
  }
  int fd;
  size_t size;
  std::byte* base;
};

TEST(ShmRobustness, ScribbledSegmentIsAClearErrorNeverACrash) {
  const std::string cluster = UniqueCluster("scribbled");
  const pid_t holder = Holder(cluster, [](SyncedObject& obj) {
    static Synced<std::string> text(&obj, "text", std::string(1000, 'q'));
    static Synced<int64_t> n(&obj, "n", 5);
    static Synced<Tensor> big(&obj, "big", Tensor(DType::kUInt8, {200000}));
  });
  ASSERT_GT(holder, 0);
  RawSegment raw(cluster);
  ASSERT_NE(raw.base, MAP_FAILED);

  // A bad magic or a bad version in the header.
  const uint64_t magic = raw.header().magic;
  raw.header().magic ^= 1;
  auto r = TryShmConnect(cluster);
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("magic"), std::string::npos) << r.status().ToString();
  raw.header().magic = magic;
  raw.header().layout_version += 1;
  EXPECT_EQ(TryShmConnect(cluster).status().code(), StatusCode::kCorruption);
  raw.header().layout_version -= 1;
  raw.header().arena_bytes = ~uint64_t{0};
  EXPECT_EQ(TryShmConnect(cluster).status().code(), StatusCode::kCorruption);

  // Now a valid header with scribbled slots: each read gives Corruption, no crash.
  raw.header().arena_bytes = raw.header().segment_bytes - raw.header().arena_offset;
  auto client = shm_connect(cluster);
  SyncedObject obj(*client, "Obj");
  shm::Slot* text_slot = raw.Find("text");
  shm::Slot* big_slot = raw.Find("big");
  ASSERT_NE(text_slot, nullptr);
  ASSERT_NE(big_slot, nullptr);
  // Declaring reads the current value, so the error comes from the constructor or get().
  auto expect_corrupt = [&](auto make, const char* what) {
    try {
      auto synced = make();
      synced->get();
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_EQ(e.status().code(), StatusCode::kCorruption) << what << ": " << e.what();
    }
  };
  {
    auto& b = text_slot->buf[text_slot->published.load() & 1];
    const uint64_t offset = b.offset().load();
    b.offset().store(~uint64_t{0} - 10);
    expect_corrupt([&] { return std::make_unique<Synced<std::string>>(&obj, "text"); },
                   "offset past the end");
    b.offset().store(offset);
    const uint32_t where = b.where.load();
    b.where = 77;
    expect_corrupt([&] { return std::make_unique<Synced<std::string>>(&obj, "text"); },
                   "invalid location");
    b.where = where;
    b.length = shm::kArenaMaxValue * 1000;
    expect_corrupt([&] { return std::make_unique<Synced<std::string>>(&obj, "text"); },
                   "length past the arena");
  }
  {
    auto& b = big_slot->buf[big_slot->published.load() & 1];
    b.gen().store(b.gen().load() + 1000);  // an extent that does not exist
    expect_corrupt([&] { return std::make_unique<Synced<Tensor>>(&obj, "big"); }, "missing extent");
  }
  {
    shm::Slot* n_slot = raw.Find("n");
    ASSERT_NE(n_slot, nullptr);
    n_slot->buf[n_slot->published.load() & 1].length = 3;  // an int64 of 3 bytes
    expect_corrupt([&] { return std::make_unique<Synced<int64_t>>(&obj, "n"); }, "short scalar");
    // An unterminated name: a lookup that meets it reports it instead of reading past it.
    std::memset(n_slot->attribute, 'z', sizeof(n_slot->attribute));
    auto r2 = client->Declare("Obj", "n", ValueKind::kInt64, nullptr);
    EXPECT_EQ(r2.status().code(), StatusCode::kCorruption) << r2.status().ToString();
    n_slot->state = 9;  // an invalid slot state
    auto r3 = client->Declare("Obj", "n", ValueKind::kInt64, nullptr);
    EXPECT_EQ(r3.status().code(), StatusCode::kCorruption) << r3.status().ToString();
  }
  kill(holder, SIGKILL);
  WaitChild(holder);
}

TEST(ShmRobustness, SegmentLeftByKilledProcessesIsCleanedUp) {
  const std::string cluster = UniqueCluster("stale");
  const pid_t victim = Spawn([&] {
    auto c = shm_connect(cluster);
    SyncedObject obj(*c, "Obj");
    Synced<std::string> big(&obj, "big", std::string(1 << 20, 'x'));  // an extent too
    raise(SIGKILL);
    return 0;
  });
  ASSERT_EQ(WaitChild(victim), 128 + SIGKILL);
  EXPECT_GE(ClusterFiles(cluster).size(), 2u);  // the segment and the extent were left
  {
    auto c = shm_connect(cluster);
    SyncedObject obj(*c, "Obj");
    Synced<std::string> big(&obj, "big");
    EXPECT_EQ(big.version(), 0u);  // rebuilt: nothing of the dead cluster survives
  }
  EXPECT_TRUE(ClusterFiles(cluster).empty());
}

TEST(ShmRobustness, LastUserRemovesSegmentAndExtents) {
  const std::string cluster = UniqueCluster("lastuser");
  {
    auto a = shm_connect(cluster);
    auto b = shm_connect(cluster);
    SyncedObject obj(*a, "Obj");
    Synced<std::string> big(&obj, "big", std::string(1 << 20, 'x'));
    EXPECT_EQ(ClusterFiles(cluster).size(), 2u);
    a.reset();
    EXPECT_EQ(ClusterFiles(cluster).size(), 2u);  // b is still a member
  }
  EXPECT_TRUE(ClusterFiles(cluster).empty());
}

TEST(ShmRobustness, ProcessesStartingTogetherShareOneSegment) {
  const std::string cluster = UniqueCluster("race");
  constexpr int kProcs = 8;
  std::vector<pid_t> pids;
  for (int i = 0; i < kProcs; ++i) {
    pids.push_back(Spawn([&, i] {
      auto c = shm_connect(cluster);
      SyncedObject obj(*c, "Obj");
      std::vector<std::unique_ptr<Synced<int64_t>>> v;
      for (int k = 0; k < kProcs; ++k) {
        v.push_back(std::make_unique<Synced<int64_t>>(&obj, "v" + std::to_string(k)));
      }
      *v[i] = i + 100;
      for (int k = 0; k < kProcs; ++k) {
        while (v[k]->get() != k + 100) {
          if (!v[k]->wait_for_change(seconds(30))) return 1;
        }
      }
      return 0;
    }));
  }
  for (pid_t p : pids) EXPECT_EQ(WaitChild(p), 0);
  EXPECT_TRUE(ClusterFiles(cluster).empty());
}

TEST(ShmRobustness, SegmentIsPrivateToItsUser) {
  const std::string cluster = UniqueCluster("mode");
  {
    auto c = shm_connect(cluster);
    struct stat st {};
    ASSERT_EQ(stat(SegmentPath(cluster).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
  }
  const std::string loose = UniqueCluster("loose");
  const int fd = shm_open(("/easysync." + loose).c_str(), O_RDWR | O_CREAT, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fchmod(fd, 0644), 0);
  close(fd);
  auto r = TryShmConnect(loose);
  EXPECT_EQ(r.status().code(), StatusCode::kPermissionDenied) << r.status().ToString();
  shm_unlink(("/easysync." + loose).c_str());
}

TEST(ShmRobustness, NamesAreValidated) {
  for (const std::string& bad : {std::string(""), std::string("a/b"), std::string("has.dot"),
                                 std::string("sp ace"), std::string(65, 'a')}) {
    auto r = TryShmConnect(bad);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << "'" << bad << "'";
  }
  auto c = shm_connect(UniqueCluster("names"));
  auto st = c->Declare(std::string(200, 'o'), "a", ValueKind::kInt64, nullptr);
  EXPECT_EQ(st.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c->Declare("Obj", "", ValueKind::kInt64, nullptr).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(ShmRobustness, DirectoryFullIsAClearError) {
  ShmOptions small;
  small.max_attributes = 4;
  auto c = shm_connect(UniqueCluster("full"), small);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(c->Declare("Obj", "a" + std::to_string(i), ValueKind::kInt64, nullptr).ok());
  }
  auto r = c->Declare("Obj", "a4", ValueKind::kInt64, nullptr);
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status().ToString();
}

}  // namespace
}  // namespace easysync
