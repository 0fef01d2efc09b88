#include <cstdint>

#include "byte_planes.h"
#include "cuda_check.h"
#include "launch.h"

namespace easysync::cuda {
namespace {

template <int E>
struct Word;
template <>
struct Word<1> {
  using type = uint8_t;
};
template <>
struct Word<2> {
  using type = uint16_t;
};
template <>
struct Word<4> {
  using type = uint32_t;
};
template <>
struct Word<8> {
  using type = unsigned long long;
};

// Element i as a little-endian integer (GPUs are little-endian). kAligned: p is E-aligned, so
// one load of an E-byte word reads it.
template <int E, bool kAligned>
__device__ __forceinline__ uint64_t LoadElement(const uint8_t* p, size_t i) {
  if constexpr (kAligned) {
    return reinterpret_cast<const typename Word<E>::type*>(p)[i];
  } else {
    uint64_t v = 0;
#pragma unroll
    for (int k = 0; k < E; ++k) v |= uint64_t{p[i * E + k]} << (8 * k);
    return v;
  }
}

template <int E, bool kAligned>
__device__ __forceinline__ void StoreElement(uint8_t* p, size_t i, uint64_t v) {
  if constexpr (kAligned) {
    reinterpret_cast<typename Word<E>::type*>(p)[i] = static_cast<typename Word<E>::type>(v);
  } else {
#pragma unroll
    for (int k = 0; k < E; ++k) p[i * E + k] = static_cast<uint8_t>(v >> (8 * k));
  }
}

// One element per thread and step (grid-stride): one E-byte load, E coalesced plane writes.
template <int E, bool kAligned>
__global__ void SplitPlanesKernel(const uint8_t* __restrict__ elements, size_t count,
                                  uint8_t* __restrict__ planes) {
  const size_t stride = size_t{gridDim.x} * blockDim.x;
  for (size_t i = size_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count; i += stride) {
    const uint64_t v = LoadElement<E, kAligned>(elements, i);
#pragma unroll
    for (int k = 0; k < E; ++k) planes[k * count + i] = static_cast<uint8_t>(v >> (8 * k));
  }
}

template <int E, bool kAligned, bool kXor>
__global__ void MergePlanesKernel(const uint8_t* __restrict__ planes, size_t count,
                                  uint8_t* __restrict__ out) {
  const size_t stride = size_t{gridDim.x} * blockDim.x;
  for (size_t i = size_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count; i += stride) {
    uint64_t v = 0;
#pragma unroll
    for (int k = 0; k < E; ++k) v |= uint64_t{planes[k * count + i]} << (8 * k);
    if constexpr (kXor) v ^= LoadElement<E, kAligned>(out, i);
    StoreElement<E, kAligned>(out, i, v);
  }
}

template <int E>
void LaunchSplit(const uint8_t* elements, size_t count, uint8_t* planes, cudaStream_t s) {
  const unsigned grid = detail::GridFor(count, detail::kThreads);
  if (detail::Aligned(elements, E)) {
    SplitPlanesKernel<E, true><<<grid, detail::kThreads, 0, s>>>(elements, count, planes);
  } else {
    SplitPlanesKernel<E, false><<<grid, detail::kThreads, 0, s>>>(elements, count, planes);
  }
}

template <int E, bool kXor>
void LaunchMergeMode(const uint8_t* planes, size_t count, uint8_t* out, cudaStream_t s) {
  const unsigned grid = detail::GridFor(count, detail::kThreads);
  if (detail::Aligned(out, E)) {
    MergePlanesKernel<E, true, kXor><<<grid, detail::kThreads, 0, s>>>(planes, count, out);
  } else {
    MergePlanesKernel<E, false, kXor><<<grid, detail::kThreads, 0, s>>>(planes, count, out);
  }
}

template <int E>
void LaunchMerge(const uint8_t* planes, size_t count, uint8_t* out, PlaneMerge mode,
                 cudaStream_t s) {
  if (mode == PlaneMerge::kXorInto) {
    LaunchMergeMode<E, true>(planes, count, out, s);
  } else {
    LaunchMergeMode<E, false>(planes, count, out, s);
  }
}

Status CheckPlaneArgs(const char* what, const void* a, const void* b, size_t count, size_t esize) {
  if (!IsPlaneElementSize(esize)) {
    return Status::InvalidArgument(std::string(what) + ": element size " + std::to_string(esize) +
                                   " is not 1, 2, 4 or 8");
  }
  if (count > SIZE_MAX / esize) {
    return Status::InvalidArgument(std::string(what) + ": count * esize overflows");
  }
  if (count > 0 && (a == nullptr || b == nullptr)) {
    return Status::InvalidArgument(std::string(what) + ": null pointer");
  }
  return Status::Ok();
}

}  // namespace

Status SplitPlanesDevice(const uint8_t* elements, size_t count, size_t esize, uint8_t* planes,
                         void* stream) {
  EASYSYNC_RETURN_IF_ERROR(CheckPlaneArgs("SplitPlanesDevice", elements, planes, count, esize));
  if (count == 0) return Status::Ok();
  const cudaStream_t s = detail::AsStream(stream);
  switch (esize) {
    case 1:
      LaunchSplit<1>(elements, count, planes, s);
      break;
    case 2:
      LaunchSplit<2>(elements, count, planes, s);
      break;
    case 4:
      LaunchSplit<4>(elements, count, planes, s);
      break;
    default:
      LaunchSplit<8>(elements, count, planes, s);
      break;
  }
  EASYSYNC_CUDA_LAUNCH_CHECK();
  return Status::Ok();
}

Status MergePlanesDevice(const uint8_t* planes, size_t count, size_t esize, uint8_t* out,
                         PlaneMerge mode, void* stream) {
  EASYSYNC_RETURN_IF_ERROR(CheckPlaneArgs("MergePlanesDevice", planes, out, count, esize));
  if (count == 0) return Status::Ok();
  const cudaStream_t s = detail::AsStream(stream);
  switch (esize) {
    case 1:
      LaunchMerge<1>(planes, count, out, mode, s);
      break;
    case 2:
      LaunchMerge<2>(planes, count, out, mode, s);
      break;
    case 4:
      LaunchMerge<4>(planes, count, out, mode, s);
      break;
    default:
      LaunchMerge<8>(planes, count, out, mode, s);
      break;
  }
  EASYSYNC_CUDA_LAUNCH_CHECK();
  return Status::Ok();
}

}  // namespace easysync::cuda
