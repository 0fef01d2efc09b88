// Deterministic tensors and updates for the codec tests.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "easysync/codec.h"
#include "easysync/dtype.h"

namespace easysync::codec::testing {

enum class Pattern { kRandom, kClustered };

// A tensor of `count` elements that looks like weights: for floats, small normal values
// (realistic exponent bytes); for integers, small values; bool is 0/1.
inline std::vector<uint8_t> MakeTensor(DType dtype, size_t count, uint64_t seed) {
  const size_t esize = DTypeSize(dtype);
  std::vector<uint8_t> bytes(count * esize);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, 0.02f);
  for (size_t i = 0; i < count; ++i) {
    uint8_t* e = bytes.data() + i * esize;
    switch (dtype) {
      case DType::kFloat32: {
        const float f = normal(rng);
        std::memcpy(e, &f, 4);
        break;
      }
      case DType::kFloat64: {
        const double d = normal(rng);
        std::memcpy(e, &d, 8);
        break;
      }
      case DType::kFloat16:
      case DType::kBFloat16: {
        const float f = normal(rng);
        uint32_t u;
        std::memcpy(&u, &f, 4);
        const uint16_t h = static_cast<uint16_t>(u >> 16);  // bf16 bits; fine for f16 tests
        std::memcpy(e, &h, 2);
        break;
      }
      case DType::kBool:
        e[0] = static_cast<uint8_t>(rng() & 1);
        break;
      default: {
        const uint64_t v = rng() % 64;
        std::memcpy(e, &v, esize);
        break;
      }
    }
  }
  return bytes;
}

// Returns a copy of base with about density * count elements changed: by one unit in the last
// place (the RL-style step) or, with random_values, to random bytes. Clustered changes come in
// runs of up to 64 consecutive elements.
inline std::vector<uint8_t> Mutate(const std::vector<uint8_t>& base, DType dtype, double density,
                                   Pattern pattern, uint64_t seed, bool random_values = false) {
  const size_t esize = DTypeSize(dtype);
  const size_t count = base.size() / esize;
  std::vector<uint8_t> cur = base;
  std::mt19937_64 rng(seed);
  auto change = [&](size_t i) {
    uint8_t* e = cur.data() + i * esize;
    if (random_values || dtype == DType::kBool) {
      for (size_t b = 0; b < esize; ++b) e[b] = static_cast<uint8_t>(rng());
      if (dtype == DType::kBool) e[0] ^= 1;  // a bool must actually change
      return;
    }
    uint64_t v = 0;
    std::memcpy(&v, e, esize);
    v += (rng() & 1) ? 1 : ~uint64_t{0};  // +-1 ULP, wraps like integer bits
    std::memcpy(e, &v, esize);
  };
  if (density >= 1.0) {
    for (size_t i = 0; i < count; ++i) change(i);
    return cur;
  }
  std::uniform_real_distribution<double> u(0, 1);
  if (pattern == Pattern::kRandom) {
    for (size_t i = 0; i < count; ++i) {
      if (u(rng) < density) change(i);
    }
  } else {
    for (size_t i = 0; i < count;) {
      if (u(rng) < density / 32) {
        const size_t run = 1 + rng() % 64;
        for (size_t j = i; j < i + run && j < count; ++j) change(j);
        i += run;
      } else {
        ++i;
      }
    }
  }
  return cur;
}

inline TensorBytes View(DType dtype, const std::vector<uint8_t>& bytes) {
  return TensorBytes{dtype, bytes.size() / DTypeSize(dtype), bytes.data()};
}

}  // namespace easysync::codec::testing
