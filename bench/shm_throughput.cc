// shm-throughput: publishing and reading a large float32 tensor through Synced<Tensor>.
//
// The parent publishes with set() (timed: the copy into the segment and the publication),
// the child waits for the new version without reading it, then times get() (the copy of
// the whole value into its local tensor). A handshake per value keeps reads and writes from
// overlapping. Both are compared with a plain memcpy of the same size between two
// pre-touched private buffers, measured in the same run.
#include <unistd.h>

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
#include "easysync/client.h"
#include "easysync/synced.h"
#include "easysync/tensor.h"
#include "proc_util.h"
#include "stats_util.h"

namespace easysync::bench {
namespace {

constexpr int64_t kDefaultMib = 64;
constexpr int64_t kDefaultIters = 50;
constexpr int64_t kWarmup = 3;  // >= 2: the two buffers of the value's extent get faulted in
constexpr double kDefaultSeconds = 10;
constexpr auto kPeerTimeout = std::chrono::seconds(10);

struct Bulk : SyncedObject {
  Synced<Tensor> data{this, "data"};
  Synced<int64_t> ack{this, "ack"};    // the reader's count of values read (0: ready)
  Synced<int64_t> stop{this, "stop"};  // the writer has published its last value
  explicit Bulk(Client& c) : SyncedObject(c, "bench_throughput") {}
};

// What the reader hands back through memory shared before fork: how many values it read,
// and its get() duration for each (value k at read_ns[k - 1]).
class ReaderReport {
 public:
  explicit ReaderReport(int64_t max_values)
      : mem_(kHeader + sizeof(double) * static_cast<size_t>(max_values)),
        count_(new (mem_.As<void>()) std::atomic<int64_t>(0)),
        read_ns_(reinterpret_cast<double*>(mem_.As<std::byte>() + kHeader)) {}
  void Record(int64_t k, double ns) {
    read_ns_[k - 1] = ns;
    count_->store(k, std::memory_order_release);
  }
  int64_t count() const { return count_->load(std::memory_order_acquire); }
  const double* read_ns() const { return read_ns_; }

 private:
  static constexpr size_t kHeader = 64;
  SharedAnon mem_;
  std::atomic<int64_t>* count_;
  double* read_ns_;
};

int Reader(const std::string& cluster, size_t numel, ReaderReport* report) {
  auto client = shm_connect(cluster);
  Bulk bulk(*client);
  const AttrId data_attr = bulk.data.attr();
  const AttrId stop_attr = bulk.stop.attr();
  uint64_t seen = bulk.data.version();
  bulk.ack.set(0);
  for (int64_t k = 1;; ++k) {
    // Wait for the version without reading it (wait_for_change would read it untimed).
    const bool woke = client->WaitUntil(
        [&] {
          return client->LatestVersion(data_attr) > seen || client->LatestVersion(stop_attr) > 0;
        },
        Clock::now() + kPeerTimeout);
    if (!woke) return 1;
    if (client->LatestVersion(data_attr) <= seen) return 0;  // stopped
    const auto t0 = Clock::now();
    Tensor t = bulk.data.get();
    const auto t1 = Clock::now();
    const float* p = t.data_as<float>();
    if (t.numel() != numel || p[0] != static_cast<float>(k) || p[numel - 1] != p[0]) {
      std::fprintf(stderr, "easysync-bench: reader: value %lld arrived wrong\n",
                   static_cast<long long>(k));
      return 1;
    }
    report->Record(k, NanosSince(t0, t1));
    // Dropped before the next get(): the attribute's cached tensor is unshared again, so
    // the next read copies into the same storage instead of allocating 64 MiB afresh.
    t = Tensor();
    seen = bulk.data.version();
    bulk.ack.set(k);
  }
}

// Writes values 1..n (n = warm-up + measured); returns false when the reader fell silent.
bool Writer(const std::string& cluster, size_t numel, int64_t max_values, double seconds,
            std::vector<double>* publish_ns) {
  auto client = shm_connect(cluster);
  Bulk bulk(*client);
  while (bulk.ack.version() == 0) {
    if (!bulk.ack.wait_for_change(kPeerTimeout)) return false;
  }
  // Two tensors in turn: the one not being published is unshared, so tagging it is free.
  Tensor tensors[2] = {Tensor(DType::kFloat32, {static_cast<int64_t>(numel)}),
                       Tensor(DType::kFloat32, {static_cast<int64_t>(numel)})};
  const auto cap = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(seconds));
  bool ok = true;
  for (int64_t k = 1; k <= max_values && ok; ++k) {
    Tensor& t = tensors[k & 1];
    float* p = t.mutable_data_as<float>();
    p[0] = p[numel - 1] = static_cast<float>(k);
    const auto t0 = Clock::now();
    bulk.data.set(t);
    const auto t1 = Clock::now();
    if (k > kWarmup) publish_ns->push_back(NanosSince(t0, t1));
    while (ok && bulk.ack.get() != k) ok = bulk.ack.wait_for_change(kPeerTimeout);
    if (k > kWarmup && t1 > cap) break;
  }
  bulk.stop.set(1);
  return ok;
}

// Median time of memcpy between two pre-touched 64-byte-aligned private buffers.
double MemcpyMedianNs(size_t bytes, int64_t iters) {
  auto alloc = [&] {
    void* p = std::aligned_alloc(64, (bytes + 63) & ~size_t{63});
    if (p == nullptr) throw std::bad_alloc();
    std::memset(p, 1, bytes);
    return std::unique_ptr<std::byte, decltype(&std::free)>(static_cast<std::byte*>(p), &std::free);
  };
  auto src = alloc();
  auto dst = alloc();
  std::vector<double> ns;
  for (int64_t i = 0; i < kWarmup + iters; ++i) {
    const auto t0 = Clock::now();
    std::memcpy(dst.get(), src.get(), bytes);
    KeepMemory(dst.get());
    const auto t1 = Clock::now();
    if (i >= kWarmup) ns.push_back(NanosSince(t0, t1));
  }
  return Median(ns);
}

}  // namespace

int RunShmThroughput(const Args& args) {
  const int64_t mib = args.mib > 0 ? args.mib : kDefaultMib;
  const int64_t iters = args.iters > 0 ? args.iters : kDefaultIters;
  const double seconds = args.seconds > 0 ? args.seconds : kDefaultSeconds;
  const size_t bytes = static_cast<size_t>(mib) << 20;
  const size_t numel = bytes / sizeof(float);
  const int64_t max_values = kWarmup + iters;
  const std::string cluster = "bench_tput_" + std::to_string(getpid());

  ReaderReport report(max_values);
  const pid_t pid = ForkPinned([&] { return Reader(cluster, numel, &report); });
  if (pid < 0) {
    std::fprintf(stderr, "easysync-bench: shm-throughput: fork failed\n");
    return 1;
  }
  std::vector<double> publish_ns;
  bool ok = false;
  try {
    ok = Writer(cluster, numel, max_values, seconds, &publish_ns);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "easysync-bench: shm-throughput: %s\n", e.what());
  }
  ok = JoinChild(pid, !ok) && ok;
  const int64_t read = report.count();
  if (!ok || read <= kWarmup || publish_ns.empty()) {
    std::fprintf(stderr, "easysync-bench: shm-throughput: the writer/reader pair failed\n");
    return 1;
  }
  std::vector<double> read_ns(report.read_ns() + kWarmup, report.read_ns() + read);
  const double memcpy_ns = MemcpyMedianNs(bytes, iters);

  auto gbps = [&](double ns) { return static_cast<double>(bytes) / ns; };  // bytes/ns = GB/s
  const double publish = gbps(Median(publish_ns));
  const double reads = gbps(Median(read_ns));
  const double copy = gbps(memcpy_ns);
  if (args.json) {
    JsonLine()
        .Add("suite", "shm-throughput")
        .Add("mib", mib)
        .Add("publish_gbps", publish)
        .Add("read_gbps", reads)
        .Add("memcpy_gbps", copy)
        .Add("publish_ratio", publish / copy)
        .Add("read_ratio", reads / copy)
        .Print();
    return 0;
  }
  std::printf("shm-throughput: Synced<Tensor> of %lld MiB float32, medians of %zu values\n",
              static_cast<long long>(mib), publish_ns.size());
  Table table({"path", "GB/s", "ratio_vs_memcpy", "median_ms"});
  table.Row({"publish (set)", Fixed(publish, 2), Fixed(publish / copy, 2),
             Fixed(Median(publish_ns) / 1e6, 2)});
  table.Row(
      {"read (get)", Fixed(reads, 2), Fixed(reads / copy, 2), Fixed(Median(read_ns) / 1e6, 2)});
  table.Row({"memcpy", Fixed(copy, 2), "1.00", Fixed(memcpy_ns / 1e6, 2)});
  table.Print();
  return 0;
}

}  // namespace easysync::bench
