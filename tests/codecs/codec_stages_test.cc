// The stage kernels against naive reference versions.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <random>
#include <vector>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "codecs/buffers.h"
#include "codecs/coding.h"
#include "codecs/kernels.h"
#include "codecs/sparse.h"
#include "cuda/xxh3_blocks.h"
#include "easysync/codec.h"

namespace easysync::codec::internal {
namespace {

// XXH3-64 put together from block sums (how a range on a GPU is hashed) is XXH3-64: around
// every boundary of the long-input loop (a block, a stripe, a last block shorter than a
// stripe) and for a segment-sized range.
TEST(CodecStages, Xxh3FromBlockSumsIsXxh3) {
  std::mt19937_64 rng(7);
  std::vector<uint8_t> data((size_t{16} << 20) + 4096);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  std::vector<size_t> lengths = {kXxh3SplitMinBytes,
                                 255,
                                 256,
                                 1023,
                                 1024,
                                 1025,
                                 1030,
                                 1087,
                                 1088,
                                 1089,
                                 2047,
                                 2048,
                                 2049,
                                 2100,
                                 3071 + 64,
                                 size_t{16} << 20};
  for (int i = 0; i < 40; ++i) lengths.push_back(kXxh3SplitMinBytes + rng() % 70000);
  for (size_t len : lengths) {
    const size_t blocks = Xxh3SplitBlocks(len);
    std::vector<uint64_t> sums(blocks * cuda::kXxh3Lanes);
    cuda::Xxh3BlockSumsHost(data.data(), blocks, Xxh3SecretWords(), sums.data());
    ASSERT_LE(len - Xxh3TailOffset(len), size_t{1087}) << len;
    EXPECT_EQ(Xxh3FromBlockSums(sums.data(), data.data() + Xxh3TailOffset(len), len),
              Hash64(data.data(), len))
        << "len " << len;
  }
  // A changed byte anywhere changes the sums' hash as it changes XXH3's.
  const size_t len = 5000;
  const uint64_t before = Hash64(data.data(), len);
  for (size_t at : {size_t{0}, size_t{1023}, size_t{4000}, len - 1}) {
    data[at] ^= 1;
    std::vector<uint64_t> sums(Xxh3SplitBlocks(len) * cuda::kXxh3Lanes);
    cuda::Xxh3BlockSumsHost(data.data(), Xxh3SplitBlocks(len), Xxh3SecretWords(), sums.data());
    const uint64_t h = Xxh3FromBlockSums(sums.data(), data.data() + Xxh3TailOffset(len), len);
    EXPECT_NE(h, before) << at;
    EXPECT_EQ(h, Hash64(data.data(), len)) << at;
    data[at] ^= 1;
  }
}

TEST(CodecStages, VarintRoundTripAndRejects) {
  std::vector<uint64_t> values = {0, 1, 127, 128, 255, 16383, 16384, UINT32_MAX, UINT64_MAX};
  std::mt19937_64 rng(1);
  for (int i = 0; i < 1000; ++i) values.push_back(rng() >> (rng() % 64));
  std::vector<uint8_t> buf(values.size() * format::kMaxVarintBytes);
  uint8_t* p = buf.data();
  for (uint64_t v : values) {
    uint8_t* q = PutVarint(p, v);
    EXPECT_EQ(static_cast<size_t>(q - p), VarintSize(v));
    p = q;
  }
  const uint8_t* r = buf.data();
  for (uint64_t v : values) {
    uint64_t got;
    ASSERT_TRUE(GetVarint(&r, p, &got));
    EXPECT_EQ(got, v);
  }
  EXPECT_EQ(r, p);
  const std::vector<std::vector<uint8_t>> bad = {
      {},                                                                  // empty
      {0x80},                                                              // truncated
      {0x80, 0x00},                                                        // overlong zero
      {0xff, 0x80, 0x00},                                                  // overlong
      {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02},        // > 64 bits
      {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01},  // 11 bytes
  };
  for (const auto& b : bad) {
    const uint8_t* q = b.data();
    uint64_t got;
    EXPECT_FALSE(GetVarint(&q, b.data() + b.size(), &got)) << b.size();
  }
}

TEST(CodecStages, ShortVarintsReadAsGetVarintReadsThem) {
  // Every first three bytes (the fourth only continues a longer varint): the branch-free
  // reader takes a canonical varint of 1-3 bytes exactly as GetVarint does, and leaves the
  // rest (longer, overlong, malformed) to it.
  size_t taken = 0;
  for (uint32_t w = 0; w < (1u << 24); ++w) {
    for (const uint32_t fourth : {0x00u, 0x81u}) {
      const uint32_t word = w | fourth << 24;
      uint8_t b[4];
      std::memcpy(b, &word, 4);
      uint64_t fast = 0, slow = 0;
      const size_t len = GetShortVarint(b, &fast);
      const uint8_t* q = b;
      const bool ok = GetVarint(&q, b + 4, &slow);
      if (len == 0) {
        // Not taken: one GetVarint refuses, or one of four bytes or more (which, ending in a
        // zero byte or running past these four, it refuses too).
        ASSERT_FALSE(ok) << std::hex << word;
        continue;
      }
      ++taken;
      ASSERT_TRUE(ok) << std::hex << word;
      ASSERT_EQ(static_cast<size_t>(q - b), len) << std::hex << word;
      ASSERT_EQ(fast, slow) << std::hex << word;
    }
  }
  // One byte (128 x any two after it), two (128 x 127 non-zero ends x any), three (128 x 128
  // x 127), for each fourth byte.
  EXPECT_EQ(taken, 2u * (128u * 65536 + 128u * 127 * 256 + 128u * 128 * 127));
}

// Reference: positions and element-major XOR values of the changed elements.
void NaiveChanges(const std::vector<uint8_t>& cur, const std::vector<uint8_t>& base, size_t esize,
                  std::vector<uint64_t>* pos, std::vector<uint8_t>* vals) {
  for (size_t i = 0; i < cur.size() / esize; ++i) {
    bool changed = false;
    for (size_t b = 0; b < esize; ++b) changed |= cur[i * esize + b] != base[i * esize + b];
    if (!changed) continue;
    pos->push_back(i);
    for (size_t b = 0; b < esize; ++b) vals->push_back(cur[i * esize + b] ^ base[i * esize + b]);
  }
}

TEST(CodecStages, SparseScanMatchesNaive) {
  std::mt19937_64 rng(7);
  for (size_t esize : {1, 2, 4, 8}) {
    for (size_t count : {0, 1, 5, 31, 32, 33, 257, 4096, 10001}) {
      for (double density : {0.0, 0.003, 0.1, 0.5, 1.0}) {
        std::vector<uint8_t> base(count * esize), cur;
        for (auto& b : base) b = static_cast<uint8_t>(rng());
        cur = base;
        std::uniform_real_distribution<double> u(0, 1);
        for (size_t i = 0; i < count; ++i) {
          // Flip one random byte of the element: exercises every lane position.
          if (u(rng) < density)
            cur[i * esize + rng() % esize] ^= static_cast<uint8_t>(1 + rng() % 255);
        }
        std::vector<uint64_t> want_pos;
        std::vector<uint8_t> want_vals;
        NaiveChanges(cur, base, esize, &want_pos, &want_vals);

        std::vector<uint8_t> gaps(count * 10 + kSparseSinkSlack),
            vals(count * esize + kSparseSinkSlack);
        SparseSink sink;
        sink.pos = gaps.data();
        sink.pos_limit = gaps.data() + count * 10;
        sink.val = vals.data();
        sink.val_limit = vals.data() + count * esize;
        // Scan in uneven blocks (multiples of 32) to cover the carry between calls.
        const size_t n = count * esize;
        for (size_t off = 0; off < n;) {
          const size_t len = std::min(n - off, size_t{32} * (1 + rng() % 5));
          ASSERT_TRUE(SparseScan(cur.data(), base.data(), off, off + len, esize, &sink));
          off += len;
        }
        ASSERT_EQ(sink.count, want_pos.size());
        vals.resize(static_cast<size_t>(sink.val - vals.data()));
        EXPECT_EQ(vals, want_vals);
        const uint8_t* p = gaps.data();
        uint64_t next = 0;
        for (uint64_t want : want_pos) {
          uint64_t gap;
          ASSERT_TRUE(GetVarint(&p, sink.pos, &gap));
          EXPECT_EQ(next + gap, want);
          next = want + 1;
        }
        EXPECT_EQ(p, sink.pos);
      }
    }
  }
}

TEST(CodecStages, SparseScanStopsAtLimit) {
  std::vector<uint8_t> base(4096, 0), cur(4096, 1);
  std::vector<uint8_t> gaps(100 + kSparseSinkSlack), vals(100 + kSparseSinkSlack);
  SparseSink sink;
  sink.pos = gaps.data();
  sink.pos_limit = gaps.data() + 100;
  sink.val = vals.data();
  sink.val_limit = vals.data() + 100;
  EXPECT_FALSE(SparseScan(cur.data(), base.data(), 0, cur.size(), 1, &sink));
  EXPECT_LE(sink.pos, gaps.data() + gaps.size());
}

TEST(CodecStages, PlanesSplitMergeRoundTrip) {
  std::mt19937_64 rng(3);
  for (size_t esize : {1, 2, 4, 8}) {
    for (size_t count : {0, 1, 3, 100, 1001}) {
      std::vector<uint8_t> cur(count * esize), base(count * esize);
      for (auto& b : cur) b = static_cast<uint8_t>(rng());
      for (auto& b : base) b = static_cast<uint8_t>(rng());
      std::vector<uint8_t> planes(cur.size());
      // Split in two ranges, merge in two other ranges.
      SplitPlanes(cur.data(), base.data(), count, esize, 0, count / 3, planes.data());
      SplitPlanes(cur.data(), base.data(), count, esize, count / 3, count, planes.data());
      for (size_t i = 0; i < count; ++i) {
        for (size_t b = 0; b < esize; ++b) {
          ASSERT_EQ(planes[b * count + i], cur[i * esize + b] ^ base[i * esize + b]);
        }
      }
      std::vector<uint8_t> out = base;
      MergePlanesXor(planes.data(), count, esize, 0, count / 2, out.data());
      MergePlanesXor(planes.data(), count, esize, count / 2, count, out.data());
      EXPECT_EQ(out, cur);
      MergePlanesXor(planes.data(), count, esize, 0, count, out.data());  // involution
      EXPECT_EQ(out, base);
    }
  }
}

// The kernels take 16 elements at a time where they can and the rest byte by byte: every
// range, aligned or not, shorter or longer than 16, gives what the definitions say, and
// touches no element outside it.
TEST(CodecStages, PlanesKernelsKeepToTheirRangeAtEveryOffset) {
  std::mt19937_64 rng(5);
  for (size_t esize : {1, 2, 4, 8}) {
    const size_t count = 70;
    std::vector<uint8_t> cur(count * esize), base(count * esize), planes_in(count * esize);
    for (auto& b : cur) b = static_cast<uint8_t>(rng());
    for (auto& b : base) b = static_cast<uint8_t>(rng());
    for (auto& b : planes_in) b = static_cast<uint8_t>(rng());
    for (size_t first = 0; first <= 20; ++first) {
      for (size_t len : {0, 1, 15, 16, 17, 33, 48}) {
        const size_t last = std::min(count, first + len);
        for (const uint8_t* with :
             {static_cast<const uint8_t*>(base.data()), static_cast<const uint8_t*>(nullptr)}) {
          std::vector<uint8_t> planes(count * esize, 0xA5);
          SplitPlanes(cur.data(), with, count, esize, first, last, planes.data());
          for (size_t i = 0; i < count; ++i) {
            for (size_t b = 0; b < esize; ++b) {
              const uint8_t want = (i < first || i >= last) ? uint8_t{0xA5}
                                   : with != nullptr ? cur[i * esize + b] ^ base[i * esize + b]
                                                     : cur[i * esize + b];
              ASSERT_EQ(planes[b * count + i], want)
                  << "esize " << esize << " [" << first << ", " << last << ") element " << i;
            }
          }
        }
        std::vector<uint8_t> stored = base, xored = base;
        MergePlanes(planes_in.data(), count, esize, first, last, stored.data());
        MergePlanesXor(planes_in.data(), count, esize, first, last, xored.data());
        for (size_t i = 0; i < count; ++i) {
          for (size_t b = 0; b < esize; ++b) {
            const size_t at = i * esize + b;
            const bool in = i >= first && i < last;
            const uint8_t plane = planes_in[b * count + i];
            ASSERT_EQ(stored[at], in ? plane : base[at])
                << "esize " << esize << " [" << first << ", " << last << ") element " << i;
            ASSERT_EQ(xored[at], in ? static_cast<uint8_t>(base[at] ^ plane) : base[at])
                << "esize " << esize << " [" << first << ", " << last << ") element " << i;
          }
        }
      }
    }
  }
}

// The same for the kDiff kernels, against ZigzagDelta and ApplyZigzag element by element;
// lanes whose delta is negative, zero and the most negative value included.
TEST(CodecStages, DiffPlanesKernelsKeepToTheirRangeAtEveryOffset) {
  std::mt19937_64 rng(9);
  for (size_t esize : {1, 2, 4, 8}) {
    const size_t count = 70;
    std::vector<uint8_t> cur(count * esize), base(count * esize);
    for (auto& b : cur) b = static_cast<uint8_t>(rng());
    for (auto& b : base) b = static_cast<uint8_t>(rng());
    std::copy_n(base.begin() + 3 * esize, esize, cur.begin() + 3 * esize);  // delta 0
    for (size_t b = 0; b < esize; ++b) {  // cur - base = the most negative value
      cur[5 * esize + b] = b + 1 == esize ? 0x80 : 0;
      base[5 * esize + b] = 0;
    }
    const auto element = [&](const std::vector<uint8_t>& v, size_t i) {
      uint64_t x = 0;
      std::memcpy(&x, v.data() + i * esize, esize);
      return x;
    };
    for (size_t first = 0; first <= 20; ++first) {
      for (size_t len : {0, 1, 15, 16, 17, 33, 48}) {
        const size_t last = std::min(count, first + len);
        std::vector<uint8_t> planes(count * esize, 0xA5);
        SplitPlanesDiff(cur.data(), base.data(), count, esize, first, last, planes.data());
        std::vector<uint8_t> applied = base, undone = cur;
        MergePlanesDiff(planes.data(), count, esize, first, last, /*undo=*/false, applied.data());
        MergePlanesDiff(planes.data(), count, esize, first, last, /*undo=*/true, undone.data());
        for (size_t i = 0; i < count; ++i) {
          const bool in = i >= first && i < last;
          const uint64_t c = element(cur, i), o = element(base, i);
          const uint64_t z = esize == 1   ? ZigzagDelta<1>(c, o)
                             : esize == 2 ? ZigzagDelta<2>(c, o)
                             : esize == 4 ? ZigzagDelta<4>(c, o)
                                          : ZigzagDelta<8>(c, o);
          for (size_t b = 0; b < esize; ++b) {
            ASSERT_EQ(planes[b * count + i], in ? static_cast<uint8_t>(z >> (8 * b)) : 0xA5)
                << "esize " << esize << " [" << first << ", " << last << ") element " << i;
          }
          ASSERT_EQ(element(applied, i), in ? element(cur, i) : element(base, i))
              << "esize " << esize << " [" << first << ", " << last << ") element " << i;
          ASSERT_EQ(element(undone, i), in ? element(base, i) : element(cur, i))
              << "esize " << esize << " [" << first << ", " << last << ") element " << i;
        }
      }
    }
  }
}

TEST(CodecStages, GatherPlanesGivesTheBytesOfTheSplitPlanes) {
  std::mt19937_64 rng(11);
  for (size_t esize : {size_t{1}, size_t{2}, size_t{4}, size_t{8}}) {
    for (size_t count : {size_t{1}, size_t{7}, size_t{1000}}) {
      std::vector<uint8_t> cur(count * esize);
      for (auto& b : cur) b = static_cast<uint8_t>(rng());
      std::vector<uint8_t> planes(cur.size());
      SplitPlanes(cur.data(), nullptr, count, esize, 0, count, planes.data());
      // Every window, across plane boundaries too, at every start for the small sizes.
      for (size_t at = 0; at < planes.size(); at += count < 100 ? 1 : 37) {
        for (size_t len : {size_t{1}, count + 3, planes.size()}) {
          if (at + len > planes.size()) continue;
          std::vector<uint8_t> out(len);
          GatherPlanes(cur.data(), count, esize, at, len, out.data());
          ASSERT_TRUE(std::equal(out.begin(), out.end(), planes.begin() + at))
              << "esize " << esize << " count " << count << " at " << at << " len " << len;
        }
      }
    }
  }
}

TEST(CodecStages, SparseBodyParseApply) {
  // count 3 of 10 bf16 elements at positions 0, 4, 9; plane-major values.
  std::vector<uint8_t> body = {3, 3, 0, 3, 4, /*plane 0*/ 1, 2, 3, /*plane 1*/ 0x10, 0x20, 0x30};
  SparseBody sb;
  ASSERT_TRUE(ParseSparseBody(body.data(), body.size(), 10, 2, true, &sb).ok());
  ASSERT_TRUE(ValidateSparseGaps(sb, 10).ok());
  EXPECT_FALSE(ValidateSparseGaps(sb, 9).ok());  // position 9 does not exist in 9 elements
  std::vector<uint8_t> out(20, 0);
  SparseApplier applier(sb, 2);
  applier.ApplyUntil(4, out.data());  // only position 0
  EXPECT_EQ(out[0], 1);
  EXPECT_EQ(out[8], 0);
  applier.ApplyUntil(10, out.data());
  EXPECT_EQ(out[1], 0x10);
  EXPECT_EQ(out[8], 2);
  EXPECT_EQ(out[9], 0x20);
  EXPECT_EQ(out[18], 3);
  EXPECT_EQ(out[19], 0x30);
  EXPECT_FALSE(ParseSparseBody(body.data(), body.size() - 1, 10, 2, true, &sb).ok());
  EXPECT_FALSE(ParseSparseBody(body.data(), body.size(), 2, 2, true, &sb).ok());
}

// XINUSE (XGETBV with ECX = 1): which parts of the vector state are not in their initial
// state. Bit 2: the upper halves of the YMM registers; bit 6: the upper halves of ZMM0-15.
// None where the CPU cannot report it.
std::optional<uint64_t> VectorStateInUse() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0 || (c & bit_OSXSAVE) == 0) return std::nullopt;
  if (__get_cpuid_count(0xd, 1, &a, &b, &c, &d) == 0 || (a & (1u << 2)) == 0) return std::nullopt;
  uint32_t lo = 0, hi = 0;
  asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(1u));
  return (uint64_t{hi} << 32) | lo;
#else
  return std::nullopt;
#endif
}

// libxxhash's dispatched AVX2 / AVX-512 code returns with the upper vector state dirty, which
// slows every legacy SSE instruction after it (the sparse scan ran at 57% speed): the hash
// wrappers must leave it clean, whatever unit the dispatch picked.
TEST(CodecStages, HashesLeaveTheUpperVectorStateClean) {
  if (!VectorStateInUse()) GTEST_SKIP() << "this CPU does not report XINUSE";
  constexpr uint64_t kUpper = (1u << 2) | (1u << 6);
  std::vector<uint8_t> data(64 << 10);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 131 + 7);
  // One-shot (the long-input path is the vector one), streaming, and the digest.
  const uint64_t one_shot = HashBytes(data);
  const uint64_t after_one_shot = *VectorStateInUse();
  StreamHash h;
  h.Update(data.data(), data.size());
  const uint64_t after_update = *VectorStateInUse();
  const uint64_t streamed = h.Digest();
  const uint64_t after_digest = *VectorStateInUse();
  EXPECT_EQ(after_one_shot & kUpper, 0u) << "XINUSE " << std::hex << after_one_shot;
  EXPECT_EQ(after_update & kUpper, 0u) << "XINUSE " << std::hex << after_update;
  EXPECT_EQ(after_digest & kUpper, 0u) << "XINUSE " << std::hex << after_digest;
  EXPECT_EQ(one_shot, streamed);
}

}  // namespace
}  // namespace easysync::codec::internal
