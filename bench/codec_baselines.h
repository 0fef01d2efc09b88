// Baselines for the codec suite, measured in the same run as the codec: straightforward
// encodings of a tensor update built directly on zstd, independent of the codec's stages.
#pragma once

#include <zstd.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace easysync::bench {

// Encoded sizes of the three baselines for one update (payload only: no header).
struct BaselineSizes {
  size_t xor_zstd = 0;     // zstd of (new XOR base), element-major
  size_t planes_zstd = 0;  // byte planes of (new XOR base), then zstd
  size_t pulse = 0;        // PULSE-style sparse: varint gaps of changed positions, new values, zstd
};

// Computes the baselines with one reusable zstd context and scratch buffers.
// Not thread-safe; one instance per thread.
class Baselines {
 public:
  explicit Baselines(int zstd_level) : level_(zstd_level) {}
  ~Baselines() { ZSTD_freeCCtx(cctx_); }
  Baselines(const Baselines&) = delete;
  Baselines& operator=(const Baselines&) = delete;

  // REQUIRES: cur and base have n bytes; esize > 0 divides n. False when zstd fails.
  bool Measure(const uint8_t* cur, const uint8_t* base, size_t n, size_t esize, BaselineSizes* out);

 private:
  // zstd of src[0, n) into zstd_out_; 0 on failure.
  size_t Zstd(const uint8_t* src, size_t n);

  int level_;
  ZSTD_CCtx* cctx_ = nullptr;
  std::vector<uint8_t> xor_;
  std::vector<uint8_t> planes_;
  std::vector<uint8_t> sparse_;  // count, gaps, then values
  std::vector<uint8_t> values_;
  std::vector<uint8_t> zstd_out_;
};

}  // namespace easysync::bench
