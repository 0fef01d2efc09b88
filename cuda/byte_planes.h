// Byte planes: the dense shaping stage of a tensor delta (docs/wire_format.md, `planes`).
//
// count elements of esize bytes become esize planes of count bytes: plane b holds byte b
// (little-endian order) of every element, planes[b * count + i] = elements[i * esize + b].
// This is the order of the codec's planes stage (codecs/kernels.h, SplitPlanes/MergePlanesXor),
// so planes split on a GPU are the bytes the codec would have written. Similar bytes end up next
// to each other (the exponent bytes of floats), which is what zstd then exploits.
//
// Host twins and kernels write exactly the same bytes. Device entry points: data pointers are
// device memory; they run on `stream` (a cudaStream_t; nullptr = the legacy default stream),
// return InvalidArgument for unusable arguments before anything is enqueued, and Unavailable in
// a build without CUDA or on a machine without a device. Thread-safety: free functions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "easysync/status.h"

namespace easysync::cuda {

// True for the element sizes the plane functions take: 1, 2, 4 and 8.
constexpr bool IsPlaneElementSize(size_t esize) {
  return esize == 1 || esize == 2 || esize == 4 || esize == 8;
}

// How MergePlanes writes an element byte.
enum class PlaneMerge : uint8_t {
  kOverwrite,  // out = planes: undoes SplitPlanes
  kXorInto,    // out ^= planes: applies a dense plane-order delta to a base in place
};

// Host twin of the split. REQUIRES: IsPlaneElementSize(esize); elements has count * esize
// bytes, planes as many; they do not overlap.
void SplitPlanesHost(const uint8_t* elements, size_t count, size_t esize, uint8_t* planes);

// Host twin of the merge (the inverse of the split, or XOR into out). REQUIRES as for the split.
void MergePlanesHost(const uint8_t* planes, size_t count, size_t esize, uint8_t* out,
                     PlaneMerge mode);

// Device versions. InvalidArgument when esize is not a plane element size or count * esize
// overflows; pointers may be null only when count is 0.
Status SplitPlanesDevice(const uint8_t* elements, size_t count, size_t esize, uint8_t* planes,
                         void* stream);
Status MergePlanesDevice(const uint8_t* planes, size_t count, size_t esize, uint8_t* out,
                         PlaneMerge mode, void* stream);

}  // namespace easysync::cuda
