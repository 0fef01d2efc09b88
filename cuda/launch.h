// Launch configuration shared by the kernels. Device code only: included from the .cu files.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace easysync::cuda::detail {

inline constexpr unsigned kThreads = 256;

// Every kernel loops grid-stride, so any size is covered by any grid. The cap keeps gridDim.x
// far below its limit (2^31 - 1) for every tensor size, and is large enough to fill an H100
// (132 SMs x 2048 threads = 1056 CTAs of 256) many times over.
inline constexpr size_t kMaxGrid = size_t{1} << 16;

// A grid of ceil(work / per_cta) CTAs, at least 1 and at most kMaxGrid.
inline unsigned GridFor(size_t work, size_t per_cta) {
  const size_t grid = work / per_cta + (work % per_cta != 0 ? 1 : 0);
  return static_cast<unsigned>(std::clamp<size_t>(grid, 1, kMaxGrid));
}

inline cudaStream_t AsStream(void* stream) { return static_cast<cudaStream_t>(stream); }

inline bool Aligned(const void* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

}  // namespace easysync::cuda::detail
