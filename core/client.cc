// What every client has whatever its transport: telemetry and change callbacks.
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <vector>

#include "easysync/client.h"
#include "easysync/device_codec.h"
#include "easysync/value_traits.h"

namespace easysync {

int64_t MonotonicNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

std::map<std::string, double> Stats::AsMap() const {
  return {
      {"latency_ms", latency_ms},
      {"latency_last_ms", latency_last_ms},
      {"latency_max_ms", latency_max_ms},
      {"latency_samples", static_cast<double>(latency_samples)},
      {"bytes_sent", static_cast<double>(bytes_sent)},
      {"bytes_recv", static_cast<double>(bytes_recv)},
      {"packets_sent", static_cast<double>(packets_sent)},
      {"packets_recv", static_cast<double>(packets_recv)},
      {"updates_sent", static_cast<double>(updates_sent)},
      {"updates_applied", static_cast<double>(updates_applied)},
      {"torn_read_retries", static_cast<double>(torn_read_retries)},
      {"dead_writer_recoveries", static_cast<double>(dead_writer_recoveries)},
      {"deltas_sent", static_cast<double>(deltas_sent)},
      {"full_sent", static_cast<double>(full_sent)},
      {"deltas_recv", static_cast<double>(deltas_recv)},
      {"full_recv", static_cast<double>(full_recv)},
      {"codec_raw_bytes", static_cast<double>(codec_raw_bytes)},
      {"codec_wire_bytes", static_cast<double>(codec_wire_bytes)},
      {"compression_ratio", compression_ratio},
      {"resyncs", static_cast<double>(resyncs)},
      {"reconnects", static_cast<double>(reconnects)},
      {"rtt_ms", rtt_ms},
      {"datagrams_dropped_stale", static_cast<double>(datagrams_dropped_stale)},
      {"datagrams_dropped_bad", static_cast<double>(datagrams_dropped_bad)},
      {"fragments_incomplete", static_cast<double>(fragments_incomplete)},
  };
}

std::string Stats::ToString() const {
  std::ostringstream os;
  os.precision(15);
  bool first = true;
  for (const auto& [k, v] : AsMap()) {
    os << (first ? "" : " ") << k << "=" << v;
    first = false;
  }
  return os.str();
}

Client::~Client() { StopCallbacks(); }

namespace {

// Page-locked host memory for copies out of GPU memory, from the CUDA backend.
struct DeviceStaging {
  std::unique_ptr<codec::DeltaBackend> backend;
  uint8_t* data = nullptr;
  size_t bytes = 0;
  ~DeviceStaging() {
    if (data != nullptr) backend->FreeHost(data);
  }
};

}  // namespace

Result<std::optional<Client::SharedValue>> Client::ReadSharedIfNewer(AttrId, uint64_t) {
  return Status::InvalidArgument("this transport reads values by copy (see CanReadShared)");
}

Result<uint64_t> Client::WriteTensor(AttrId attr, const TensorView& view) {
  if (view.shape.size() > kMaxTensorDims) return Status::InvalidArgument("too many dims");
  EASYSYNC_ASSIGN_OR_RETURN(size_t numel, ShapeNumel(view.shape));
  const size_t bytes = numel * DTypeSize(view.dtype);
  auto write = [&](const void* src) {
    return Write(attr, detail::EncodedTensorSize(view.dtype, bytes), [&](std::byte* dst) {
      detail::EncodeTensorHeader(view.dtype, view.shape, dst);
      if (bytes != 0) std::memcpy(dst + detail::kTensorHeaderBytes, src, bytes);
    });
  };
  if (view.device != DeviceType::kCUDA || bytes == 0) return write(view.data);
  // Copied to the host first (a device that fails mid-copy publishes nothing), through
  // page-locked memory: several times faster than a copy into pageable memory.
  EASYSYNC_ASSIGN_OR_RETURN(auto cuda, codec::MakeCudaDeltaBackend(view.stream));
  std::lock_guard<std::mutex> lock(device_staging_mu_);
  auto* staging = static_cast<DeviceStaging*>(device_staging_.get());
  if (staging == nullptr) {
    auto fresh = std::make_shared<DeviceStaging>();
    EASYSYNC_ASSIGN_OR_RETURN(fresh->backend, codec::MakeCudaDeltaBackend(nullptr));
    device_staging_ = fresh;
    staging = fresh.get();
  }
  if (staging->bytes < bytes) {
    if (staging->data != nullptr) staging->backend->FreeHost(staging->data);
    staging->data = nullptr;
    staging->bytes = 0;
    EASYSYNC_ASSIGN_OR_RETURN(staging->data, staging->backend->AllocateHost(bytes));
    staging->bytes = bytes;
  }
  EASYSYNC_RETURN_IF_ERROR(cuda->ToHost(staging->data, view.data, bytes));
  return write(staging->data);
}

size_t Client::ThreadShard() {
  static std::atomic<size_t> next{0};
  thread_local const size_t index = next.fetch_add(1, std::memory_order_relaxed) % kCounterShards;
  return index;
}

Stats Client::stats() const {
  const auto& c = counters_;
  auto ld = [](const auto& a) { return a.load(std::memory_order_relaxed); };
  Stats s;
  s.latency_ms = static_cast<double>(ld(c.latency_ewma_ns)) / 1e6;
  s.latency_last_ms = static_cast<double>(ld(c.latency_last_ns)) / 1e6;
  s.latency_max_ms = static_cast<double>(ld(c.latency_max_ns)) / 1e6;
  s.latency_samples = ld(c.latency_samples);
  for (const CounterShard& sh : c.shards) {
    s.bytes_sent += ld(sh.bytes_sent);
    s.bytes_recv += ld(sh.bytes_recv);
    s.packets_sent += ld(sh.packets_sent);
    s.packets_recv += ld(sh.packets_recv);
    s.updates_sent += ld(sh.updates_sent);
    s.updates_applied += ld(sh.updates_applied);
    s.torn_read_retries += ld(sh.torn_read_retries);
    s.dead_writer_recoveries += ld(sh.dead_writer_recoveries);
    s.deltas_sent += ld(sh.deltas_sent);
    s.full_sent += ld(sh.full_sent);
    s.deltas_recv += ld(sh.deltas_recv);
    s.full_recv += ld(sh.full_recv);
    s.codec_raw_bytes += ld(sh.codec_raw_bytes);
    s.codec_wire_bytes += ld(sh.codec_wire_bytes);
    s.resyncs += ld(sh.resyncs);
    s.reconnects += ld(sh.reconnects);
    s.datagrams_dropped_stale += ld(sh.datagrams_dropped_stale);
    s.datagrams_dropped_bad += ld(sh.datagrams_dropped_bad);
    s.fragments_incomplete += ld(sh.fragments_incomplete);
  }
  if (s.codec_wire_bytes > 0) {
    s.compression_ratio =
        static_cast<double>(s.codec_raw_bytes) / static_cast<double>(s.codec_wire_bytes);
  }
  s.rtt_ms = static_cast<double>(ld(c.rtt_ewma_ns)) / 1e6;
  return s;
}

void Client::RecordApplied(const UpdateInfo& info, bool live) {
  CounterShard& sh = shard();
  Count(sh.updates_applied, 1);
  if (!live) return;
  const uint64_t live_applied = sh.live_applied.load(std::memory_order_relaxed);
  sh.live_applied.store(live_applied + 1, std::memory_order_relaxed);
  if (live_applied % kLatencySampleEvery != 0) return;
  auto& c = counters_;
  constexpr auto kRelaxed = std::memory_order_relaxed;
  const int64_t lat = std::max<int64_t>(0, MonotonicNanos() - info.write_ns);
  c.latency_last_ns.store(lat, kRelaxed);
  if (lat > c.latency_max_ns.load(kRelaxed)) c.latency_max_ns.store(lat, kRelaxed);
  // Readers of one client race only on the average; a lost sample is harmless.
  const uint64_t n = c.latency_samples.load(kRelaxed);
  c.latency_samples.store(n + 1, kRelaxed);
  const int64_t old = c.latency_ewma_ns.load(kRelaxed);
  c.latency_ewma_ns.store(n == 0 ? lat : old + (lat - old) / 16, kRelaxed);
}

Subscription& Subscription::operator=(Subscription&& o) noexcept {
  if (this != &o) {
    reset();
    client_ = o.client_;
    id_ = o.id_;
    o.client_ = nullptr;
  }
  return *this;
}

void Subscription::reset() {
  if (client_ != nullptr) client_->Unsubscribe(id_);
  client_ = nullptr;
}

Subscription Client::OnChange(AttrId attr, std::function<void()> fn) {
  std::unique_lock<std::mutex> lock(watch_mu_, std::defer_lock);
  if (std::this_thread::get_id() != callback_thread_id_.load()) lock.lock();
  const uint64_t id = next_watch_id_++;
  watches_.push_back(Watch{id, attr, LatestVersion(attr), std::move(fn)});
  watch_epoch_.fetch_add(1, std::memory_order_release);
  if (!callback_thread_.joinable()) {
    callback_thread_ = std::thread([this] { CallbackLoop(); });
    callback_thread_id_ = callback_thread_.get_id();
  }
  return Subscription(this, id);
}

void Client::Unsubscribe(uint64_t id) {
  // From inside a callback the lock is already held by this thread.
  std::unique_lock<std::mutex> lock(watch_mu_, std::defer_lock);
  if (std::this_thread::get_id() != callback_thread_id_.load()) lock.lock();
  std::erase_if(watches_, [id](const Watch& w) { return w.id == id; });
  watch_epoch_.fetch_add(1, std::memory_order_release);
}

void Client::StopCallbacks() {
  if (!callback_thread_.joinable()) return;
  stop_.store(true);
  Kick();
  callback_thread_.join();
}

void Client::CallbackLoop() {
  while (!stop_.load()) {
    // Snapshot of what to watch, refreshed when subscriptions change.
    auto any_changed = [&] {
      if (stop_.load(std::memory_order_relaxed)) return true;
      std::lock_guard<std::mutex> lock(watch_mu_);
      for (const Watch& w : watches_) {
        if (LatestVersion(w.attr) > w.seen) return true;
      }
      return false;
    };
    WaitUntil(any_changed, Clock::now() + std::chrono::milliseconds(200));
    if (stop_.load()) break;
    std::lock_guard<std::mutex> lock(watch_mu_);
    for (size_t i = 0; i < watches_.size(); ++i) {
      const uint64_t v = LatestVersion(watches_[i].attr);
      if (v <= watches_[i].seen) continue;
      watches_[i].seen = v;
      // Copied: the callback may unsubscribe itself (erasing from watches_).
      std::function<void()> fn = watches_[i].fn;
      const uint64_t epoch = watch_epoch_.load(std::memory_order_acquire);
      try {
        fn();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "easysync: change callback threw: %s\n", e.what());
      }
      if (watch_epoch_.load(std::memory_order_acquire) != epoch) break;  // list changed
    }
  }
}

namespace {
struct SharedClients {
  std::mutex mu;
  uint64_t next = 1;
  std::map<uint64_t, std::shared_ptr<Client>> waiting;
};
SharedClients& Shared() {
  static auto* shared = new SharedClients();  // outlives every static destructor
  return *shared;
}
}  // namespace

uint64_t ShareClient(std::shared_ptr<Client> client) {
  SharedClients& s = Shared();
  std::lock_guard<std::mutex> lock(s.mu);
  const uint64_t ticket = s.next++;
  s.waiting.emplace(ticket, std::move(client));
  return ticket;
}

Result<std::shared_ptr<Client>> TakeSharedClient(uint64_t ticket) {
  SharedClients& s = Shared();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.waiting.find(ticket);
  if (it == s.waiting.end()) {
    return Status::NotFound("no client was shared under ticket " + std::to_string(ticket) +
                            " (each ticket is redeemed once, in the process that made it)");
  }
  std::shared_ptr<Client> client = std::move(it->second);
  s.waiting.erase(it);
  return client;
}

}  // namespace easysync
