// The sparse stage: which elements changed and how (docs/wire_format.md, "Sparse body").
//
//   varint count        number of changed elements, <= element_count
//   varint gap_bytes    length of the gap stream
//   gap stream          count varints: position - next, where next starts at 0 and becomes
//                       position + 1 after each change (strictly increasing positions)
//   values              count * esize XOR bytes; plane-major when the chain has kPlanes
//                       (byte b of change k at b * count + k), else element-major
#pragma once

#include <cstddef>
#include <cstdint>

#include "easysync/status.h"

namespace easysync::codec::internal {

struct SparseBody {
  uint64_t count = 0;
  const uint8_t* gaps = nullptr;
  size_t gap_bytes = 0;
  const uint8_t* values = nullptr;
  bool planes = false;
  bool diff = false;  // values are ZigzagDelta()s (kDiff), not XOR bits
};

// Writes the two count varints right before `gaps_at` and returns where the body starts.
// REQUIRES: 2 * kMaxVarintBytes writable bytes before gaps_at.
uint8_t* PrependSparseHead(uint8_t* gaps_at, uint64_t count, size_t gap_bytes);

// Splits the layout of a sparse body of exactly `size` bytes, checking every length against
// the size and element_count. Corruption when anything is inconsistent.
Status ParseSparseBody(const uint8_t* body, size_t size, uint64_t element_count, size_t esize,
                       bool planes, SparseBody* out);

// Decodes the whole gap stream once without applying it: every gap must be canonical, every
// position < element_count, and the stream must hold exactly `count` gaps. After this passes,
// SparseApplier cannot fail.
Status ValidateSparseGaps(const SparseBody& body, uint64_t element_count);

// Applies a validated sparse body to a tensor in element order, a block at a time:
// out[position * esize + b] ^= value of byte b, or, for a kDiff body, the element plus its
// delta. Applying with undo reverts an apply (for XOR bodies the two are the same).
class SparseApplier {
 public:
  SparseApplier(const SparseBody& body, size_t esize) : body_(body), esize_(esize) { Rewind(); }
  void Rewind();
  // Applies the not yet applied changes whose position is < end_element.
  void ApplyUntil(uint64_t end_element, uint8_t* out, bool undo = false);

 private:
  template <size_t E, bool kPlanes, bool kDiff>
  void ApplyT(uint64_t end_element, uint8_t* out, bool undo);
  template <size_t E, bool kPlanes>
  void ApplyP(uint64_t end_element, uint8_t* out, bool undo) {
    return body_.diff ? ApplyT<E, kPlanes, true>(end_element, out, undo)
                      : ApplyT<E, kPlanes, false>(end_element, out, undo);
  }

  SparseBody body_;
  size_t esize_;
  const uint8_t* gap_ = nullptr;  // next unread gap
  uint64_t next_ = 0;             // element after the last applied change
  uint64_t k_ = 0;                // index of the next change
  uint64_t pending_ = 0;          // position of change k_ when has_pending_
  bool has_pending_ = false;
};

}  // namespace easysync::codec::internal
