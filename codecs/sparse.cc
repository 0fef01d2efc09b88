#include "codecs/sparse.h"

#include <cstring>
#include <string>

#include "codecs/coding.h"

namespace easysync::codec::internal {

uint8_t* PrependSparseHead(uint8_t* gaps_at, uint64_t count, size_t gap_bytes) {
  const size_t head = VarintSize(count) + VarintSize(gap_bytes);
  uint8_t* start = gaps_at - head;
  PutVarint(PutVarint(start, count), gap_bytes);
  return start;
}

Status ParseSparseBody(const uint8_t* body, size_t size, uint64_t element_count, size_t esize,
                       bool planes, SparseBody* out) {
  const uint8_t* p = body;
  const uint8_t* const end = body + size;
  uint64_t count = 0, gap_bytes = 0;
  if (!GetVarint(&p, end, &count) || !GetVarint(&p, end, &gap_bytes)) {
    return Status::Corruption("sparse body: truncated or malformed counts");
  }
  if (count > element_count) {
    return Status::Corruption("sparse body: " + std::to_string(count) + " changes in a tensor of " +
                              std::to_string(element_count));
  }
  const size_t rest = static_cast<size_t>(end - p);
  // count <= element_count and element_count * esize fits in size_t (checked by the caller).
  const uint64_t value_bytes = count * esize;
  if (gap_bytes < count || gap_bytes > rest || rest - gap_bytes != value_bytes) {
    return Status::Corruption("sparse body: stream lengths disagree with its size");
  }
  out->count = count;
  out->gaps = p;
  out->gap_bytes = static_cast<size_t>(gap_bytes);
  out->values = p + gap_bytes;
  out->planes = planes;
  return Status::Ok();
}

Status ValidateSparseGaps(const SparseBody& body, uint64_t element_count) {
  const uint8_t* p = body.gaps;
  const uint8_t* const end = body.gaps + body.gap_bytes;
  uint64_t next = 0;
  for (uint64_t k = 0; k < body.count; ++k) {
    uint64_t gap;
    if (!GetMostlyShortVarint(&p, end, end, &gap)) {
      return Status::Corruption("sparse body: malformed gap #" + std::to_string(k));
    }
    // next <= element_count always holds, so the subtraction cannot wrap.
    if (gap >= element_count - next) {
      return Status::Corruption("sparse body: change #" + std::to_string(k) +
                                " lies past the last element");
    }
    next += gap + 1;
  }
  if (p != end) return Status::Corruption("sparse body: trailing bytes in the gap stream");
  return Status::Ok();
}

void SparseApplier::Rewind() {
  gap_ = body_.gaps;
  next_ = 0;
  k_ = 0;
  has_pending_ = false;
}

template <size_t E, bool kPlanes, bool kDiff>
void SparseApplier::ApplyT(uint64_t end_element, uint8_t* out, bool undo) {
  // The cursor lives in locals: every store through `out` (a uint8_t*) may alias this
  // object's members, which would otherwise be reloaded and stored again for each change.
  const uint8_t* const gend = body_.gaps + body_.gap_bytes;
  const uint8_t* const vals = body_.values;
  const uint64_t n = body_.count;
  const uint8_t* const readable = vals + n * E;  // the body's end: the values follow the gaps
  const uint8_t* gap = gap_;
  uint64_t next = next_, k = k_, pending = pending_;
  bool has_pending = has_pending_;
  while (k < n) {
    if (!has_pending) {
      uint64_t g = 0;
      (void)GetMostlyShortVarint(&gap, gend, readable, &g);  // validated by ValidateSparseGaps
      pending = next + g;
      has_pending = true;
    }
    if (pending >= end_element) break;
    uint8_t* dst = out + pending * E;
    uint64_t z = 0;
    for (size_t b = 0; b < E; ++b) {
      z |= uint64_t{kPlanes ? vals[b * n + k] : vals[k * E + b]} << (8 * b);
    }
    uint64_t v = 0;
    std::memcpy(&v, dst, E);  // little-endian: the low E bytes
    v = kDiff ? ApplyZigzag<E>(v, z, undo) : v ^ z;
    std::memcpy(dst, &v, E);
    next = pending + 1;
    has_pending = false;
    ++k;
  }
  gap_ = gap;
  next_ = next;
  k_ = k;
  pending_ = pending;
  has_pending_ = has_pending;
}

void SparseApplier::ApplyUntil(uint64_t end_element, uint8_t* out, bool undo) {
  const bool pl = body_.planes;
  switch (esize_) {
    case 1:
      return ApplyP<1, false>(end_element, out, undo);  // one plane is element-major too
    case 2:
      return pl ? ApplyP<2, true>(end_element, out, undo)
                : ApplyP<2, false>(end_element, out, undo);
    case 4:
      return pl ? ApplyP<4, true>(end_element, out, undo)
                : ApplyP<4, false>(end_element, out, undo);
    case 8:
      return pl ? ApplyP<8, true>(end_element, out, undo)
                : ApplyP<8, false>(end_element, out, undo);
    default:
      return;
  }
}

}  // namespace easysync::codec::internal
