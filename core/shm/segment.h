// Attaching to and detaching from a cluster's shared segment, and mapping its extents.
//
// Membership uses two open-file-description locks on the segment file: byte 0 serializes
// attach/detach/cleanup (held for microseconds), and every live client holds a shared lock
// on byte 1 for its whole life. The kernel drops a dead process's locks, so "nobody holds
// byte 1" means exactly "every user is gone": a segment found in that state was left by
// dead processes and is rebuilt, and the last client to detach removes the segment and
// its extents.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "easysync/client.h"
#include "easysync/status.h"
#include "layout.h"

namespace easysync::shm {

// A read-write mapping of a whole shared-memory object; unmaps in its destructor.
class Mapping {
 public:
  Mapping() = default;
  Mapping(std::byte* base, size_t size) : base_(base), size_(size) {}
  Mapping(Mapping&& o) noexcept : base_(o.base_), size_(o.size_) { o.base_ = nullptr; }
  Mapping& operator=(Mapping&& o) noexcept;
  ~Mapping();
  std::byte* base() const { return base_; }
  size_t size() const { return size_; }
  // True when [offset, offset + len) lies inside the mapping (overflow-safe).
  bool Contains(uint64_t offset, uint64_t len) const {
    return offset <= size_ && len <= size_ - offset;
  }

 private:
  std::byte* base_ = nullptr;
  size_t size_ = 0;
};

// Cluster names: [A-Za-z0-9_-], 1..kMaxClusterName characters.
Status ValidateClusterName(std::string_view name);

class Segment {
 public:
  static Result<std::unique_ptr<Segment>> Attach(std::string_view cluster,
                                                 const ShmOptions& options);
  ~Segment();  // detaches; the last client removes the segment and its extents
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  SegmentHeader& header() const { return *reinterpret_cast<SegmentHeader*>(map_.base()); }
  uint32_t max_attributes() const { return max_attributes_; }
  // REQUIRES: index < max_attributes().
  Slot& slot(uint32_t index) const {
    return reinterpret_cast<Slot*>(map_.base() + slots_offset_)[index];
  }
  // [offset, offset + len) inside the arena, or nullptr when it is not.
  std::byte* ArenaBytes(uint64_t offset, uint64_t len) const;
  // Reserves len bytes of arena (kAlign-aligned); nullopt when the arena is full.
  std::optional<uint64_t> AllocateArena(uint64_t len);

  const std::string& cluster() const { return cluster_; }
  // The POSIX name of extent `gen` of slot `index`.
  std::string ExtentName(uint32_t index, uint64_t gen) const;
  // Creates a fresh extent of `bytes` (replacing one a killed writer may have left).
  static Result<Mapping> CreateExtent(const std::string& name, uint64_t bytes);
  // Maps an existing extent; NotFound when it is gone.
  static Result<Mapping> OpenExtent(const std::string& name);

 private:
  Segment() = default;
  Status AttachLocked(const ShmOptions& options);
  Status Initialize(const ShmOptions& options);
  Status Validate(uint64_t file_bytes);
  void RemoveExtents() const;

  std::string cluster_;
  std::string shm_name_;  // "/easysync.<cluster>"
  int fd_ = -1;
  Mapping map_;
  uint32_t max_attributes_ = 0;
  uint64_t slots_offset_ = 0;
  uint64_t arena_offset_ = 0;
  uint64_t arena_bytes_ = 0;
};

}  // namespace easysync::shm
