// Synthetic tensor pairs for the codec and net-tensor suites, so that they run without snapshot
// files (CI smoke, README). Fixed seeds: every run builds the same bytes.
//
//   rl-bf16    bfloat16 weights drawn from normal(0, 0.02); 1.5% of the elements, at
//              independent random positions, move by one unit in the last place (up or down
//              at random): what a low learning-rate RL fine-tuning step does to bf16 exports
//              of fp32 master weights.
//   dense-f32  float32 weights drawn from normal(0, 0.02); every element is scaled by
//              (1 + r), r drawn from normal(0, 1e-3) (an element the scaling leaves unchanged
//              gets its lowest bit flipped): a dense update such as pretraining.
//   noise-bf16 bfloat16 elements of uniformly random bits, base and new drawn apart: nothing
//              compresses (the raw paths: a dense delta of noise, a whole value of noise).
//
// 64 MiB (the codec suite) unless the caller asks for another size (net-tensor: 256 MiB).
// Elements are drawn in order, so a pair of any size starts with the bytes of every shorter one.
#include <cmath>
#include <cstring>
#include <numbers>

#include "codec_bench.h"

namespace easysync::bench {
namespace {

// SplitMix64: small, fast and good enough to scatter changes and draw weights.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1].
  double Uniform() { return static_cast<double>((Next() >> 11) + 1) * 0x1.0p-53; }
  // Standard normal (Box-Muller; one of the pair is kept for the next call).
  double Normal() {
    if (have_spare_) {
      have_spare_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(Uniform()));
    const double t = 2.0 * std::numbers::pi * Uniform();
    spare_ = r * std::sin(t);
    have_spare_ = true;
    return r * std::cos(t);
  }

 private:
  uint64_t state_;
  double spare_ = 0;
  bool have_spare_ = false;
};

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// float -> bfloat16, round to nearest even (finite inputs).
uint16_t ToBf16(float f) {
  const uint32_t u = FloatBits(f);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

void MakeRlBf16(TensorPair* pair, size_t count) {
  // P(change) = 1.5%, as a threshold on 32 random bits.
  constexpr uint64_t kChangeBelow = static_cast<uint64_t>(0.015 * 4294967296.0);
  pair->dtype = DType::kBFloat16;
  pair->base.resize(2 * count);
  pair->cur.resize(2 * count);
  Rng weights(0x5EED0001);
  Rng changes(0x5EED0002);
  for (size_t i = 0; i < count; ++i) {
    const uint16_t b = ToBf16(static_cast<float>(0.02 * weights.Normal()));
    uint16_t c = b;
    const uint64_t draw = changes.Next();
    if ((draw >> 32) < kChangeBelow) {
      // One ULP up or down in magnitude; at magnitude 0 only up (no sign change).
      const bool up = (draw & 1) != 0 || (b & 0x7FFF) == 0;
      c = static_cast<uint16_t>(up ? b + 1 : b - 1);
    }
    std::memcpy(&pair->base[2 * i], &b, 2);
    std::memcpy(&pair->cur[2 * i], &c, 2);
  }
}

void MakeNoiseBf16(TensorPair* pair, size_t count) {
  pair->dtype = DType::kBFloat16;
  pair->base.resize(2 * count);
  pair->cur.resize(2 * count);
  Rng bits(0x5EED0005);
  for (size_t i = 0; i < 2 * count; ++i) {
    pair->base[i] = static_cast<uint8_t>(bits.Next());
    pair->cur[i] = static_cast<uint8_t>(bits.Next());
  }
}

void MakeDenseF32(TensorPair* pair, size_t count) {
  pair->dtype = DType::kFloat32;
  pair->base.resize(4 * count);
  pair->cur.resize(4 * count);
  Rng weights(0x5EED0003);
  Rng steps(0x5EED0004);
  for (size_t i = 0; i < count; ++i) {
    const float b = static_cast<float>(0.02 * weights.Normal());
    float c = static_cast<float>(b * (1.0 + 1e-3 * steps.Normal()));
    if (FloatBits(c) == FloatBits(b)) c = BitsFloat(FloatBits(b) ^ 1u);
    std::memcpy(&pair->base[4 * i], &b, 4);
    std::memcpy(&pair->cur[4 * i], &c, 4);
  }
}

}  // namespace

bool MakeSyntheticPair(std::string_view name, TensorPair* pair, size_t bytes) {
  if (name == "rl-bf16") {
    MakeRlBf16(pair, bytes / 2);
  } else if (name == "dense-f32") {
    MakeDenseF32(pair, bytes / 4);
  } else if (name == "noise-bf16") {
    MakeNoiseBf16(pair, bytes / 2);
  } else {
    return false;
  }
  pair->label = std::string(name);
  return true;
}

}  // namespace easysync::bench
