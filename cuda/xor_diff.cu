#include "cuda_check.h"
#include "launch.h"
#include "xor_diff.h"

namespace easysync::cuda {
namespace {

// One thread per word (16 bytes when kVec16, else one byte), grid-stride by whole warps so every
// lane reaches each ballot. The change map was zeroed first; a word that differs marks its block,
// and of the lanes of a warp that mark the same block only the lowest writes. Blocks hold whole
// words (block_bytes % sizeof(Word) == 0), so a word never straddles two blocks.
template <class Word>
__device__ __forceinline__ Word XorWord(Word a, Word b) {
  if constexpr (sizeof(Word) == 16) {
    return make_uint4(a.x ^ b.x, a.y ^ b.y, a.z ^ b.z, a.w ^ b.w);
  } else {
    return static_cast<Word>(a ^ b);
  }
}

template <class Word>
__device__ __forceinline__ bool NonZero(Word w) {
  if constexpr (sizeof(Word) == 16) {
    return (w.x | w.y | w.z | w.w) != 0;
  } else {
    return w != 0;
  }
}

template <class Word>
__global__ void XorDiffKernel(const Word* __restrict__ cur, const Word* __restrict__ base,
                              size_t words, size_t words_per_block, Word* __restrict__ out,
                              uint8_t* __restrict__ changed) {
  const unsigned lane = threadIdx.x & 31u;
  const size_t warp = (size_t{blockIdx.x} * blockDim.x + threadIdx.x) >> 5;
  const size_t warps = (size_t{gridDim.x} * blockDim.x) >> 5;
  for (size_t w0 = warp * 32; w0 < words; w0 += warps * 32) {
    const size_t w = w0 + lane;
    bool differs = false;
    if (w < words) {
      const Word x = XorWord(cur[w], base[w]);
      out[w] = x;
      differs = NonZero(x);
    }
    const unsigned votes = __ballot_sync(0xffffffffu, differs);
    if (differs) {
      const size_t b = w / words_per_block;
      const size_t first = max(w0, b * words_per_block);  // this block's first word in the warp
      const unsigned first_lane = static_cast<unsigned>(first - w0);
      const unsigned below = votes & ((1u << lane) - 1u) & ~((1u << first_lane) - 1u);
      if (below == 0) changed[b] = 1;
    }
  }
}

// The bytes after the last whole 16-byte word (fewer than 16), in the tensor's last block.
__global__ void XorDiffTailKernel(const uint8_t* __restrict__ cur, const uint8_t* __restrict__ base,
                                  size_t begin, size_t n, size_t block_bytes,
                                  uint8_t* __restrict__ out, uint8_t* __restrict__ changed) {
  const size_t i = begin + threadIdx.x;
  const uint8_t x = i < n ? static_cast<uint8_t>(cur[i] ^ base[i]) : uint8_t{0};
  if (i < n) out[i] = x;
  if (__syncthreads_or(x != 0) && threadIdx.x == 0) changed[begin / block_bytes] = 1;
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
  const cudaStream_t s = detail::AsStream(stream);
  EASYSYNC_CUDA_CHECK(cudaMemsetAsync(changed, 0, blocks, s));
  const bool vec16 = block_bytes % 16 == 0 && detail::Aligned(cur, 16) &&
                     detail::Aligned(base, 16) && detail::Aligned(out, 16);
  if (vec16) {
    const size_t words = n / 16;
    if (words != 0) {
      XorDiffKernel<uint4><<<detail::GridFor(words, detail::kThreads), detail::kThreads, 0, s>>>(
          reinterpret_cast<const uint4*>(cur), reinterpret_cast<const uint4*>(base), words,
          block_bytes / 16, reinterpret_cast<uint4*>(out), changed);
    }
    if (n % 16 != 0) {
      XorDiffTailKernel<<<1, 32, 0, s>>>(cur, base, words * 16, n, block_bytes, out, changed);
    }
  } else {
    XorDiffKernel<uint8_t><<<detail::GridFor(n, detail::kThreads), detail::kThreads, 0, s>>>(
        cur, base, n, block_bytes, out, changed);
  }
  EASYSYNC_CUDA_LAUNCH_CHECK();
  return Status::Ok();
}

}  // namespace easysync::cuda
