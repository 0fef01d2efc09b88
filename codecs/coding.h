// Little-endian fixed-width and LEB128 varint coding, bounds-checked on the decode side.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "codecs/frame_format.h"

namespace easysync::codec::internal {

inline uint64_t LoadU64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);  // host is little-endian (frame_format.h asserts it)
  return v;
}
inline uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void StoreU64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, sizeof v); }
inline void StoreU32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, sizeof v); }

// The kDiff stage works on E-byte elements as unsigned integers mod 2^(8E).
template <size_t E>
inline constexpr uint64_t kElementMask = E == 8 ? ~uint64_t{0} : (uint64_t{1} << (8 * E)) - 1;

// (cur - base) read as a signed E-byte integer, zigzag-mapped (0, -1, 1, -2, ... -> 0, 1, 2,
// 3, ...): a step of one unit in the last place becomes 1 or 2 whatever its carries.
template <size_t E>
inline uint64_t ZigzagDelta(uint64_t cur, uint64_t base) {
  constexpr uint64_t m = kElementMask<E>;
  const uint64_t d = (cur - base) & m;
  const uint64_t negative = (d >> (8 * E - 1)) & 1;
  return ((d << 1) & m) ^ (negative != 0 ? m : 0);
}

// base + the delta that z encodes (or base - it, to undo), mod 2^(8E).
template <size_t E>
inline uint64_t ApplyZigzag(uint64_t base, uint64_t z, bool undo) {
  constexpr uint64_t m = kElementMask<E>;
  const uint64_t d = ((z >> 1) ^ (uint64_t{0} - (z & 1))) & m;
  return (undo ? base - d : base + d) & m;
}

// Writes v as LEB128 (7 bits per byte, low first, high bit = more follows) at p.
// REQUIRES: room for format::kMaxVarintBytes bytes. Returns the end of the written bytes.
inline uint8_t* PutVarint(uint8_t* p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<uint8_t>(v);
  return p;
}

inline size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// A canonical varint of 1-3 bytes (a value below 2^21: the gaps of all but the sparsest
// updates) read without a branch on its length. REQUIRES: 4 readable bytes at p. Returns the
// number of bytes it takes, or 0 when it is not such a varint (longer, or overlong: a last
// byte of zero): then GetVarint decides. Accepts exactly what GetVarint accepts, for those.
inline size_t GetShortVarint(const uint8_t* p, uint64_t* out) {
  const uint32_t w = LoadU32(p);
  const uint32_t c0 = (w >> 7) & 1;    // byte 0 continues
  const uint32_t c1 = c0 & (w >> 15);  // and byte 1
  const uint32_t c2 = c1 & (w >> 23);  // and byte 2: four bytes or more
  const uint32_t last = (w >> (8 * (c0 + c1))) & 0xff;
  if (c2 != 0 || (c0 != 0 && last == 0)) return 0;
  *out = (w & 0x7f) | ((w >> 1) & 0x3f80 & (0u - c0)) | ((w >> 2) & 0x1fc000 & (0u - c1));
  return 1 + c0 + c1;
}

// Reads one canonical varint from [*p, end). Returns false (leaving *p unspecified) when it
// runs past end, is longer than 10 bytes, overflows 64 bits, or is not minimal (ends in a
// zero byte after the first): a frame has exactly one encoding of each number.
inline bool GetVarint(const uint8_t** p, const uint8_t* end, uint64_t* out) {
  const uint8_t* q = *p;
  if (q < end && *q < 0x80) {  // fast path: one byte
    *out = *q;
    *p = q + 1;
    return true;
  }
  uint64_t v = 0;
  for (unsigned shift = 0; shift < 64; shift += 7) {
    if (q == end) return false;
    const uint8_t b = *q++;
    const uint64_t bits = b & 0x7f;
    if (shift == 63 && bits > 1) return false;  // overflow
    v |= bits << shift;
    if (b < 0x80) {
      if (b == 0 && shift != 0) return false;  // overlong
      *out = v;
      *p = q;
      return true;
    }
  }
  return false;
}

// GetVarint for a stream of mostly short varints (sparse gaps): one byte first (most gaps of a
// step's delta), then 2-3 bytes without a branch on their length (GetShortVarint) where four
// bytes can be read before `readable` (end, or a later byte known to be readable), else
// GetVarint. Accepts exactly what GetVarint accepts.
inline bool GetMostlyShortVarint(const uint8_t** p, const uint8_t* end, const uint8_t* readable,
                                 uint64_t* out) {
  const uint8_t* q = *p;
  if (q < end && *q < 0x80) {
    *out = *q;
    *p = q + 1;
    return true;
  }
  if (readable - q >= 4) {
    const size_t len = GetShortVarint(q, out);
    if (len != 0 && len <= static_cast<size_t>(end - q)) {
      *p = q + len;
      return true;
    }
  }
  return GetVarint(p, end, out);
}

}  // namespace easysync::codec::internal
