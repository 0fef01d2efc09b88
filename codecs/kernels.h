// The byte-level kernels of the codec stages (host versions; cuda/ has device twins with the
// same math). All work on ranges so that callers can fuse them with hashing block by block
// while the data is still in cache.
#pragma once

#include <cstddef>
#include <cstdint>

namespace easysync::codec::internal {

// Output cursor of the sparse scan: the gap stream and the XOR values of changed elements.
struct SparseSink {
  uint8_t* pos = nullptr;        // next byte of the gap stream
  uint8_t* pos_limit = nullptr;  // scan stops once pos passes this
  uint8_t* val = nullptr;        // next value byte (element-major XOR bits)
  uint8_t* val_limit = nullptr;  // scan stops once val passes this
  uint64_t next_pos = 0;         // element after the last change (the next gap counts from it)
  uint64_t count = 0;            // changes emitted so far
  // Tensor byte offset of cur[0] and base[0]: lets a scan run over one compacted block of a
  // tensor (positions stay tensor-wide). A multiple of the element size.
  uint64_t origin = 0;
};

// Bytes the sparse scan may write past pos_limit / val_limit before it notices: both buffers
// need this much room beyond their limits.
inline constexpr size_t kSparseSinkSlack = 16 * 1024;

// Finds the elements that differ between cur and base in tensor bytes [begin, end) and appends
// them to the sink: the gap to each (LEB128 of position - next_pos) and its XOR bits.
// Runs near memory speed: 64 bytes per step, no branch per element (see kernels.cc).
// REQUIRES: begin and end are multiples of esize; esize in {1, 2, 4, 8}.
// Returns false when a limit was passed: the sink then holds what was emitted up to and
// including the chunk that passed it (for UndoSparseScan), not a usable sparse form.
// With diff, the values are ZigzagDelta(cur, base) of each changed element instead of XOR bits.
// With update (base itself, writable), each changed element of cur is also stored into base as
// it is emitted: afterwards base holds cur in every chunk scanned.
bool SparseScan(const uint8_t* cur, const uint8_t* base, size_t begin, size_t end, size_t esize,
                SparseSink* sink, bool diff = false, uint8_t* update = nullptr);

// Undoes the updates of SparseScan calls that started from an empty sink (origin 0) and
// emitted `count` changes: gap stream [gaps, gaps_end), element-major values, cur as it was
// scanned. Afterwards base holds what it held before those scans.
void UndoSparseScan(const uint8_t* cur, uint8_t* base, const uint8_t* gaps, const uint8_t* gaps_end,
                    uint64_t count, const uint8_t* values, size_t esize, bool diff);

// planes[b * count + i] = cur[i * esize + b] ^ (base ? base[i * esize + b] : 0) for elements
// [first, last). `count` is the total element count (the plane stride).
void SplitPlanes(const uint8_t* cur, const uint8_t* base, size_t count, size_t esize, size_t first,
                 size_t last, uint8_t* planes);

// out[k] = planes[at + k] for k < len, where planes is what SplitPlanes(cur, nullptr, count,
// esize, 0, count, planes) makes: a window of the planes without splitting all of them.
// REQUIRES: at + len <= count * esize.
void GatherPlanes(const uint8_t* cur, size_t count, size_t esize, size_t at, size_t len,
                  uint8_t* out);

// The inverse, XOR-ing into out: out[i * esize + b] ^= planes[b * count + i] for elements
// [first, last). With out zeroed first this merges planes; with out holding the base it
// applies a dense delta. Applying it twice restores out (XOR is an involution).
void MergePlanesXor(const uint8_t* planes, size_t count, size_t esize, size_t first, size_t last,
                    uint8_t* out);
// The same, storing: out[i * esize + b] = planes[b * count + i] (merges planes without zeroing
// out first).
void MergePlanes(const uint8_t* planes, size_t count, size_t esize, size_t first, size_t last,
                 uint8_t* out);

// The kDiff versions: planes of ZigzagDelta(cur, base) per element, and the inverse applied
// to out (out += delta, or out -= delta with undo).
void SplitPlanesDiff(const uint8_t* cur, const uint8_t* base, size_t count, size_t esize,
                     size_t first, size_t last, uint8_t* planes);
void MergePlanesDiff(const uint8_t* planes, size_t count, size_t esize, size_t first, size_t last,
                     bool undo, uint8_t* out);

// The same for element-major data: out[i] ^= src[i] for bytes [first, last).
void XorInto(const uint8_t* src, size_t first, size_t last, uint8_t* out);

}  // namespace easysync::codec::internal
