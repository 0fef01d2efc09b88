// XXH3-64 of bytes that live on the GPU, without bringing them to the host.
//
// XXH3's loop over a long input (more than 240 bytes) adds each 1 KiB block's contribution to
// eight 64-bit accumulators, then scrambles them: acc = scramble(acc + S_k), where S_k depends
// on block k and the secret only (additions mod 2^64 commute). The kernel computes every S_k
// at once; the host then runs the chain (one scramble per KiB, eight lanes) and the last
// partial block, which gives exactly XXH3_64bits of the bytes (codec::internal::
// Xxh3FromBlockSums; tests compare with libxxhash). For a 16 MiB segment the host reads 1 MiB
// of sums and a kilobyte of tail instead of the segment.
#pragma once

#include <cstddef>
#include <cstdint>

#include "easysync/status.h"

namespace easysync::cuda {

inline constexpr size_t kXxh3BlockBytes = 1024;  // 16 stripes of 64 bytes
inline constexpr size_t kXxh3Lanes = 8;          // accumulators; sums are 8 words per block
inline constexpr size_t kXxh3SecretWords = 24;   // the default secret: 192 bytes

// Block sums for bytes [0, blocks * 1024): sums[8k + l] = sum over the 16 stripes s of block
// k of lane l's contribution (data of lane l^1, plus lo32 * hi32 of (data ^ secret) of lane
// l, the secret read at byte 8 (s + l)). secret: the 24 little-endian words of the secret.
// Host twin. REQUIRES: data has blocks * 1024 bytes, sums has blocks * 8 words.
void Xxh3BlockSumsHost(const uint8_t* data, size_t blocks, const uint64_t* secret, uint64_t* sums);

// Device version: data and sums in device memory, secret on the host (copied into the
// launch); runs on `stream` asynchronously. InvalidArgument for a null pointer with blocks >
// 0; Unavailable in a build without CUDA.
Status Xxh3BlockSumsDevice(const uint8_t* data, size_t blocks, const uint64_t* secret,
                           uint64_t* sums, void* stream);

}  // namespace easysync::cuda
