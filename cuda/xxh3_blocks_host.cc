#include <cstring>

#include "xxh3_blocks.h"

namespace easysync::cuda {

void Xxh3BlockSumsHost(const uint8_t* data, size_t blocks, const uint64_t* secret, uint64_t* sums) {
  constexpr size_t kStripes = kXxh3BlockBytes / 64;
  for (size_t k = 0; k < blocks; ++k) {
    uint64_t acc[kXxh3Lanes] = {};
    for (size_t s = 0; s < kStripes; ++s) {
      for (size_t l = 0; l < kXxh3Lanes; ++l) {
        uint64_t v;
        std::memcpy(&v, data + k * kXxh3BlockBytes + s * 64 + l * 8, 8);
        const uint64_t key = v ^ secret[s + l];
        acc[l ^ 1] += v;
        acc[l] += (key & 0xffffffffu) * (key >> 32);
      }
    }
    std::memcpy(sums + k * kXxh3Lanes, acc, sizeof(acc));
  }
}

}  // namespace easysync::cuda
