#include "cuda_check.h"
#include "xor_diff.h"

namespace easysync::cuda {
namespace {

// One thread block per change-map block; threads stride over its bytes and vote.
__global__ void XorDiffKernel(const uint8_t* __restrict__ cur, const uint8_t* __restrict__ base,
                              size_t n, size_t block_bytes, uint8_t* __restrict__ out,
                              uint8_t* __restrict__ changed) {
  const size_t b = blockIdx.x;
  const size_t begin = b * block_bytes;
  const size_t end = min(n, begin + block_bytes);
  int any = 0;
  for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const uint8_t x = cur[i] ^ base[i];
    out[i] = x;
    any |= x;
  }
  any = __syncthreads_or(any);
  if (threadIdx.x == 0) changed[b] = any != 0 ? 1 : 0;
}

}  // namespace

bool DeviceAvailable() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

Status XorDiffDevice(const uint8_t* cur, const uint8_t* base, size_t n, size_t block_bytes,
                     uint8_t* out, uint8_t* changed, void* stream) {
  if (block_bytes == 0) return Status::InvalidArgument("XorDiffDevice: block_bytes is 0");
  const size_t blocks = NumBlocks(n, block_bytes);
  if (blocks == 0) return Status::Ok();
  if (blocks > 0x7fffffffu) return Status::InvalidArgument("XorDiffDevice: too many blocks");
  XorDiffKernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      cur, base, n, block_bytes, out, changed);
  EASYSYNC_CUDA_LAUNCH_CHECK();
  return Status::Ok();
}

}  // namespace easysync::cuda
