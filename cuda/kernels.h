// The device kernels of the codec stages and their host twins, in pipeline order.
//
// Encoding a tensor update on the GPU:
//   XorDiffDevice(cur, base)             -> xor bytes + per-block change map    (xor_diff.h)
//   CompactChangedBlocksDevice(...)      -> changed block ids + their xor bytes (compact.h)
//   SplitPlanesDevice(...)               -> plane order for a dense delta       (byte_planes.h)
// and only the compacted bytes cross PCIe. Decoding runs the inverses: MergePlanesDevice and
// ApplyCompactedBlocksDevice (scatter + XOR into the base).
//
// Every kernel has a host twin (the ...Host functions, compiled in every build) that computes
// the same bytes; tests compare the two bit for bit where a GPU exists. Without CUDA
// (EASYSYNC_WITH_CUDA=OFF) the ...Device functions exist and return Unavailable, and
// DeviceAvailable() is false: callers branch on it and run the host twins.
#pragma once

#include "byte_planes.h"  // IWYU pragma: export
#include "compact.h"      // IWYU pragma: export
#include "xor_diff.h"     // IWYU pragma: export
#include "xxh3_blocks.h"  // IWYU pragma: export
