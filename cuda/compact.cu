#include <thrust/iterator/counting_iterator.h>
#include <cub/device/device_select.cuh>

#include "compact.h"
#include "cuda_check.h"
#include "launch.h"

namespace easysync::cuda {
namespace {

__device__ __forceinline__ size_t DeviceBlockSize(size_t id, size_t n, size_t block_bytes) {
  const size_t begin = id * block_bytes;
  return n - begin < block_bytes ? n - begin : block_bytes;
}

// The CTA copies (kXor false) or XORs (kXor true) `size` bytes of src into dst. kVec16: both
// are 16-byte aligned, so all but the last size % 16 bytes move as uint4.
template <bool kVec16, bool kXor>
__device__ __forceinline__ void CtaBlockOp(const uint8_t* __restrict__ src,
                                           uint8_t* __restrict__ dst, size_t size) {
  size_t tail = 0;
  if constexpr (kVec16) {
    tail = size & ~size_t{15};
    for (size_t i = 16 * size_t{threadIdx.x}; i < tail; i += 16 * size_t{blockDim.x}) {
      uint4 v = *reinterpret_cast<const uint4*>(src + i);
      if constexpr (kXor) {
        const uint4 d = *reinterpret_cast<const uint4*>(dst + i);
        v = make_uint4(v.x ^ d.x, v.y ^ d.y, v.z ^ d.z, v.w ^ d.w);
      }
      *reinterpret_cast<uint4*>(dst + i) = v;
    }
  }
  for (size_t i = tail + threadIdx.x; i < size; i += blockDim.x) {
    if constexpr (kXor) {
      dst[i] ^= src[i];
    } else {
      dst[i] = src[i];
    }
  }
}

// One CTA per compacted block, grid-stride. The count is read on the device: the grid is sized
// for the worst case (every block changed) and the CTAs past the count return at once.
template <bool kVec16>
__global__ void GatherBlocksKernel(const uint8_t* __restrict__ xor_bytes, size_t n,
                                   size_t block_bytes, const uint32_t* __restrict__ ids,
                                   const uint32_t* __restrict__ count, uint8_t* __restrict__ out) {
  const size_t c = *count;
  for (size_t j = blockIdx.x; j < c; j += gridDim.x) {
    const size_t id = ids[j];
    CtaBlockOp<kVec16, false>(xor_bytes + id * block_bytes, out + j * block_bytes,
                              DeviceBlockSize(id, n, block_bytes));
  }
}

template <bool kVec16>
__global__ void ApplyBlocksKernel(const uint32_t* __restrict__ ids,
                                  const uint8_t* __restrict__ bytes, size_t count, size_t n,
                                  size_t block_bytes, size_t blocks, uint8_t* __restrict__ base) {
  for (size_t j = blockIdx.x; j < count; j += gridDim.x) {
    const size_t id = ids[j];
    if (id >= blocks) continue;  // contract violation: skipped, never written out of bounds
    CtaBlockOp<kVec16, true>(bytes + j * block_bytes, base + id * block_bytes,
                             DeviceBlockSize(id, n, block_bytes));
  }
}

// Ids of the flagged blocks, in order: select over the sequence 0, 1, 2, ...
cudaError_t SelectChanged(void* temp, size_t& temp_bytes, const uint8_t* changed, uint32_t* ids,
                          uint32_t* count, size_t blocks, cudaStream_t stream) {
  return cub::DeviceSelect::Flagged(temp, temp_bytes, thrust::counting_iterator<uint32_t>(0),
                                    changed, ids, count, static_cast<int64_t>(blocks), stream);
}

Status CheckBlocks(const char* what, size_t n, size_t block_bytes) {
  if (block_bytes == 0) return Status::InvalidArgument(std::string(what) + ": block_bytes is 0");
  if (NumBlocks(n, block_bytes) > kMaxBlocks) {
    return Status::InvalidArgument(std::string(what) + ": more blocks than uint32 ids can name");
  }
  return Status::Ok();
}

// CUB reports a missing device or driver as "invalid device ordinal"; asking first keeps the
// answer Unavailable, as for every other entry point.
Status CheckCurrentDevice() {
  int device = 0;
  EASYSYNC_CUDA_CHECK(cudaGetDevice(&device));
  return Status::Ok();
}

}  // namespace

Result<size_t> CompactTempBytes(size_t n, size_t block_bytes) {
  EASYSYNC_RETURN_IF_ERROR(CheckBlocks("CompactTempBytes", n, block_bytes));
  const size_t blocks = NumBlocks(n, block_bytes);
  if (blocks == 0) return size_t{0};
  EASYSYNC_RETURN_IF_ERROR(CheckCurrentDevice());
  size_t bytes = 0;
  EASYSYNC_CUDA_CHECK(SelectChanged(nullptr, bytes, nullptr, nullptr, nullptr, blocks, nullptr));
  return bytes;
}

Status CompactChangedBlocksDevice(const uint8_t* xor_bytes, size_t n, size_t block_bytes,
                                  const uint8_t* changed, uint32_t* out_block_ids,
                                  uint8_t* out_bytes, uint32_t* out_count, void* temp,
                                  size_t temp_bytes, void* stream) {
  EASYSYNC_RETURN_IF_ERROR(CheckBlocks("CompactChangedBlocksDevice", n, block_bytes));
  if (out_count == nullptr) {
    return Status::InvalidArgument("CompactChangedBlocksDevice: out_count is null");
  }
  const size_t blocks = NumBlocks(n, block_bytes);
  const cudaStream_t s = detail::AsStream(stream);
  if (blocks == 0) {
    EASYSYNC_CUDA_CHECK(cudaMemsetAsync(out_count, 0, sizeof(uint32_t), s));
    return Status::Ok();
  }
  // A null temp would turn CUB's run into a size query that writes nothing.
  if (xor_bytes == nullptr || changed == nullptr || out_block_ids == nullptr ||
      out_bytes == nullptr || temp == nullptr) {
    return Status::InvalidArgument("CompactChangedBlocksDevice: null pointer");
  }
  EASYSYNC_RETURN_IF_ERROR(CheckCurrentDevice());
  size_t need = 0;
  EASYSYNC_CUDA_CHECK(SelectChanged(nullptr, need, changed, out_block_ids, out_count, blocks, s));
  if (temp_bytes < need) {
    return Status::InvalidArgument("CompactChangedBlocksDevice: temp_bytes " +
                                   std::to_string(temp_bytes) + " < CompactTempBytes " +
                                   std::to_string(need));
  }
  EASYSYNC_CUDA_CHECK(
      SelectChanged(temp, temp_bytes, changed, out_block_ids, out_count, blocks, s));
  const unsigned grid = detail::GridFor(blocks, 1);
  if (block_bytes % 16 == 0 && detail::Aligned(xor_bytes, 16) && detail::Aligned(out_bytes, 16)) {
    GatherBlocksKernel<true><<<grid, detail::kThreads, 0, s>>>(xor_bytes, n, block_bytes,
                                                               out_block_ids, out_count, out_bytes);
  } else {
    GatherBlocksKernel<false><<<grid, detail::kThreads, 0, s>>>(
        xor_bytes, n, block_bytes, out_block_ids, out_count, out_bytes);
  }
  EASYSYNC_CUDA_LAUNCH_CHECK();
  return Status::Ok();
}

Status ApplyCompactedBlocksDevice(const uint32_t* block_ids, const uint8_t* bytes, size_t count,
                                  size_t n, size_t block_bytes, uint8_t* base, void* stream) {
  EASYSYNC_RETURN_IF_ERROR(CheckBlocks("ApplyCompactedBlocksDevice", n, block_bytes));
  const size_t blocks = NumBlocks(n, block_bytes);
  if (count == 0) return Status::Ok();
  if (count > blocks) {
    return Status::InvalidArgument("ApplyCompactedBlocksDevice: more ids than blocks");
  }
  if (block_ids == nullptr || bytes == nullptr || base == nullptr) {
    return Status::InvalidArgument("ApplyCompactedBlocksDevice: null pointer");
  }
  const unsigned grid = detail::GridFor(count, 1);
  const cudaStream_t s = detail::AsStream(stream);
  if (block_bytes % 16 == 0 && detail::Aligned(bytes, 16) && detail::Aligned(base, 16)) {
    ApplyBlocksKernel<true>
        <<<grid, detail::kThreads, 0, s>>>(block_ids, bytes, count, n, block_bytes, blocks, base);
  } else {
    ApplyBlocksKernel<false>
        <<<grid, detail::kThreads, 0, s>>>(block_ids, bytes, count, n, block_bytes, blocks, base);
  }
  EASYSYNC_CUDA_LAUNCH_CHECK();
  return Status::Ok();
}

}  // namespace easysync::cuda
