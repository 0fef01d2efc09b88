#include "cuda_check.h"
#include "launch.h"
#include "xor_diff.h"

namespace easysync::cuda {
namespace {

// One CTA per change-map block (grid-stride over blocks); its threads stride over the block's
// bytes and vote. kVec16: cur, base and out are 16-byte aligned and block_bytes is a multiple
// of 16, so every block starts aligned and is read with 16-byte loads (only the tensor's last
// block can end in a partial vector, done bytewise).
template <bool kVec16>
__global__ void XorDiffKernel(const uint8_t* __restrict__ cur, const uint8_t* __restrict__ base,
                              size_t n, size_t block_bytes, size_t blocks,
                              uint8_t* __restrict__ out, uint8_t* __restrict__ changed) {
  for (size_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const size_t begin = b * block_bytes;
    const size_t end = min(n, begin + block_bytes);
    unsigned any = 0;
    size_t tail = begin;
    if constexpr (kVec16) {
      tail = begin + ((end - begin) & ~size_t{15});
      for (size_t i = begin + 16 * size_t{threadIdx.x}; i < tail; i += 16 * size_t{blockDim.x}) {
        const uint4 c = *reinterpret_cast<const uint4*>(cur + i);
        const uint4 o = *reinterpret_cast<const uint4*>(base + i);
        const uint4 x = make_uint4(c.x ^ o.x, c.y ^ o.y, c.z ^ o.z, c.w ^ o.w);
        *reinterpret_cast<uint4*>(out + i) = x;
        any |= x.x | x.y | x.z | x.w;
      }
    }
    for (size_t i = tail + threadIdx.x; i < end; i += blockDim.x) {
      const uint8_t x = cur[i] ^ base[i];
      out[i] = x;
      any |= x;
    }
    // Uniform across the CTA (b is), and a barrier before thread 0 writes.
    const int changed_any = __syncthreads_or(any != 0 ? 1 : 0);
    if (threadIdx.x == 0) changed[b] = changed_any != 0 ? 1 : 0;
  }
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
  if (cur == nullptr || base == nullptr || out == nullptr || changed == nullptr) {
    return Status::InvalidArgument("XorDiffDevice: null pointer");
  }
  const unsigned grid = detail::GridFor(blocks, 1);
  const bool vec16 = block_bytes % 16 == 0 && detail::Aligned(cur, 16) &&
                     detail::Aligned(base, 16) && detail::Aligned(out, 16);
  if (vec16) {
    XorDiffKernel<true><<<grid, detail::kThreads, 0, detail::AsStream(stream)>>>(
        cur, base, n, block_bytes, blocks, out, changed);
  } else {
    XorDiffKernel<false><<<grid, detail::kThreads, 0, detail::AsStream(stream)>>>(
        cur, base, n, block_bytes, blocks, out, changed);
  }
  EASYSYNC_CUDA_LAUNCH_CHECK();
  return Status::Ok();
}

}  // namespace easysync::cuda
