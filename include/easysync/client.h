// Client: one participant's connection to a cluster.
//
// Most programs use SyncedObject / Synced<T> (easysync/synced.h) and only call
// shm_connect() and stats() here. The attribute-level methods below are what the proxies,
// the Python package and the torch extension are built on.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "easysync/function_ref.h"
#include "easysync/stats.h"
#include "easysync/status.h"
#include "easysync/tensor.h"
#include "easysync/value_traits.h"

namespace easysync {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

// How a waiting reader learns about a change.
enum class WaitMode : uint8_t {
  kFutex,  // spin for spin_ns, then sleep on the segment's futex (default)
  kPoll,   // spin until the change or the deadline: lowest latency, burns a core
};

struct ShmOptions {
  WaitMode wait_mode = WaitMode::kFutex;
  // Spin before sleeping: a sleeping CPU on these VMs costs ~45 us to wake, a steady
  // stream of updates should never pay it.
  std::chrono::nanoseconds spin = std::chrono::microseconds(50);
  // Directory size and small-value arena, used only by the process that creates the segment.
  uint32_t max_attributes = 4096;
  uint64_t arena_bytes = 16ull << 20;
  // How long to wait for a concurrently starting process to finish creating the segment.
  std::chrono::milliseconds attach_timeout{5000};
};

// Which delivery an attribute wants. Network mode honours it per attribute: kUdp travels as
// best-effort datagrams, latest value wins (docs/net_protocol.md, "UDP"); kDefault and
// kReliable over UCX. Shared memory is always reliable and ignores it.
enum class Transport : uint8_t { kDefault = 0, kReliable, kUdp };

// An attribute as seen by one client: an index into that client's table.
struct AttrId {
  uint32_t index = 0;
};

// What a read returns besides the value.
struct UpdateInfo {
  uint64_t version = 0;  // per attribute, starts at 1
  uint64_t clock = 0;    // logical clock of the write (last writer wins on (clock, writer))
  uint32_t writer = 0;   // client id of the writer
  int64_t write_ns = 0;  // writer's CLOCK_MONOTONIC time
  uint64_t bytes = 0;    // size of the value read
};

class Client;
// Keeps a change callback registered; unregisters in its destructor.
class [[nodiscard]] Subscription {
 public:
  Subscription() = default;
  Subscription(Subscription&& o) noexcept : client_(o.client_), id_(o.id_) { o.client_ = nullptr; }
  Subscription& operator=(Subscription&& o) noexcept;
  ~Subscription() { reset(); }
  void reset();

 private:
  friend class Client;
  Subscription(Client* c, uint64_t id) : client_(c), id_(id) {}
  Client* client_ = nullptr;
  uint64_t id_ = 0;
};

class Client {
 public:
  virtual ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // This client's id within the cluster (unique while the cluster lives).
  virtual uint32_t id() const = 0;
  virtual const std::string& cluster() const = 0;

  // Finds or creates object.attribute with the given kind (TypeMismatch when the cluster
  // knows it with another kind). When `initial` is given and the attribute has no value yet,
  // it becomes version 1; an existing value is never reset.
  struct Initial {
    size_t size;
    FunctionRef<void(std::byte*)> encode;
  };
  virtual Result<AttrId> Declare(std::string_view object, std::string_view attribute,
                                 ValueKind kind, const Initial* initial, Transport transport) = 0;
  Result<AttrId> Declare(std::string_view object, std::string_view attribute, ValueKind kind,
                         const Initial* initial) {
    return Declare(object, attribute, kind, initial, Transport::kDefault);
  }

  // Publishes a value of `size` bytes written by `encode`; returns its version.
  virtual Result<uint64_t> Write(AttrId attr, size_t size,
                                 FunctionRef<void(std::byte*)> encode) = 0;

  // Publishes a tensor attribute's value from a view, which may point to GPU memory
  // (view.device == kCUDA; the copy or the delta work runs on view.stream). Network mode
  // computes the delta on the device and only the changed blocks cross PCIe; otherwise the
  // tensor is copied to the host and written as by Write. Returns the new version.
  virtual Result<uint64_t> WriteTensor(AttrId attr, const TensorView& view);

  // The newest version of the attribute (0: no value yet). Never blocks.
  virtual uint64_t LatestVersion(AttrId attr) = 0;

  // When the attribute has a version newer than `have`, calls `decode` on its bytes and
  // returns what was read; otherwise nullopt. The transport counts what it read
  // (bytes_recv, packets_recv); the caller records the apply (RecordApplied).
  // `decode` may be called again if a writer overwrote the bytes while it ran; only the last call's
  // result counts. Never blocks.
  virtual Result<std::optional<UpdateInfo>> ReadIfNewer(AttrId attr, uint64_t have,
                                                        FunctionRef<Status(ByteSpan)> decode) = 0;
  // As ReadIfNewer, the details only: the value is not copied (e.g. to learn the clock and
  // time of a version this process wrote, which Write does not return).
  Result<std::optional<UpdateInfo>> ReadInfoIfNewer(AttrId attr, uint64_t have) {
    return ReadIfNewer(attr, have, [](ByteSpan) { return Status::Ok(); });
  }
  // As ReadIfNewer, without a copy, where the transport keeps each value in memory of its
  // own that never changes while shared (network mode; CanReadShared()): `bytes` stay valid
  // and unchanged while `owner` is held. Elsewhere (shared-memory mode: values live in a
  // segment that writers reuse) an InvalidArgument error: read with ReadIfNewer there.
  struct SharedValue {
    UpdateInfo info;
    std::shared_ptr<const void> owner;
    ByteSpan bytes;
  };
  virtual bool CanReadShared() const { return false; }
  virtual Result<std::optional<SharedValue>> ReadSharedIfNewer(AttrId attr, uint64_t have);

  // Waits until ready() is true or the deadline passes; returns ready()'s last answer.
  // ready() is called after every change anywhere in the cluster (and while spinning).
  virtual bool WaitUntil(FunctionRef<bool()> ready, Deadline deadline) = 0;

  // Wakes every waiter of this cluster (used to stop the callback thread).
  virtual void Kick() = 0;

  Stats stats() const;

  // Calls fn (on this client's callback thread) after each new version of the attribute.
  // Versions may be coalesced when several arrive before fn runs; none is missed at the end.
  Subscription OnChange(AttrId attr, std::function<void()> fn);

  // Counters the transports and proxies update. A plain load and store, not a locked
  // read-modify-write: each thread counts in its own shard (threads are spread over
  // kCounterShards by a thread-local index), and stats() adds the shards up. Exact unless
  // more than kCounterShards threads of one client count at the same moment.
  static constexpr size_t kCounterShards = 8;
  struct alignas(64) CounterShard {
    std::atomic<uint64_t> bytes_sent{0}, bytes_recv{0}, packets_sent{0}, packets_recv{0};
    std::atomic<uint64_t> updates_sent{0}, updates_applied{0}, torn_read_retries{0};
    std::atomic<uint64_t> dead_writer_recoveries{0};
    std::atomic<uint64_t> deltas_sent{0}, full_sent{0}, deltas_recv{0}, full_recv{0};
    std::atomic<uint64_t> codec_raw_bytes{0}, codec_wire_bytes{0}, resyncs{0}, reconnects{0};
    std::atomic<uint64_t> datagrams_dropped_stale{0}, datagrams_dropped_bad{0};
    std::atomic<uint64_t> fragments_incomplete{0};
    std::atomic<uint64_t> live_applied{0};  // picks the latency samples
  };
  struct Counters {
    CounterShard shards[kCounterShards];
    // Write-to-apply latency, sampled (see RecordApplied); approximate by nature.
    std::atomic<uint64_t> latency_samples{0};
    std::atomic<int64_t> latency_ewma_ns{0}, latency_last_ns{0}, latency_max_ns{0};
    std::atomic<int64_t> rtt_ewma_ns{0};  // network mode: set by the progress thread
  };
  static void Count(std::atomic<uint64_t>& c, uint64_t n) {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  // This thread's shard.
  CounterShard& shard() { return counters_.shards[ThreadShard()]; }
  Counters& counters() { return counters_; }
  // Records one applied update (each transport counts bytes_recv and packets_recv itself,
  // as they cross its medium). Its write-to-apply latency counts only for live updates
  // (the snapshot a process reads when it declares an attribute may be old by design), and
  // is sampled on 1 apply in kLatencySampleEvery per thread: a clock read costs ~20 ns on
  // these VMs, a tenth of a whole shared-memory hop.
  void RecordApplied(const UpdateInfo& info, bool live);
  static constexpr uint64_t kLatencySampleEvery = 8;

 protected:
  Client() = default;
  // Derived destructors call this first, while the transport still works.
  void StopCallbacks();

 private:
  friend class Subscription;
  void Unsubscribe(uint64_t id);
  void CallbackLoop();
  static size_t ThreadShard();

  Counters counters_;

  struct Watch {
    uint64_t id;
    AttrId attr;
    uint64_t seen;
    std::function<void()> fn;
  };
  std::mutex watch_mu_;  // guards watches_ and the callbacks while they run
  std::vector<Watch> watches_;
  uint64_t next_watch_id_ = 1;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> watch_epoch_{0};
  std::thread callback_thread_;
  std::atomic<std::thread::id> callback_thread_id_{};

  // Page-locked host memory a tensor in GPU memory is copied through (WriteTensor), kept and
  // grown across writes; type-erased, as it needs the CUDA backend (core/client.cc).
  std::mutex device_staging_mu_;
  std::shared_ptr<void> device_staging_;
};

// Joins (or creates) the shared-memory cluster `name`: [A-Za-z0-9_-], 1..64 characters.
// No server: the shared segment is the bus. The last client to close removes it.
Result<std::shared_ptr<Client>> TryShmConnect(std::string_view name,
                                              const ShmOptions& options = {});
// As TryShmConnect, throwing easysync::Error.
std::shared_ptr<Client> shm_connect(std::string_view name, const ShmOptions& options = {});

// CLOCK_MONOTONIC in nanoseconds: comparable across processes of one machine.
int64_t MonotonicNanos();

// Hands a connection from one binding to another in this process (the Python package to
// the torch extension's Client class): ShareClient keeps a reference and returns a ticket,
// TakeSharedClient redeems it once. An unknown or redeemed ticket is NotFound, never a crash.
// Thread-safe.
uint64_t ShareClient(std::shared_ptr<Client> client);
Result<std::shared_ptr<Client>> TakeSharedClient(uint64_t ticket);

}  // namespace easysync
