// Compaction of the changed blocks of an XOR diff, and its inverse (scatter + XOR into a base).
//
// After XorDiff (xor_diff.h) the change map says which blocks of block_bytes differ. Compaction
// keeps only those: the ids of the changed blocks in increasing order, and their XOR bytes
// concatenated, so that only changed blocks cross PCIe. Compacted block j (id ids[j]) sits at
// bytes [j * block_bytes, j * block_bytes + BlockSize(ids[j])) of the compacted buffer; only the
// last block of the tensor can be shorter than block_bytes, and as the ids increase it is
// always the last one listed.
//
//   XorDiff(cur, base) -> Compact -> ApplyCompactedBlocks(base) turns base into cur, exactly.
//
// Host twins and kernels write exactly the same bytes. Device entry points take device memory
// for every data pointer, run on `stream` (a cudaStream_t; nullptr = the legacy default stream),
// return InvalidArgument for unusable arguments before anything is enqueued, and Unavailable in a
// build without CUDA or on a machine without a device. They are asynchronous: the outputs are
// ready when the stream has run. Thread-safety: free functions, no shared state.
#pragma once

#include <cstddef>
#include <cstdint>

#include "easysync/status.h"
#include "xor_diff.h"

namespace easysync::cuda {

// Bytes of block `id`: block_bytes, or less for the last block. REQUIRES: id < NumBlocks(...).
constexpr size_t BlockSize(size_t id, size_t n, size_t block_bytes) {
  const size_t begin = id * block_bytes;
  return n - begin < block_bytes ? n - begin : block_bytes;
}

// Size of the compacted bytes of `count` blocks whose last (largest) id is last_id; 0 when
// count is 0. REQUIRES: count > 0 implies last_id < NumBlocks(n, block_bytes).
constexpr size_t CompactedBytes(size_t count, size_t last_id, size_t n, size_t block_bytes) {
  return count == 0 ? 0 : (count - 1) * block_bytes + BlockSize(last_id, n, block_bytes);
}

// The most blocks a change map may have: block ids are uint32.
inline constexpr size_t kMaxBlocks = UINT32_MAX;

// ----- compaction -----

// Host twin. Writes the ids of the blocks with changed[b] != 0 in increasing order to
// out_block_ids and their bytes of xor_bytes to out_bytes (layout above); returns their count.
// REQUIRES: block_bytes > 0; NumBlocks(n, block_bytes) <= kMaxBlocks; changed has
// NumBlocks(n, block_bytes) entries; out_block_ids has room for that many ids and out_bytes for
// n bytes (the worst case: every block changed). Outputs do not overlap inputs.
size_t CompactChangedBlocksHost(const uint8_t* xor_bytes, size_t n, size_t block_bytes,
                                const uint8_t* changed, uint32_t* out_block_ids,
                                uint8_t* out_bytes);

// Scratch bytes that CompactChangedBlocksDevice needs for this size (CUB's two-phase pattern:
// query, allocate, run). Depends on the current device; query it on the device that will run.
// InvalidArgument when block_bytes is 0 or there are more than kMaxBlocks blocks.
Result<size_t> CompactTempBytes(size_t n, size_t block_bytes);

// Device version (cub::DeviceSelect::Flagged over the change map, then a gather kernel).
// xor_bytes, changed, out_block_ids, out_bytes, out_count (one uint32: the number of changed
// blocks) and temp are device memory, with the sizes of the host twin's REQUIRES;
// temp_bytes >= CompactTempBytes(n, block_bytes) (InvalidArgument otherwise). The caller owns
// every buffer and keeps them alive until the stream has run. Use CompactedBytes with the last
// id to know how many bytes of out_bytes were written.
Status CompactChangedBlocksDevice(const uint8_t* xor_bytes, size_t n, size_t block_bytes,
                                  const uint8_t* changed, uint32_t* out_block_ids,
                                  uint8_t* out_bytes, uint32_t* out_count, void* temp,
                                  size_t temp_bytes, void* stream);

// ----- apply: the inverse -----

// OK when `count` ids are strictly increasing and each is < NumBlocks(n, block_bytes): the
// precondition of ApplyCompactedBlocks*. InvalidArgument (naming the first bad id) otherwise.
// Ids that arrived in a frame are checked with this on the host before they go to a device.
Status ValidateBlockIds(const uint32_t* block_ids, size_t count, size_t n, size_t block_bytes);

// Host twin: base[ids[j] * block_bytes + k] ^= bytes[j * block_bytes + k] for every byte k of
// block ids[j]. Checks the ids first (ValidateBlockIds) and writes nothing when they are bad.
// Applying the same blocks twice restores base (XOR is an involution).
// REQUIRES: bytes has CompactedBytes(count, ids[count - 1], n, block_bytes) bytes; base has n.
Status ApplyCompactedBlocksHost(const uint32_t* block_ids, const uint8_t* bytes, size_t count,
                                size_t n, size_t block_bytes, uint8_t* base);

// Device version; block_ids, bytes and base are device memory, `count` is a host value.
// REQUIRES: the ids pass ValidateBlockIds (they are device memory, so they are not checked
// here; an id out of range is skipped rather than written, but duplicates race).
Status ApplyCompactedBlocksDevice(const uint32_t* block_ids, const uint8_t* bytes, size_t count,
                                  size_t n, size_t block_bytes, uint8_t* base, void* stream);

}  // namespace easysync::cuda
