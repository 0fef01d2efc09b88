#include "cuda_check.h"
#include "launch.h"
#include "xxh3_blocks.h"

namespace easysync::cuda {
namespace {

struct Secret {
  uint64_t w[kXxh3SecretWords];
};

// One warp per 1 KiB block (128 words): lane t reads words t, t+32, t+64 and t+96 (coalesced),
// all of accumulator lane l = t % 8, and keeps what they add to lane l (the products) and to
// lane l ^ 1 (the data). Lanes with the same t % 8 then add up their shares.
__global__ void Xxh3BlockSumsKernel(const uint64_t* __restrict__ data, size_t blocks, Secret secret,
                                    uint64_t* __restrict__ sums) {
  const unsigned t = threadIdx.x & 31u;
  const size_t warp = (size_t{blockIdx.x} * blockDim.x + threadIdx.x) >> 5;
  const size_t warps = (size_t{gridDim.x} * blockDim.x) >> 5;
  const unsigned l = t & 7u;
  for (size_t k = warp; k < blocks; k += warps) {
    const uint64_t* block = data + k * (kXxh3BlockBytes / 8);
    uint64_t own = 0, swapped = 0;
#pragma unroll
    for (unsigned j = 0; j < 4; ++j) {
      const unsigned w = t + 32u * j;
      const uint64_t v = block[w];
      const uint64_t key = v ^ secret.w[w / 8 + l];
      swapped += v;
      own += (key & 0xffffffffu) * (key >> 32);
    }
    // Sum over the four lanes that share t % 8.
    own += __shfl_xor_sync(0xffffffffu, own, 8);
    own += __shfl_xor_sync(0xffffffffu, own, 16);
    swapped += __shfl_xor_sync(0xffffffffu, swapped, 8);
    swapped += __shfl_xor_sync(0xffffffffu, swapped, 16);
    // Accumulator l gets the products of lane l and the data of lane l ^ 1.
    const uint64_t partner = __shfl_xor_sync(0xffffffffu, swapped, 1);
    if (t < kXxh3Lanes) sums[k * kXxh3Lanes + l] = own + partner;
  }
}

}  // namespace

Status Xxh3BlockSumsDevice(const uint8_t* data, size_t blocks, const uint64_t* secret,
                           uint64_t* sums, void* stream) {
  if (blocks == 0) return Status::Ok();
  if (data == nullptr || secret == nullptr || sums == nullptr) {
    return Status::InvalidArgument("Xxh3BlockSumsDevice: null pointer");
  }
  if (!detail::Aligned(data, 8)) {
    return Status::InvalidArgument("Xxh3BlockSumsDevice: data not 8-byte aligned");
  }
  Secret s;
  for (size_t i = 0; i < kXxh3SecretWords; ++i) s.w[i] = secret[i];
  const unsigned grid = detail::GridFor(blocks, detail::kThreads / 32);
  Xxh3BlockSumsKernel<<<grid, detail::kThreads, 0, detail::AsStream(stream)>>>(
      reinterpret_cast<const uint64_t*>(data), blocks, s, sums);
  EASYSYNC_CUDA_LAUNCH_CHECK();
  return Status::Ok();
}

}  // namespace easysync::cuda
