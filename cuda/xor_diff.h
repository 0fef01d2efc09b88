// XOR diff with a per-block change map: the first stage of a tensor delta.
//
// out[i] = cur[i] ^ base[i] for every byte, and changed[b] = 1 when any byte of block b
// (bytes [b*block_bytes, (b+1)*block_bytes) clipped to n) differs, else 0.
// The host twin and the kernel compute exactly the same bytes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "easysync/status.h"

namespace easysync::cuda {

// Number of change-map entries for n bytes in blocks of block_bytes.
// REQUIRES: block_bytes > 0.
constexpr size_t NumBlocks(size_t n, size_t block_bytes) {
  return (n + block_bytes - 1) / block_bytes;
}

// Host twin. REQUIRES: out has n bytes, changed has NumBlocks(n, block_bytes) bytes.
void XorDiffHost(const uint8_t* cur, const uint8_t* base, size_t n, size_t block_bytes,
                 uint8_t* out, uint8_t* changed);

// True when this build has the CUDA kernels and a device is present.
bool DeviceAvailable();

// Device version: all pointers are device memory; runs on `stream` (a cudaStream_t, or
// nullptr for the legacy default stream), asynchronously. InvalidArgument when block_bytes is 0
// or, for n > 0, a pointer is null; Unavailable in a build without CUDA or without a device.
// Any n: the kernel loops grid-stride, and uses 16-byte accesses when cur, base and out are
// 16-byte aligned and block_bytes is a multiple of 16 (same bytes either way).
Status XorDiffDevice(const uint8_t* cur, const uint8_t* base, size_t n, size_t block_bytes,
                     uint8_t* out, uint8_t* changed, void* stream);

}  // namespace easysync::cuda
