// The shared-memory client: the segment is the bus.
//
// Write: take the slot's robust lock, fill the buffer that is not published (seqlock), then
// publish it with one atomic store. Read: load the published word, copy the buffer it
// names, and accept the copy only if the buffer's seq did not move meanwhile. A writer
// killed at any point leaves the published buffer untouched, and its lock passes to the
// next writer (EOWNERDEAD), so it blocks nobody.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "futex.h"
#include "segment.h"

namespace easysync {
namespace shm {
namespace {

constexpr auto kAcquire = std::memory_order_acquire;
constexpr auto kRelease = std::memory_order_release;
constexpr auto kRelaxed = std::memory_order_relaxed;

Status ValidateName(std::string_view what, std::string_view name, size_t max) {
  if (name.empty() || name.size() >= max || name.find('\0') != std::string_view::npos) {
    return Status::InvalidArgument(std::string(what) + " name '" + std::string(name) +
                                   "' must have 1 to " + std::to_string(max - 1) +
                                   " characters and no NUL");
  }
  return Status::Ok();
}

// ---- Who waits: the segment's waiter table (layout.h, docs/shm_layout.md)

// The inode of this process's PID namespace: a pid in the table means a process only where
// it matches (0: unknown; such entries are never taken for dead).
uint64_t OwnPidNamespace() {
  struct stat st {};
  return stat("/proc/self/ns/pid", &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
}

// When process `pid` started (field 22 of /proc/PID/stat, clock ticks since boot), or 0 when
// that cannot be read (no such process, no /proc).
uint64_t ProcessStartTime(pid_t pid) {
  char path[32];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[1024];
  const ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  // The command name (field 2) is in parentheses and may hold spaces and ')': the fields
  // after it start at the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr) return 0;
  // Fields 3 (state) to 22 (starttime): 20 fields, separated by single spaces.
  for (int field = 2; field < 22 && p != nullptr; ++field) p = std::strchr(p + 1, ' ');
  if (p == nullptr) return 0;
  return std::strtoull(p + 1, nullptr, 10);
}

// Whether the client of entry `w` (its pid read as `pid`) is gone: no process has that pid,
// or the one that has it started at another time than the client's (the pid was reused).
bool WaiterGone(const WaiterSlot& w, int32_t pid) {
  if (kill(pid, 0) != 0) return errno == ESRCH;
  const uint64_t recorded = w.start_time.load(kRelaxed);
  if (recorded == 0) return false;
  const uint64_t now = ProcessStartTime(pid);
  return now != 0 && now != recorded;
}

// Frees the entries of clients whose process is gone and takes their sleepers off `waiters`.
void SweepWaiters(SegmentHeader& h, uint64_t pid_ns) {
  if (pid_ns == 0) return;
  for (WaiterSlot& w : h.waiter_slots) {
    int32_t pid = w.pid.load(kAcquire);
    if (pid <= 0 || w.pid_ns.load(kRelaxed) != pid_ns || !WaiterGone(w, pid)) continue;
    if (!w.pid.compare_exchange_strong(pid, -1, kAcquire)) continue;  // someone else's now
    const uint32_t sleepers = w.count.exchange(0, kRelaxed);
    // Each of them was counted in `waiters` before its entry (WaitUntil), so this never
    // takes off a live waiter.
    if (sleepers > 0) h.waiters.fetch_sub(sleepers, std::memory_order_seq_cst);
    w.pid.store(0, kRelease);
  }
}

// A free entry for a client of this process (a full table is swept once); nullptr if none.
WaiterSlot* ClaimWaiterSlot(SegmentHeader& h, uint64_t pid_ns) {
  for (int pass = 0; pass < 2; ++pass) {
    for (WaiterSlot& w : h.waiter_slots) {
      int32_t free = 0;
      if (w.pid.load(kRelaxed) == 0 && w.pid.compare_exchange_strong(free, -1, kAcquire)) {
        w.count.store(0, kRelaxed);
        w.pid_ns.store(pid_ns, kRelaxed);
        // Read at each claim (once per client), not cached: a fork() child is another process.
        w.start_time.store(ProcessStartTime(getpid()), kRelaxed);
        w.pid.store(static_cast<int32_t>(getpid()), kRelease);
        return &w;
      }
    }
    SweepWaiters(h, pid_ns);
  }
  return nullptr;
}

// A NUL-terminated name inside a fixed array of the segment, or nullopt if unterminated.
std::optional<std::string_view> SegmentString(const char* p, size_t max) {
  const size_t n = strnlen(p, max);
  if (n == max) return std::nullopt;
  return std::string_view(p, n);
}

class ShmClient final : public Client {
 public:
  ShmClient(std::unique_ptr<Segment> seg, const ShmOptions& options)
      : seg_(std::move(seg)), options_(options) {
    id_ = seg_->header().next_client_id.fetch_add(1, kRelaxed) + 1;
  }
  ~ShmClient() override {
    StopCallbacks();
    // No thread of this client waits any more (else its entry stays until the process ends).
    if (waiter_slot_ != nullptr && waiter_slot_->count.load(kRelaxed) == 0) {
      waiter_slot_->pid.store(0, kRelease);
    }
    std::lock_guard<std::mutex> lock(extents_mu_);
    extents_.clear();
  }

  uint32_t id() const override { return id_; }
  const std::string& cluster() const override { return seg_->cluster(); }

  Result<AttrId> Declare(std::string_view object, std::string_view attribute, ValueKind kind,
                         const Initial* initial, Transport transport) override;
  using Client::Declare;
  Result<uint64_t> Write(AttrId attr, size_t size, FunctionRef<void(std::byte*)> encode) override;
  uint64_t LatestVersion(AttrId attr) override {
    if (attr.index >= seg_->max_attributes()) return 0;
    return seg_->slot(attr.index).published.load(kAcquire) >> 1;
  }
  Result<std::optional<UpdateInfo>> ReadIfNewer(AttrId attr, uint64_t have,
                                                FunctionRef<Status(ByteSpan)> decode) override;
  bool WaitUntil(FunctionRef<bool()> ready, Deadline deadline) override;
  void Kick() override {
    auto& h = seg_->header();
    h.bell.fetch_add(1, kRelease);
    FutexWakeAll(&h.bell);
  }

 private:
  Result<Slot*> ReadySlot(AttrId attr) const;
  // Takes the slot lock, taking it over from a writer that died holding it.
  Status LockSlot(Slot& slot);
  // REQUIRES: the slot lock is held.
  Result<uint64_t> WriteLocked(uint32_t index, Slot& slot, size_t size,
                               FunctionRef<void(std::byte*)> encode);
  // Where buffer j's data goes for a value of `size` bytes (growing the region if needed).
  Result<std::byte*> PrepareRegion(uint32_t index, Slot& slot, int j, size_t size,
                                   uint64_t* old_extent_gen);
  void RingBell() {
    auto& h = seg_->header();
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (h.waiters.load(kRelaxed) > 0) {
      h.bell.fetch_add(1, kRelease);
      // Nobody slept: a waiter between counting itself and sleeping, or one whose process
      // was killed in its sleep, whose count would make every write ring from now on.
      if (FutexWakeAll(&h.bell) == 0) MaybeSweepWaiters();
    }
  }
  // At most every kSweepInterval per client.
  void MaybeSweepWaiters() {
    constexpr int64_t kSweepIntervalNs = 100'000'000;
    const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                            std::chrono::steady_clock::now().time_since_epoch())
                            .count();
    int64_t next = next_sweep_ns_.load(kRelaxed);
    if (now < next || !next_sweep_ns_.compare_exchange_strong(next, now + kSweepIntervalNs)) {
      return;
    }
    SweepWaiters(seg_->header(), pid_ns_);
  }
  // A cached mapping of extent `gen` of slot `index`.
  Result<const Mapping*> Extent(uint32_t index, uint64_t gen);
  void DropExtent(uint32_t index, uint64_t gen) {
    std::lock_guard<std::mutex> lock(extents_mu_);
    extents_.erase({index, gen});
  }

  std::unique_ptr<Segment> seg_;
  ShmOptions options_;
  uint32_t id_ = 0;
  const uint64_t pid_ns_ = OwnPidNamespace();
  // This client's entry in the waiter table, claimed at its first sleep (nullptr: the table
  // was full, and its sleepers are counted in `waiters` alone).
  std::once_flag waiter_once_;
  WaiterSlot* waiter_slot_ = nullptr;
  std::atomic<int64_t> next_sweep_ns_{0};
  std::atomic<uint64_t> local_clock_{0};
  std::mutex extents_mu_;
  std::map<std::pair<uint32_t, uint64_t>, Mapping> extents_;
};

Result<Slot*> ShmClient::ReadySlot(AttrId attr) const {
  if (attr.index >= seg_->max_attributes()) return Status::InvalidArgument("unknown attribute id");
  Slot& slot = seg_->slot(attr.index);
  if (slot.state.load(kAcquire) != kSlotReady) {
    return Status::Corruption("slot " + std::to_string(attr.index) + " of " + seg_->cluster() +
                              " is no longer a declared attribute");
  }
  return &slot;
}

Result<AttrId> ShmClient::Declare(std::string_view object, std::string_view attribute,
                                  ValueKind kind, const Initial* initial, Transport) {
  EASYSYNC_RETURN_IF_ERROR(ValidateName("object", object, kMaxObjectName));
  EASYSYNC_RETURN_IF_ERROR(ValidateName("attribute", attribute, kMaxAttributeName));
  std::string key(object);
  key.push_back('\0');
  key.append(attribute);
  const uint64_t hash = XXH3_64bits(key.data(), key.size());
  const uint32_t cap = seg_->max_attributes();
  const std::string full = std::string(object) + "." + std::string(attribute);
  for (uint32_t n = 0; n < cap; ++n) {
    const uint32_t index = static_cast<uint32_t>((hash + n) % cap);
    Slot& slot = seg_->slot(index);
    uint32_t state = slot.state.load(kAcquire);
    if (state == kSlotFree) {
      if (slot.state.compare_exchange_strong(state, kSlotClaimed, kAcquire)) {
        slot.kind = static_cast<uint32_t>(kind);
        slot.key_hash = hash;
        std::memcpy(slot.object, object.data(), object.size());
        slot.object[object.size()] = '\0';
        std::memcpy(slot.attribute, attribute.data(), attribute.size());
        slot.attribute[attribute.size()] = '\0';
        pthread_mutexattr_t ma;
        pthread_mutexattr_init(&ma);
        pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
        const int rc = pthread_mutex_init(&slot.lock, &ma);
        pthread_mutexattr_destroy(&ma);
        if (rc != 0) return Status::FromErrno("pthread_mutex_init", rc);
        seg_->header().attributes_used.fetch_add(1, kRelaxed);
        slot.state.store(kSlotReady, kRelease);
        state = kSlotReady;
      }
    }
    if (state == kSlotClaimed) {
      // Another process is filling it in: a matter of nanoseconds unless it died doing so.
      const auto until = Clock::now() + std::chrono::seconds(2);
      while ((state = slot.state.load(kAcquire)) == kSlotClaimed && Clock::now() < until) {
        std::this_thread::yield();
      }
      if (state == kSlotClaimed) {
        return Status::Corruption("slot " + std::to_string(index) + " of " + seg_->cluster() +
                                  " was left half-declared by a process that died");
      }
    }
    if (state != kSlotReady) {
      return Status::Corruption("slot " + std::to_string(index) + " of " + seg_->cluster() +
                                " has invalid state " + std::to_string(state));
    }
    if (slot.key_hash != hash) continue;
    auto obj = SegmentString(slot.object, kMaxObjectName);
    auto att = SegmentString(slot.attribute, kMaxAttributeName);
    if (!obj || !att) {
      return Status::Corruption("slot " + std::to_string(index) + " has an unterminated name");
    }
    if (*obj != object || *att != attribute) continue;
    if (slot.kind != static_cast<uint32_t>(kind)) {
      const auto theirs = static_cast<ValueKind>(slot.kind);
      return Status::TypeMismatch(
          full + " is declared as " + std::string(ValueKindName(kind)) + " here but as " +
          std::string(slot.kind >= 1 && slot.kind <= kMaxValueKind ? ValueKindName(theirs)
                                                                   : "an invalid kind") +
          " in the cluster");
    }
    if (initial != nullptr && (slot.published.load(kAcquire) >> 1) == 0) {
      EASYSYNC_RETURN_IF_ERROR(LockSlot(slot));
      Result<uint64_t> w = uint64_t{0};
      // Checked again under the lock: only the first declarer initializes.
      if ((slot.published.load(kAcquire) >> 1) == 0) {
        w = WriteLocked(index, slot, initial->size, initial->encode);
      }
      pthread_mutex_unlock(&slot.lock);
      if (!w.ok()) return w.status();
      RingBell();
    }
    return AttrId{index};
  }
  return Status::ResourceExhausted("cluster " + seg_->cluster() + " has no room for " + full +
                                   ": all " + std::to_string(cap) + " attribute slots are in use");
}

Status ShmClient::LockSlot(Slot& slot) {
  const int rc = pthread_mutex_lock(&slot.lock);
  if (rc == 0) return Status::Ok();
  if (rc == EOWNERDEAD) {
    // The buffer the dead writer was filling is not the published one: nothing to repair.
    pthread_mutex_consistent(&slot.lock);
    Count(shard().dead_writer_recoveries, 1);
    return Status::Ok();
  }
  return Status::FromErrno("lock of an attribute slot", rc);
}

Result<uint64_t> ShmClient::Write(AttrId attr, size_t size, FunctionRef<void(std::byte*)> encode) {
  EASYSYNC_ASSIGN_OR_RETURN(Slot * slot, ReadySlot(attr));
  EASYSYNC_RETURN_IF_ERROR(LockSlot(*slot));
  auto version = WriteLocked(attr.index, *slot, size, encode);
  pthread_mutex_unlock(&slot->lock);
  if (version.ok()) RingBell();
  return version;
}

Result<std::byte*> ShmClient::PrepareRegion(uint32_t index, Slot& slot, int j, size_t size,
                                            uint64_t* old_extent_gen) {
  uint64_t cap = slot.region_capacity.load(kRelaxed);
  uint64_t gen = slot.region_gen.load(kRelaxed);
  if (cap < size) {
    // Grow: at least double, so a value that keeps growing moves O(log n) times.
    const uint64_t want = std::max<uint64_t>(size, cap * 2);
    uint64_t new_gen = 0;
    uint64_t offset = 0;
    std::optional<uint64_t> arena;
    if (want <= kArenaMaxValue) arena = seg_->AllocateArena(2 * AlignUp(want, kAlign));
    if (arena) {
      cap = AlignUp(want, kAlign);
      offset = *arena;
    } else {
      cap = AlignUp(want, 4096);
      new_gen = slot.next_gen.fetch_add(1, kRelaxed) + 1;
      EASYSYNC_ASSIGN_OR_RETURN(Mapping m,
                                Segment::CreateExtent(seg_->ExtentName(index, new_gen), 2 * cap));
      std::lock_guard<std::mutex> lock(extents_mu_);
      extents_[{index, new_gen}] = std::move(m);
    }
    if (gen != 0) *old_extent_gen = gen;
    slot.region_gen.store(new_gen, kRelaxed);
    slot.region_offset.store(offset, kRelaxed);
    slot.region_capacity.store(cap, kRelaxed);
    gen = new_gen;
  }
  const uint64_t offset = (gen == 0 ? slot.region_offset.load(kRelaxed) : 0) + uint64_t(j) * cap;
  BufferDesc& b = slot.buf[j];
  b.gen().store(gen, kRelaxed);
  b.offset().store(offset, kRelaxed);
  if (gen == 0) {
    std::byte* p = seg_->ArenaBytes(offset, size);
    if (p == nullptr)
      return Status::Corruption("slot " + std::to_string(index) +
                                " has a region outside the arena");
    b.where.store(kWhereArena, kRelaxed);
    return p;
  }
  EASYSYNC_ASSIGN_OR_RETURN(const Mapping* m, Extent(index, gen));
  if (!m->Contains(offset, size)) {
    return Status::Corruption("extent " + seg_->ExtentName(index, gen) +
                              " is smaller than its slot says");
  }
  b.where.store(kWhereExtent, kRelaxed);
  return m->base() + offset;
}

Result<uint64_t> ShmClient::WriteLocked(uint32_t index, Slot& slot, size_t size,
                                        FunctionRef<void(std::byte*)> encode) {
  const uint64_t p = slot.published.load(kRelaxed);
  const uint64_t version = (p >> 1) + 1;
  const int j = (p >> 1) == 0 ? 0 : static_cast<int>((p & 1) ^ 1);
  BufferDesc& b = slot.buf[j];

  // Open the seqlock before touching anything a reader of this buffer looks at.
  const uint64_t s = b.seq.load(kRelaxed);
  const uint64_t odd = (s & 1) != 0 ? s + 2 : s + 1;  // odd already: its writer died
  b.seq.store(odd, kRelaxed);
  std::atomic_thread_fence(std::memory_order_release);

  uint64_t old_extent_gen = 0;
  std::byte* dst = b.payload;
  if (size > kInlineBytes) {
    EASYSYNC_ASSIGN_OR_RETURN(dst, PrepareRegion(index, slot, j, size, &old_extent_gen));
  } else {
    b.where.store(kWhereInline, kRelaxed);
  }
  encode(dst);

  // Lamport clock: above everything this client has seen and everything this slot has had.
  uint64_t clock = std::max(slot.last_clock.load(kRelaxed), local_clock_.load(kRelaxed)) + 1;
  local_clock_.store(clock, kRelaxed);
  b.version.store(version, kRelaxed);
  b.length.store(size, kRelaxed);
  b.clock.store(clock, kRelaxed);
  b.writer.store(id_, kRelaxed);
  b.write_ns.store(MonotonicNanos(), kRelaxed);
  b.seq.store(odd + 1, kRelease);
  slot.last_clock.store(clock, kRelaxed);
  slot.published.store((version << 1) | static_cast<uint64_t>(j), kRelease);

  // The old extent is no longer published: readers that have it mapped keep it alive.
  if (old_extent_gen != 0) {
    shm_unlink(seg_->ExtentName(index, old_extent_gen).c_str());
    DropExtent(index, old_extent_gen);
  }
  CounterShard& c = shard();
  Count(c.bytes_sent, size);
  Count(c.packets_sent, 1);
  Count(c.updates_sent, 1);
  return version;
}

Result<const Mapping*> ShmClient::Extent(uint32_t index, uint64_t gen) {
  std::lock_guard<std::mutex> lock(extents_mu_);
  auto it = extents_.find({index, gen});
  if (it != extents_.end()) return &it->second;
  EASYSYNC_ASSIGN_OR_RETURN(Mapping m, Segment::OpenExtent(seg_->ExtentName(index, gen)));
  // Older generations of this slot are never published again.
  for (auto e = extents_.lower_bound({index, 0}); e != extents_.end() && e->first.first == index;) {
    e = e->first.second < gen ? extents_.erase(e) : std::next(e);
  }
  return &extents_.emplace(std::make_pair(index, gen), std::move(m)).first->second;
}

Result<std::optional<UpdateInfo>> ShmClient::ReadIfNewer(AttrId attr, uint64_t have,
                                                         FunctionRef<Status(ByteSpan)> decode) {
  EASYSYNC_ASSIGN_OR_RETURN(Slot * slot, ReadySlot(attr));
  for (uint64_t attempt = 0;; ++attempt) {
    if (attempt > 0) {
      Count(shard().torn_read_retries, 1);
      if (attempt % 64 == 0) std::this_thread::yield();
    }
    const uint64_t p = slot->published.load(kAcquire);
    if ((p >> 1) <= have) return std::optional<UpdateInfo>();
    BufferDesc& b = slot->buf[p & 1];
    const uint64_t s1 = b.seq.load(kAcquire);
    if ((s1 & 1) != 0) continue;
    UpdateInfo info;
    info.version = b.version.load(kRelaxed);
    info.clock = b.clock.load(kRelaxed);
    info.writer = b.writer.load(kRelaxed);
    info.write_ns = b.write_ns.load(kRelaxed);
    const uint64_t length = b.length.load(kRelaxed);
    const uint32_t where = b.where.load(kRelaxed);
    auto unchanged = [&] {
      std::atomic_thread_fence(std::memory_order_acquire);
      return b.seq.load(kRelaxed) == s1;
    };
    const std::byte* data = nullptr;
    std::string bad;
    if (where == kWhereInline) {
      if (length <= kInlineBytes)
        data = b.payload;
      else
        bad = "an inline value longer than the slot";
    } else if (where == kWhereArena) {
      data = seg_->ArenaBytes(b.offset().load(kRelaxed), length);
      if (data == nullptr) bad = "a value outside the arena";
    } else if (where == kWhereExtent) {
      const uint64_t offset = b.offset().load(kRelaxed);
      auto m = Extent(attr.index, b.gen().load(kRelaxed));
      if (m.ok() && m.value()->Contains(offset, length)) {
        data = m.value()->base() + offset;
      } else if (m.ok() || m.status().code() == StatusCode::kNotFound) {
        bad = "a value outside its extent (or a missing extent)";
      } else {
        if (unchanged()) return m.status();
        continue;
      }
    } else {
      bad = "an invalid value location";
    }
    if (data == nullptr) {
      if (!unchanged()) continue;  // a writer moved the value meanwhile
      if (slot->published.load(kAcquire) != p) continue;
      return Status::Corruption("attribute slot " + std::to_string(attr.index) + " of " +
                                seg_->cluster() + " describes " + bad);
    }
    Status st = decode(ByteSpan(data, length));
    if (!unchanged()) continue;  // torn: the bytes decoded may be a mix of two values
    if (!st.ok()) return st;
    info.bytes = length;
    CounterShard& c = shard();  // what crossed the segment: one value
    Count(c.bytes_recv, length);
    Count(c.packets_recv, 1);
    return std::optional<UpdateInfo>(info);
  }
}

bool ShmClient::WaitUntil(FunctionRef<bool()> ready, Deadline deadline) {
  if (ready()) return true;
  const bool poll = options_.wait_mode == WaitMode::kPoll;
  const Deadline spin_until = poll ? deadline : std::min(deadline, Clock::now() + options_.spin);
  while (Clock::now() < spin_until) {
    for (int k = 0; k < 32; ++k) {
      if (ready()) return true;
      CpuRelax();
    }
  }
  if (poll) return ready();
  auto& h = seg_->header();
  std::call_once(waiter_once_, [&] { waiter_slot_ = ClaimWaiterSlot(h, pid_ns_); });
  WaiterSlot* const mine = waiter_slot_;
  // Counted in `waiters` first and in the entry second, taken off in the reverse order: a
  // sweep that subtracts a dead client's entry never subtracts more than it counted there.
  const auto leave = [&] {
    if (mine != nullptr) mine->count.fetch_sub(1, kRelaxed);
    h.waiters.fetch_sub(1, kRelaxed);
  };
  for (;;) {
    const uint32_t bell = h.bell.load(kAcquire);
    h.waiters.fetch_add(1, std::memory_order_seq_cst);
    if (mine != nullptr) mine->count.fetch_add(1, kRelaxed);
    // Dekker with RingBell: either the writer sees waiters > 0 or we see its write here.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (ready()) {
      leave();
      return true;
    }
    const auto left = deadline - Clock::now();
    if (left <= Clock::duration::zero()) {
      leave();
      return false;
    }
    FutexWait(&h.bell, bell, std::chrono::duration_cast<std::chrono::nanoseconds>(left));
    leave();
    if (ready()) return true;
  }
}

}  // namespace
}  // namespace shm

Result<std::shared_ptr<Client>> TryShmConnect(std::string_view name, const ShmOptions& options) {
  EASYSYNC_ASSIGN_OR_RETURN(auto seg, shm::Segment::Attach(name, options));
  return std::shared_ptr<Client>(std::make_shared<shm::ShmClient>(std::move(seg), options));
}

std::shared_ptr<Client> shm_connect(std::string_view name, const ShmOptions& options) {
  return ValueOrThrow(TryShmConnect(name, options));
}

}  // namespace easysync
