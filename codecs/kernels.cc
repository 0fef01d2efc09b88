#include "codecs/kernels.h"

#include <algorithm>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "codecs/coding.h"

namespace easysync::codec::internal {
namespace {

#if !defined(__SSE2__)
// Bit i set iff byte i of x is non-zero. The multiply gathers the eight high bits into the top
// byte; the partial products never overlap, so there are no carries.
inline uint64_t NonZeroBytes8(uint64_t x) {
  constexpr uint64_t kLow7 = 0x7f7f7f7f7f7f7f7full;
  constexpr uint64_t kHigh = 0x8080808080808080ull;
  const uint64_t t = (((x & kLow7) + kLow7) | x) & kHigh;
  return ((t >> 7) * 0x0102040810204080ull) >> 56;
}
#endif

// Bit i set iff byte i of cur and base differ, for the 64 bytes at cur and base.
inline uint64_t ChangedBytes64(const uint8_t* cur, const uint8_t* base) {
#if defined(__SSE2__)
  uint64_t same = 0;
  for (int k = 0; k < 4; ++k) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(cur + 16 * k));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + 16 * k));
    const auto eq = static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(a, b)));
    same |= uint64_t{eq} << (16 * k);
  }
  return ~same;
#else
  uint64_t bytes = 0;
  for (int k = 0; k < 8; ++k) {
    bytes |= NonZeroBytes8(LoadU64(cur + 8 * k) ^ LoadU64(base + 8 * k)) << (8 * k);
  }
  return bytes;
#endif
}

// Folds a mask of changed bytes into one bit per element, at the element's first byte.
template <size_t E>
inline uint64_t ElementMask(uint64_t bytes) {
  if constexpr (E >= 2) bytes |= bytes >> 1;
  if constexpr (E >= 4) bytes |= bytes >> 2;
  if constexpr (E >= 8) bytes |= bytes >> 4;
  if constexpr (E == 1) return bytes;
  if constexpr (E == 2) return bytes & 0x5555555555555555ull;
  if constexpr (E == 4) return bytes & 0x1111111111111111ull;
  if constexpr (E == 8) return bytes & 0x0101010101010101ull;
}

// LEB128 without data-dependent branches for gaps below 2^21 (all but the sparsest updates):
// the length is computed, not looped on. REQUIRES: 4 writable bytes (10 for large gaps).
inline uint8_t* PutGap(uint8_t* p, uint64_t g) {
  if (g >= (1u << 21)) return PutVarint(p, g);
  const uint32_t two = g >= 0x80 ? 1 : 0;
  const uint32_t three = g >= 0x4000 ? 1 : 0;
  const auto v = static_cast<uint32_t>((g & 0x7f) | ((g >> 7 & 0x7f) << 8) | ((g >> 14) << 16));
  StoreU32(p, v | (two << 7) | (three << 15));
  return p + 1 + two + three;
}

template <size_t E>
inline uint64_t LoadElement(const uint8_t* p) {
  if constexpr (E == 1) return *p;
  if constexpr (E == 2) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
  }
  if constexpr (E == 4) return LoadU32(p);
  if constexpr (E == 8) return LoadU64(p);
}

// The scan works in chunks: first the byte offsets of all changed elements of a chunk are
// collected without a branch per element or per 64-byte step (four offsets are written
// unconditionally, the cursor advances by the popcount), then they are emitted. Unpredictable
// branches, not memory, were what bounded the simple per-element loop at 1-10% density.
constexpr size_t kChunk = 4096;
// How far ahead the scan asks for cur's and base's bytes. Both usually come from memory (the
// encoder scans a block before it hashes it), as two streams that the hardware prefetchers
// keep too short a distance ahead of where the scan is compute-bound between misses: a 256 MiB
// bf16 step on a Zen 5 VM took 33 ms instead of 42 with base's prefetch; on a Zen 3 VM the scan
// alone took 46-64 ms instead of 76-86 with cur's too.
constexpr size_t kPrefetchAhead = 4096;

template <size_t E>
inline void StoreElement(uint8_t* p, uint64_t v) {
  std::memcpy(p, &v, E);  // little-endian: the low E bytes
}

// kUpdate: each changed element of cur is also stored into `update` (base, writable) once it
// is in the sink.
template <size_t E, bool kDiff, bool kUpdate>
[[gnu::always_inline]] inline bool SparseScanBody(const uint8_t* cur, const uint8_t* base,
                                                  size_t begin, size_t end, SparseSink* s,
                                                  uint8_t* update) {
  uint16_t offsets[kChunk + 8];  // relative byte offsets; +8: unconditional writes past the last
  constexpr uint64_t kTop = uint64_t{1} << 63;  // keeps ctz defined when m is 0 (see below)
  uint8_t* pos = s->pos;
  uint8_t* val = s->val;
  uint64_t next = s->next_pos;
  const uint64_t origin = s->origin;
  // Until a limit is passed: what was emitted then, the limit's chunk too, stays readable
  // (UndoSparseScan).
  bool within = true;
  for (size_t chunk = begin; within && chunk < end; chunk += kChunk) {
    const size_t chunk_end = end - chunk < kChunk ? end : chunk + kChunk;
    uint16_t* w = offsets;
    size_t off = chunk;
    for (; off + 64 <= chunk_end; off += 64) {
      // (An address, not a pointer past the end: a prefetch never faults.)
      __builtin_prefetch(
          reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(base + off) + kPrefetchAhead));
      __builtin_prefetch(
          reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(cur + off) + kPrefetchAhead));
      uint64_t m = ElementMask<E>(ChangedBytes64(cur + off, base + off));
      const auto rel = static_cast<uint16_t>(off - chunk);
      const int n = __builtin_popcountll(m);
      // ctz(m | kTop) is ctz(m) when m has a bit below 63 or is exactly kTop (then 63 is right),
      // and 63 when m is 0: a slot that the cursor does not advance over.
      for (int k = 0; k < 4; ++k) {
        w[k] = static_cast<uint16_t>(rel + __builtin_ctzll(m | kTop));
        m &= m - 1;
      }
      if (n > 4) {
        uint16_t* q = w + 4;
        while (m != 0) {
          *q++ = static_cast<uint16_t>(rel + __builtin_ctzll(m));
          m &= m - 1;
        }
      }
      w += n;
    }
    if (off < chunk_end) {  // the last < 64 bytes of the range
      uint64_t bytes = 0;
      for (size_t i = off; i < chunk_end; ++i) bytes |= uint64_t{cur[i] != base[i]} << (i - off);
      for (uint64_t m = ElementMask<E>(bytes); m != 0; m &= m - 1) {
        *w++ = static_cast<uint16_t>(off - chunk + static_cast<size_t>(__builtin_ctzll(m)));
      }
    }
    for (const uint16_t* r = offsets; r < w; ++r) {
      const size_t b = chunk + *r;
      const uint64_t p = (origin + b) / E;
      pos = PutGap(pos, p - next);
      next = p + 1;
      const uint64_t c = LoadElement<E>(cur + b), o = LoadElement<E>(base + b);
      StoreU64(val, kDiff ? ZigzagDelta<E>(c, o) : c ^ o);
      val += E;  // wrote 8, kept E: the sink has slack
      if constexpr (kUpdate) StoreElement<E>(update + b, c);
    }
    s->count += static_cast<uint64_t>(w - offsets);
    within = pos <= s->pos_limit && val <= s->val_limit;
  }
  s->pos = pos;
  s->val = val;
  s->next_pos = next;
  return within;
}

template <size_t E, bool kDiff, bool kUpdate>
bool SparseScanPortable(const uint8_t* cur, const uint8_t* base, size_t begin, size_t end,
                        SparseSink* s, uint8_t* update) {
  return SparseScanBody<E, kDiff, kUpdate>(cur, base, begin, end, s, update);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The same code with the popcnt instruction (baseline x86-64 lacks it; the library call it
// would otherwise make per 64 bytes costs a third of the scan).
template <size_t E, bool kDiff, bool kUpdate>
[[gnu::target("popcnt")]] bool SparseScanPopcnt(const uint8_t* cur, const uint8_t* base,
                                                size_t begin, size_t end, SparseSink* s,
                                                uint8_t* update) {
  return SparseScanBody<E, kDiff, kUpdate>(cur, base, begin, end, s, update);
}
template <size_t E, bool kDiff, bool kUpdate>
bool SparseScanT(const uint8_t* cur, const uint8_t* base, size_t begin, size_t end, SparseSink* s,
                 uint8_t* update) {
  static const bool has_popcnt = __builtin_cpu_supports("popcnt");
  return has_popcnt ? SparseScanPopcnt<E, kDiff, kUpdate>(cur, base, begin, end, s, update)
                    : SparseScanPortable<E, kDiff, kUpdate>(cur, base, begin, end, s, update);
}
#else
template <size_t E, bool kDiff, bool kUpdate>
bool SparseScanT(const uint8_t* cur, const uint8_t* base, size_t begin, size_t end, SparseSink* s,
                 uint8_t* update) {
  return SparseScanPortable<E, kDiff, kUpdate>(cur, base, begin, end, s, update);
}
#endif

template <size_t E>
bool SparseScanE(const uint8_t* cur, const uint8_t* base, size_t begin, size_t end, bool diff,
                 SparseSink* s, uint8_t* update) {
  if (update != nullptr) {
    return diff ? SparseScanT<E, true, true>(cur, base, begin, end, s, update)
                : SparseScanT<E, false, true>(cur, base, begin, end, s, update);
  }
  return diff ? SparseScanT<E, true, false>(cur, base, begin, end, s, nullptr)
              : SparseScanT<E, false, false>(cur, base, begin, end, s, nullptr);
}

template <size_t E, bool kDiff>
void UndoSparseScanT(const uint8_t* cur, uint8_t* base, const uint8_t* gaps,
                     const uint8_t* gaps_end, uint64_t count, const uint8_t* values) {
  uint64_t next = 0;
  for (uint64_t k = 0; k < count; ++k) {
    uint64_t gap = 0;
    (void)GetVarint(&gaps, gaps_end, &gap);  // written by the scan
    const uint64_t p = next + gap;
    next = p + 1;
    const uint64_t c = LoadElement<E>(cur + p * E);
    const uint64_t z = LoadElement<E>(values + k * E);
    StoreElement<E>(base + p * E, kDiff ? ApplyZigzag<E>(c, z, /*undo=*/true) : c ^ z);
  }
}

template <size_t E>
void UndoSparseScanE(const uint8_t* cur, uint8_t* base, const uint8_t* gaps,
                     const uint8_t* gaps_end, uint64_t count, const uint8_t* values, bool diff) {
  return diff ? UndoSparseScanT<E, true>(cur, base, gaps, gaps_end, count, values)
              : UndoSparseScanT<E, false>(cur, base, gaps, gaps_end, count, values);
}

// f.template operator()<E>() for E = esize in {1, 2, 4, 8}; R{} (false, or nothing) for any
// other esize, without calling f.
template <class R = void, class F>
R WithElementSize(size_t esize, F&& f) {
  switch (esize) {
    case 1:
      return f.template operator()<1>();
    case 2:
      return f.template operator()<2>();
    case 4:
      return f.template operator()<4>();
    case 8:
      return f.template operator()<8>();
    default:
      return R();
  }
}

#if defined(__SSE2__)
// 16 elements of E bytes at a time, all planes in one pass (the byte loops below make E passes
// with stride E: several times slower, the merge most). The E vectors of 16 elements are taken
// apart by log2(E) rounds of Split2 (even and odd bytes of 32), which leave byte b of the 16
// elements in vector b; Interleave2, its inverse, puts them back together.
inline void Split2(__m128i a, __m128i b, __m128i* even, __m128i* odd) {
  const __m128i low = _mm_set1_epi16(0x00ff);
  *even = _mm_packus_epi16(_mm_and_si128(a, low), _mm_and_si128(b, low));
  *odd = _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8));
}

inline void Interleave2(__m128i even, __m128i odd, __m128i* a, __m128i* b) {
  *a = _mm_unpacklo_epi8(even, odd);
  *b = _mm_unpackhi_epi8(even, odd);
}

inline __m128i Load16(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

inline void Store16(uint8_t* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }

// v[k] holds bytes 16k..16k+15 of 16 elements; afterwards v[b] holds byte b of each.
template <size_t E>
inline void ToPlanes(__m128i (&v)[E]) {
  for (size_t half = E / 2, round = 1; round < E; round *= 2) {
    __m128i t[E];
    for (size_t k = 0; k < half; ++k) Split2(v[2 * k], v[2 * k + 1], &t[k], &t[k + half]);
    for (size_t k = 0; k < E; ++k) v[k] = t[k];
  }
}

template <size_t E>
inline void FromPlanes(__m128i (&v)[E]) {
  for (size_t half = E / 2, round = 1; round < E; round *= 2) {
    __m128i t[E];
    for (size_t k = 0; k < half; ++k) Interleave2(v[k], v[k + half], &t[2 * k], &t[2 * k + 1]);
    for (size_t k = 0; k < E; ++k) v[k] = t[k];
  }
}

// The vector part of a split: runs of 16 elements from first, each run's E vectors made by
// load(byte offset of the vector) and stored as planes. Returns where the runs end.
template <size_t E, class Load>
size_t SplitRuns(size_t count, size_t first, size_t last, uint8_t* planes, Load load) {
  size_t i = first;
  for (; i + 16 <= last; i += 16) {
    __m128i v[E];
    for (size_t k = 0; k < E; ++k) v[k] = load(i * E + 16 * k);
    ToPlanes<E>(v);
    for (size_t b = 0; b < E; ++b) Store16(planes + b * count + i, v[b]);
  }
  return i;
}

// The vector part of a merge: out's vectors become combine(out's, the planes' elements).
template <size_t E, class Combine>
size_t MergeRuns(const uint8_t* planes, size_t count, size_t first, size_t last, uint8_t* out,
                 Combine combine) {
  size_t i = first;
  for (; i + 16 <= last; i += 16) {
    __m128i v[E];
    for (size_t b = 0; b < E; ++b) v[b] = Load16(planes + b * count + i);
    FromPlanes<E>(v);
    for (size_t k = 0; k < E; ++k) {
      uint8_t* o = out + i * E + 16 * k;
      Store16(o, combine(Load16(o), v[k]));
    }
  }
  return i;
}

// The lanes of a vector as E-byte integers (E = 2, 4, 8): the few operations ZigzagDelta and
// ApplyZigzag need.
template <size_t E>
struct Lanes;
template <>
struct Lanes<2> {
  static __m128i Add(__m128i a, __m128i b) { return _mm_add_epi16(a, b); }
  static __m128i Sub(__m128i a, __m128i b) { return _mm_sub_epi16(a, b); }
  static __m128i Shl1(__m128i a) { return _mm_slli_epi16(a, 1); }
  static __m128i Shr1(__m128i a) { return _mm_srli_epi16(a, 1); }
  static __m128i SignMask(__m128i a) { return _mm_srai_epi16(a, 15); }
  static __m128i One() { return _mm_set1_epi16(1); }
};
template <>
struct Lanes<4> {
  static __m128i Add(__m128i a, __m128i b) { return _mm_add_epi32(a, b); }
  static __m128i Sub(__m128i a, __m128i b) { return _mm_sub_epi32(a, b); }
  static __m128i Shl1(__m128i a) { return _mm_slli_epi32(a, 1); }
  static __m128i Shr1(__m128i a) { return _mm_srli_epi32(a, 1); }
  static __m128i SignMask(__m128i a) { return _mm_srai_epi32(a, 31); }
  static __m128i One() { return _mm_set1_epi32(1); }
};
template <>
struct Lanes<8> {
  static __m128i Add(__m128i a, __m128i b) { return _mm_add_epi64(a, b); }
  static __m128i Sub(__m128i a, __m128i b) { return _mm_sub_epi64(a, b); }
  static __m128i Shl1(__m128i a) { return _mm_slli_epi64(a, 1); }
  static __m128i Shr1(__m128i a) { return _mm_srli_epi64(a, 1); }
  // No 64-bit arithmetic shift in SSE2: the sign of each upper half, copied to both halves.
  static __m128i SignMask(__m128i a) {
    return _mm_shuffle_epi32(_mm_srai_epi32(a, 31), _MM_SHUFFLE(3, 3, 1, 1));
  }
  static __m128i One() { return _mm_set1_epi64x(1); }
};

// ZigzagDelta and ApplyZigzag (coding.h) on the lanes of a vector.
template <size_t E>
inline __m128i ZigzagDeltaV(__m128i cur, __m128i base) {
  using L = Lanes<E>;
  const __m128i d = L::Sub(cur, base);
  return _mm_xor_si128(L::Shl1(d), L::SignMask(d));
}

template <size_t E>
inline __m128i ApplyZigzagV(__m128i base, __m128i z, bool undo) {
  using L = Lanes<E>;
  const __m128i d =
      _mm_xor_si128(L::Shr1(z), L::Sub(_mm_setzero_si128(), _mm_and_si128(z, L::One())));
  return undo ? L::Sub(base, d) : L::Add(base, d);
}
#endif

template <size_t E>
void SplitPlanesDiffT(const uint8_t* cur, const uint8_t* base, size_t count, size_t first,
                      size_t last, uint8_t* planes) {
  size_t i = first;
#if defined(__SSE2__)
  if constexpr (E > 1) {
    i = SplitRuns<E>(count, first, last, planes, [&](size_t at) {
      return ZigzagDeltaV<E>(Load16(cur + at), Load16(base + at));
    });
  }
#endif
  for (; i < last; ++i) {
    const uint64_t z = ZigzagDelta<E>(LoadElement<E>(cur + i * E), LoadElement<E>(base + i * E));
    for (size_t b = 0; b < E; ++b) planes[b * count + i] = static_cast<uint8_t>(z >> (8 * b));
  }
}

template <size_t E>
void MergePlanesDiffT(const uint8_t* planes, size_t count, size_t first, size_t last, bool undo,
                      uint8_t* out) {
  size_t i = first;
#if defined(__SSE2__)
  if constexpr (E > 1) {
    i = MergeRuns<E>(planes, count, first, last, out,
                     [&](__m128i o, __m128i z) { return ApplyZigzagV<E>(o, z, undo); });
  }
#endif
  for (; i < last; ++i) {
    uint64_t z = 0;
    for (size_t b = 0; b < E; ++b) z |= uint64_t{planes[b * count + i]} << (8 * b);
    const uint64_t v = ApplyZigzag<E>(LoadElement<E>(out + i * E), z, undo);
    std::memcpy(out + i * E, &v, E);  // little-endian: the low E bytes
  }
}

// Elements [first, last) of planes from cur (^ base): the vector loop for runs of 16, the
// byte loop for the rest.
template <size_t E>
void SplitPlanesT(const uint8_t* cur, const uint8_t* base, size_t count, size_t first, size_t last,
                  uint8_t* planes) {
  size_t i = first;
#if defined(__SSE2__)
  if constexpr (E > 1) {
    i = SplitRuns<E>(count, first, last, planes, [&](size_t at) {
      return base != nullptr ? _mm_xor_si128(Load16(cur + at), Load16(base + at))
                             : Load16(cur + at);
    });
  }
#endif
  for (size_t b = 0; b < E; ++b) {
    uint8_t* plane = planes + b * count;
    const uint8_t* c = cur + b;
    if (base != nullptr) {
      const uint8_t* o = base + b;
      for (size_t j = i; j < last; ++j) plane[j] = c[j * E] ^ o[j * E];
    } else {
      for (size_t j = i; j < last; ++j) plane[j] = c[j * E];
    }
  }
}

// out[i * E + b] = (or ^=, with kXor) planes[b * count + i] for elements [first, last).
template <size_t E, bool kXor>
void MergePlanesT(const uint8_t* planes, size_t count, size_t first, size_t last, uint8_t* out) {
  size_t i = first;
#if defined(__SSE2__)
  if constexpr (E > 1) {
    i = MergeRuns<E>(planes, count, first, last, out,
                     [](__m128i o, __m128i p) { return kXor ? _mm_xor_si128(o, p) : p; });
  }
#endif
  for (size_t b = 0; b < E; ++b) {
    const uint8_t* plane = planes + b * count;
    uint8_t* o = out + b;
    for (size_t j = i; j < last; ++j) {
      if constexpr (kXor) {
        o[j * E] ^= plane[j];
      } else {
        o[j * E] = plane[j];
      }
    }
  }
}

}  // namespace

bool SparseScan(const uint8_t* cur, const uint8_t* base, size_t begin, size_t end, size_t esize,
                SparseSink* sink, bool diff, uint8_t* update) {
  return WithElementSize<bool>(
      esize, [&]<size_t E>() { return SparseScanE<E>(cur, base, begin, end, diff, sink, update); });
}

void UndoSparseScan(const uint8_t* cur, uint8_t* base, const uint8_t* gaps, const uint8_t* gaps_end,
                    uint64_t count, const uint8_t* values, size_t esize, bool diff) {
  WithElementSize(esize, [&]<size_t E>() {
    UndoSparseScanE<E>(cur, base, gaps, gaps_end, count, values, diff);
  });
}

void SplitPlanesDiff(const uint8_t* cur, const uint8_t* base, size_t count, size_t esize,
                     size_t first, size_t last, uint8_t* planes) {
  WithElementSize(esize,
                  [&]<size_t E>() { SplitPlanesDiffT<E>(cur, base, count, first, last, planes); });
}

void MergePlanesDiff(const uint8_t* planes, size_t count, size_t esize, size_t first, size_t last,
                     bool undo, uint8_t* out) {
  WithElementSize(esize,
                  [&]<size_t E>() { MergePlanesDiffT<E>(planes, count, first, last, undo, out); });
}

void SplitPlanes(const uint8_t* cur, const uint8_t* base, size_t count, size_t esize, size_t first,
                 size_t last, uint8_t* planes) {
  WithElementSize(esize,
                  [&]<size_t E>() { SplitPlanesT<E>(cur, base, count, first, last, planes); });
}

void MergePlanesXor(const uint8_t* planes, size_t count, size_t esize, size_t first, size_t last,
                    uint8_t* out) {
  WithElementSize(esize,
                  [&]<size_t E>() { MergePlanesT<E, true>(planes, count, first, last, out); });
}

void MergePlanes(const uint8_t* planes, size_t count, size_t esize, size_t first, size_t last,
                 uint8_t* out) {
  WithElementSize(esize,
                  [&]<size_t E>() { MergePlanesT<E, false>(planes, count, first, last, out); });
}

void GatherPlanes(const uint8_t* cur, size_t count, size_t esize, size_t at, size_t len,
                  uint8_t* out) {
  // Byte j of the planes is byte j / count of element j % count.
  for (size_t j = at; j < at + len;) {
    const size_t b = j / count, e = j % count;
    const size_t run = std::min(at + len - j, count - e);
    const uint8_t* from = cur + e * esize + b;
    for (size_t k = 0; k < run; ++k) out[j - at + k] = from[k * esize];
    j += run;
  }
}

void XorInto(const uint8_t* src, size_t first, size_t last, uint8_t* out) {
  size_t i = first;
  for (; i + 8 <= last; i += 8) StoreU64(out + i, LoadU64(out + i) ^ LoadU64(src + i));
  for (; i < last; ++i) out[i] ^= src[i];
}

}  // namespace easysync::codec::internal
