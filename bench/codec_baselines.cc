#include "codec_baselines.h"

#include <cstring>

namespace easysync::bench {
namespace {

// Unsigned LEB128, as PULSE codes its position gaps.
uint8_t* PutVarint(uint64_t v, uint8_t* p) {
  while (v >= 0x80) {
    *p++ = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<uint8_t>(v);
  return p;
}

}  // namespace

size_t Baselines::Zstd(const uint8_t* src, size_t n) {
  if (cctx_ == nullptr) cctx_ = ZSTD_createCCtx();
  if (cctx_ == nullptr) return 0;
  zstd_out_.resize(ZSTD_compressBound(n));
  const size_t r = ZSTD_compressCCtx(cctx_, zstd_out_.data(), zstd_out_.size(), src, n, level_);
  return ZSTD_isError(r) ? 0 : r;
}

bool Baselines::Measure(const uint8_t* cur, const uint8_t* base, size_t n, size_t esize,
                        BaselineSizes* out) {
  xor_.resize(n);
  for (size_t i = 0; i < n; ++i) xor_[i] = cur[i] ^ base[i];
  out->xor_zstd = Zstd(xor_.data(), n);

  // Byte planes: byte b of element i goes to b * count + i.
  const size_t count = n / esize;
  planes_.resize(n);
  for (size_t i = 0; i < count; ++i) {
    for (size_t b = 0; b < esize; ++b) planes_[b * count + i] = xor_[i * esize + b];
  }
  out->planes_zstd = Zstd(planes_.data(), n);

  // PULSE-style: the count, the gaps between changed element positions (the first gap is the
  // first position), then the new values of the changed elements, all through zstd.
  constexpr size_t kHead = 10;  // room for the count varint in front of the gaps
  sparse_.resize(kHead + count * 10);
  values_.resize(n);
  uint8_t* gap = sparse_.data() + kHead;
  uint8_t* val = values_.data();
  size_t changed = 0;
  size_t next = 0;
  for (size_t i = 0; i < count; ++i) {
    if (std::memcmp(cur + i * esize, base + i * esize, esize) == 0) continue;
    gap = PutVarint(i - next, gap);
    next = i;
    std::memcpy(val, cur + i * esize, esize);
    val += esize;
    ++changed;
  }
  uint8_t head[kHead];
  const size_t head_len = static_cast<size_t>(PutVarint(changed, head) - head);
  const size_t start = kHead - head_len;
  const size_t gap_end = static_cast<size_t>(gap - sparse_.data());
  const size_t value_bytes = static_cast<size_t>(val - values_.data());
  sparse_.resize(gap_end + value_bytes);  // may move the buffer: offsets only from here
  std::memcpy(sparse_.data() + start, head, head_len);
  std::memcpy(sparse_.data() + gap_end, values_.data(), value_bytes);
  out->pulse = Zstd(sparse_.data() + start, sparse_.size() - start);
  return out->xor_zstd != 0 && out->planes_zstd != 0 && out->pulse != 0;
}

}  // namespace easysync::bench
