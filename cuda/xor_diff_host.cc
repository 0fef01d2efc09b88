#include "xor_diff.h"

#include <algorithm>

namespace easysync::cuda {

void XorDiffHost(const uint8_t* cur, const uint8_t* base, size_t n, size_t block_bytes,
                 uint8_t* out, uint8_t* changed) {
  const size_t blocks = NumBlocks(n, block_bytes);
  for (size_t b = 0; b < blocks; ++b) {
    const size_t begin = b * block_bytes;
    const size_t end = std::min(n, begin + block_bytes);
    uint8_t any = 0;
    for (size_t i = begin; i < end; ++i) {
      out[i] = cur[i] ^ base[i];
      any |= out[i];
    }
    changed[b] = any != 0 ? 1 : 0;
  }
}

}  // namespace easysync::cuda
