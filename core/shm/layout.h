// The shared-memory segment: the one header of constants and structs that define it.
// docs/shm_layout.md is the normative description; change both together, and bump
// kLayoutVersion on any change a process of the old layout would misread.
//
// A cluster is one POSIX segment "/easysync.<cluster>" holding
//   [SegmentHeader | Slot x max_attributes | arena]
// plus extents "/easysync.<cluster>.<slot>.<gen>" for values that outgrow the arena.
// Every field a process reads from the segment is validated before use: another process
// (or a bug, or a person) may have scribbled on it.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace easysync::shm {

inline constexpr uint64_t kSegmentMagic = 0x314d48534e595345ull;  // "ESYNSHM1"
inline constexpr uint32_t kLayoutVersion = 3;
inline constexpr size_t kMaxClusterName = 64;
inline constexpr size_t kMaxObjectName = 96;         // including the NUL
inline constexpr size_t kMaxAttributeName = 96;      // including the NUL
inline constexpr size_t kInlineBytes = 80;           // values this small live in the slot itself
inline constexpr size_t kArenaMaxValue = 64 * 1024;  // larger values get their own extent
inline constexpr size_t kAlign = 64;

// Header states.
inline constexpr uint32_t kStateInitializing = 0;
inline constexpr uint32_t kStateReady = 1;

// Slot states.
inline constexpr uint32_t kSlotFree = 0;
inline constexpr uint32_t kSlotClaimed = 1;  // a process is filling it in
inline constexpr uint32_t kSlotReady = 2;

// Where a buffer's bytes are.
inline constexpr uint32_t kWhereInline = 0;
inline constexpr uint32_t kWhereArena = 1;   // offset from the segment start
inline constexpr uint32_t kWhereExtent = 2;  // offset within extent `gen`

// Who waits on the bell, per client: a process killed while waiting leaves its count here,
// where a writer that woke nobody finds it and takes it off `waiters` (docs/shm_layout.md).
inline constexpr size_t kWaiterSlots = 64;
struct WaiterSlot {
  std::atomic<int32_t> pid;      // 0: free; -1: being reclaimed
  std::atomic<uint32_t> count;   // threads of that client in WaitUntil's sleep
  std::atomic<uint64_t> pid_ns;  // inode of the process's PID namespace (its pids mean that)
  // When the process started (/proc/PID/stat's starttime, clock ticks since boot; 0:
  // unknown): a live process of that pid that started at another time took a dead one's pid.
  std::atomic<uint64_t> start_time;
};

struct alignas(kAlign) SegmentHeader {
  uint64_t magic;
  uint32_t layout_version;
  std::atomic<uint32_t> state;
  uint64_t segment_bytes;
  uint32_t max_attributes;
  uint32_t slot_bytes;  // sizeof(Slot) of the creator: a layout check
  uint64_t slots_offset;
  uint64_t arena_offset;
  uint64_t arena_bytes;
  std::atomic<uint64_t> arena_used;
  std::atomic<uint32_t> next_client_id;
  std::atomic<uint32_t> attributes_used;
  char cluster[kMaxClusterName + 1];
  // The futex word every waiter sleeps on, bumped by writers only when waiters > 0.
  alignas(kAlign) std::atomic<uint32_t> bell;
  std::atomic<uint32_t> waiters;
  alignas(kAlign) WaiterSlot waiter_slots[kWaiterSlots];
};

// One value buffer. Seqlock: `seq` is odd while a writer fills it, and changes on every
// fill, so a reader that sees the same even seq before and after copying has a whole value.
// A value of up to kInlineBytes lives in `payload`, whose first 16 bytes share the first
// cache line with the fields: a reader of a small scalar touches one line per buffer.
// A larger value lives in the arena or an extent, and payload holds gen() and offset().
struct alignas(kAlign) BufferDesc {
  std::atomic<uint64_t> seq;
  std::atomic<uint64_t> version;
  std::atomic<uint64_t> length;
  std::atomic<uint64_t> clock;
  std::atomic<int64_t> write_ns;
  std::atomic<uint32_t> writer;
  std::atomic<uint32_t> where;
  alignas(8) std::byte payload[kInlineBytes];

  // Extent generation (where == kWhereExtent) and byte offset of the data (arena or extent).
  std::atomic_ref<uint64_t> gen() { return std::atomic_ref<uint64_t>(*PayloadWord(0)); }
  std::atomic_ref<uint64_t> offset() { return std::atomic_ref<uint64_t>(*PayloadWord(1)); }

 private:
  uint64_t* PayloadWord(int i) { return reinterpret_cast<uint64_t*>(payload) + i; }
};

struct alignas(kAlign) Slot {
  // Read on every poll: (version << 1) | index of the published buffer; version 0 = empty.
  std::atomic<uint64_t> published;
  std::atomic<uint32_t> state;
  uint32_t kind;  // ValueKind
  uint64_t key_hash;
  // The current write region for values that do not fit inline: two buffers of
  // region_capacity bytes each, in the arena (gen 0) or in extent region_gen.
  std::atomic<uint64_t> region_gen;
  std::atomic<uint64_t> region_capacity;
  std::atomic<uint64_t> region_offset;
  std::atomic<uint64_t> next_gen;
  std::atomic<uint64_t> last_clock;
  // Held while writing; robust, so a writer killed while holding it hands it on.
  alignas(kAlign) pthread_mutex_t lock;
  BufferDesc buf[2];
  char object[kMaxObjectName];
  char attribute[kMaxAttributeName];
};

static_assert(sizeof(BufferDesc) == 2 * kAlign);
static_assert(offsetof(BufferDesc, payload) == 48, "a small value shares the fields' line");
static_assert(std::atomic_ref<uint64_t>::required_alignment <= 8);
static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint32_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<uint32_t>) == 4, "the futex word must be 32 bits");

inline constexpr uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace easysync::shm
