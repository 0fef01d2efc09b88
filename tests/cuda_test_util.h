// Shared by the cuda_* tests: test data and naive reference versions of the cuda/ stage math,
// written as plainly as possible so that the host twins are checked against something
// independent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace easysync::cuda::testing {

inline constexpr size_t kEdgeSizes[] = {0,   1,   2,   7,    15,   16,   17,   63,    64,        65,
                                        255, 256, 257, 1000, 4095, 4096, 4097, 12289, 65536 + 13};
inline constexpr size_t kBlockSizes[] = {1, 3, 16, 64, 100, 4096};
inline constexpr double kDensities[] = {0.0, 0.01, 1.0};

struct BaseAndCur {
  std::vector<uint8_t> base, cur;
};

// A random base, and cur = base with each byte changed (to another value) with probability
// `density`: 0 changes nothing, 1 changes every byte.
inline BaseAndCur MakeBaseAndCur(size_t n, double density, uint32_t seed) {
  std::mt19937 rng(seed);
  BaseAndCur d;
  d.base.resize(n);
  for (auto& b : d.base) b = static_cast<uint8_t>(rng());
  d.cur = d.base;
  std::bernoulli_distribution change(density);
  for (auto& c : d.cur) {
    if (change(rng)) c ^= static_cast<uint8_t>(1 + rng() % 255);
  }
  return d;
}

// The compacted form, computed straight from cur and base without a change map.
struct Compacted {
  std::vector<uint32_t> ids;
  std::vector<uint8_t> bytes;
};

inline Compacted NaiveCompact(const std::vector<uint8_t>& cur, const std::vector<uint8_t>& base,
                              size_t block_bytes) {
  Compacted c;
  const size_t n = cur.size();
  for (size_t begin = 0; begin < n; begin += block_bytes) {
    const size_t end = begin + block_bytes < n ? begin + block_bytes : n;
    bool differs = false;
    for (size_t i = begin; i < end; ++i) differs = differs || cur[i] != base[i];
    if (!differs) continue;
    c.ids.push_back(static_cast<uint32_t>(begin / block_bytes));
    for (size_t i = begin; i < end; ++i) c.bytes.push_back(cur[i] ^ base[i]);
  }
  return c;
}

// planes[b * count + i] = byte b of element i.
inline std::vector<uint8_t> NaiveSplit(const std::vector<uint8_t>& elements, size_t esize) {
  const size_t count = elements.size() / esize;
  std::vector<uint8_t> planes(elements.size());
  for (size_t i = 0; i < count; ++i) {
    for (size_t b = 0; b < esize; ++b) planes[b * count + i] = elements[i * esize + b];
  }
  return planes;
}

inline std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

}  // namespace easysync::cuda::testing
