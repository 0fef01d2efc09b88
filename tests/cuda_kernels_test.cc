// Host twins of the cuda/ kernels against naive references and the codec's own stage functions;
// round trips over edge sizes and densities; argument checks; the no-CUDA / no-device path.
// The device-vs-host comparisons are in cuda_kernels_device_test.cc.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "codecs/kernels.h"
#include "cuda_test_util.h"
#include "kernels.h"

namespace easysync::cuda {
namespace {

using testing::BaseAndCur;
using testing::MakeBaseAndCur;

TEST(XorDiffHost, MatchesNaiveOverEdgeSizes) {
  for (size_t n : testing::kEdgeSizes) {
    for (size_t block : testing::kBlockSizes) {
      const BaseAndCur d = MakeBaseAndCur(n, 0.01, static_cast<uint32_t>(n * 31 + block));
      std::vector<uint8_t> out(n), changed(NumBlocks(n, block), 0xee);
      XorDiffHost(d.cur.data(), d.base.data(), n, block, out.data(), changed.data());
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], d.cur[i] ^ d.base[i]) << n << " " << i;
      const auto ref = testing::NaiveCompact(d.cur, d.base, block);
      std::vector<uint8_t> ref_changed(NumBlocks(n, block), 0);
      for (uint32_t id : ref.ids) ref_changed[id] = 1;
      ASSERT_EQ(changed, ref_changed) << "n=" << n << " block=" << block;
    }
  }
}

TEST(CompactHost, MatchesNaiveAndRoundTripsOverSizesAndDensities) {
  for (size_t n : testing::kEdgeSizes) {
    for (size_t block : testing::kBlockSizes) {
      for (double density : testing::kDensities) {
        SCOPED_TRACE(::testing::Message() << "n=" << n << " block=" << block << " d=" << density);
        const BaseAndCur d = MakeBaseAndCur(n, density, static_cast<uint32_t>(n + block));
        const size_t blocks = NumBlocks(n, block);
        std::vector<uint8_t> xor_bytes(n), changed(blocks);
        XorDiffHost(d.cur.data(), d.base.data(), n, block, xor_bytes.data(), changed.data());
        std::vector<uint32_t> ids(blocks);
        std::vector<uint8_t> bytes(n);
        const size_t count = CompactChangedBlocksHost(xor_bytes.data(), n, block, changed.data(),
                                                      ids.data(), bytes.data());
        const auto ref = testing::NaiveCompact(d.cur, d.base, block);
        ASSERT_EQ(count, ref.ids.size());
        ids.resize(count);
        EXPECT_EQ(ids, ref.ids);
        const size_t used = CompactedBytes(count, count ? ids.back() : 0, n, block);
        ASSERT_EQ(used, ref.bytes.size());
        bytes.resize(used);
        EXPECT_EQ(bytes, ref.bytes);
        if (density == 0.0) {
          EXPECT_EQ(count, 0u);
        }
        if (density == 1.0) {
          EXPECT_EQ(count, blocks);
        }

        std::vector<uint8_t> applied = d.base;
        ASSERT_TRUE(
            ApplyCompactedBlocksHost(ids.data(), bytes.data(), count, n, block, applied.data())
                .ok());
        ASSERT_EQ(applied, d.cur);
        // XOR is an involution: the same blocks again give the base back.
        ASSERT_TRUE(
            ApplyCompactedBlocksHost(ids.data(), bytes.data(), count, n, block, applied.data())
                .ok());
        ASSERT_EQ(applied, d.base);
      }
    }
  }
}

TEST(CompactHost, NonZeroFlagsCountAsChanged) {
  // The change map is a set of flags: any non-zero byte selects (as cub::DeviceSelect does).
  const std::vector<uint8_t> xor_bytes = {1, 2, 3, 4, 5, 6, 7};
  const std::vector<uint8_t> changed = {0, 0xff, 2};  // blocks of 3: [0,3) [3,6) [6,7)
  std::vector<uint32_t> ids(3);
  std::vector<uint8_t> bytes(7);
  ASSERT_EQ(
      CompactChangedBlocksHost(xor_bytes.data(), 7, 3, changed.data(), ids.data(), bytes.data()),
      2u);
  EXPECT_EQ(ids[0], 1u);
  EXPECT_EQ(ids[1], 2u);
  EXPECT_EQ(CompactedBytes(2, 2, 7, 3), 4u);
  bytes.resize(4);
  EXPECT_EQ(bytes, (std::vector<uint8_t>{4, 5, 6, 7}));
}

TEST(CompactHost, SizesOfBlocks) {
  EXPECT_EQ(BlockSize(0, 10, 4), 4u);
  EXPECT_EQ(BlockSize(2, 10, 4), 2u);
  EXPECT_EQ(BlockSize(0, 1, 4096), 1u);
  EXPECT_EQ(CompactedBytes(0, 0, 10, 4), 0u);
  EXPECT_EQ(CompactedBytes(3, 2, 10, 4), 10u);
  EXPECT_EQ(CompactedBytes(1, 1, 10, 4), 4u);
}

TEST(ApplyHost, RejectsBadIdsAndWritesNothing) {
  const size_t n = 10, block = 4;  // 3 blocks
  std::vector<uint8_t> base(n, 0x11);
  const std::vector<uint8_t> bytes(3 * block, 0xff);
  struct Case {
    std::vector<uint32_t> ids;
  };
  const Case bad[] = {{{3}}, {{0, 0}}, {{1, 0}}, {{0, 1, 2, 2}}, {{0, 7}}};
  for (const Case& c : bad) {
    const Status s =
        ApplyCompactedBlocksHost(c.ids.data(), bytes.data(), c.ids.size(), n, block, base.data());
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.message();
    EXPECT_EQ(base, std::vector<uint8_t>(n, 0x11));
  }
  const uint32_t one = 0;
  EXPECT_EQ(ValidateBlockIds(&one, 1, n, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateBlockIds(nullptr, 0, n, block).ok());
  EXPECT_TRUE(ValidateBlockIds(&one, 1, 1, 4096).ok());
}

TEST(BytePlanesHost, LayoutIsLittleEndianBytePlanes) {
  // Two uint32 elements 0x04030201 and 0x08070605: plane 0 holds the low bytes.
  const std::vector<uint8_t> elements = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<uint8_t> planes(8);
  SplitPlanesHost(elements.data(), 2, 4, planes.data());
  EXPECT_EQ(planes, (std::vector<uint8_t>{1, 5, 2, 6, 3, 7, 4, 8}));
}

TEST(BytePlanesHost, MatchesNaiveAndTheCodecStageAndRoundTrips) {
  for (size_t esize : {1, 2, 4, 8}) {
    for (size_t count : {size_t{0}, size_t{1}, size_t{3}, size_t{64}, size_t{1001}}) {
      SCOPED_TRACE(::testing::Message() << "esize=" << esize << " count=" << count);
      const size_t n = count * esize;
      const auto elements = testing::RandomBytes(n, static_cast<uint32_t>(n + esize));
      std::vector<uint8_t> planes(n), codec_planes(n);
      SplitPlanesHost(elements.data(), count, esize, planes.data());
      EXPECT_EQ(planes, testing::NaiveSplit(elements, esize));
      codec::internal::SplitPlanes(elements.data(), nullptr, count, esize, 0, count,
                                   codec_planes.data());
      EXPECT_EQ(planes, codec_planes);

      std::vector<uint8_t> merged(n, 0xab);
      MergePlanesHost(planes.data(), count, esize, merged.data(), PlaneMerge::kOverwrite);
      EXPECT_EQ(merged, elements);

      // XOR mode is the codec's dense apply: base ^ planes(cur ^ base) = cur.
      const auto base = testing::RandomBytes(n, static_cast<uint32_t>(7 * n + 1));
      std::vector<uint8_t> delta(n);
      for (size_t i = 0; i < n; ++i) delta[i] = elements[i] ^ base[i];
      std::vector<uint8_t> delta_planes(n);
      SplitPlanesHost(delta.data(), count, esize, delta_planes.data());
      std::vector<uint8_t> ours = base, codecs = base;
      MergePlanesHost(delta_planes.data(), count, esize, ours.data(), PlaneMerge::kXorInto);
      codec::internal::MergePlanesXor(delta_planes.data(), count, esize, 0, count, codecs.data());
      EXPECT_EQ(ours, elements);
      EXPECT_EQ(ours, codecs);
    }
  }
}

// ----- argument checks and the path without CUDA or without a device -----

TEST(DeviceEntryPoints, RejectBadArgumentsBeforeTouchingTheDevice) {
#if EASYSYNC_HAVE_CUDA
  constexpr StatusCode kExpected = StatusCode::kInvalidArgument;
#else
  constexpr StatusCode kExpected = StatusCode::kUnavailable;  // the stubs say why, first
#endif
  uint8_t byte = 0;
  uint32_t word = 0;
  EXPECT_EQ(XorDiffDevice(&byte, &byte, 1, 0, &byte, &byte, nullptr).code(), kExpected);
  EXPECT_EQ(CompactTempBytes(1, 0).status().code(), kExpected);
  EXPECT_EQ(
      CompactChangedBlocksDevice(&byte, 1, 0, &byte, &word, &byte, &word, &byte, 1, nullptr).code(),
      kExpected);
  EXPECT_EQ(CompactChangedBlocksDevice(&byte, 1, 1, &byte, &word, &byte, nullptr, &byte, 1, nullptr)
                .code(),
            kExpected);
  EXPECT_EQ(ApplyCompactedBlocksDevice(&word, &byte, 1, 1, 0, &byte, nullptr).code(), kExpected);
  EXPECT_EQ(ApplyCompactedBlocksDevice(&word, &byte, 2, 1, 1, &byte, nullptr).code(), kExpected);
  EXPECT_EQ(SplitPlanesDevice(&byte, 1, 3, &byte, nullptr).code(), kExpected);
  EXPECT_EQ(MergePlanesDevice(&byte, 1, 16, &byte, PlaneMerge::kOverwrite, nullptr).code(),
            kExpected);
  EXPECT_EQ(SplitPlanesDevice(nullptr, 1, 4, nullptr, nullptr).code(), kExpected);
}

TEST(DeviceEntryPoints, ReportUnavailableWithoutADevice) {
  if (DeviceAvailable()) GTEST_SKIP() << "a device is present: the device tests cover it";
  // Valid arguments; with no device (or no CUDA in the build) nothing can run, and the answer
  // says so rather than Internal. (Host pointers: nothing is ever dereferenced.)
  std::vector<uint8_t> buf(64);
  std::vector<uint32_t> ids(64);
  uint8_t* p = buf.data();
  const auto expect_unavailable = [](const Status& s) {
    EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.message();
  };
  expect_unavailable(XorDiffDevice(p, p, 64, 16, p, p, nullptr));
  expect_unavailable(CompactTempBytes(64, 16).status());
  expect_unavailable(
      CompactChangedBlocksDevice(p, 64, 16, p, ids.data(), p, ids.data(), p, 64, nullptr));
  expect_unavailable(ApplyCompactedBlocksDevice(ids.data(), p, 1, 64, 16, p, nullptr));
  expect_unavailable(SplitPlanesDevice(p, 16, 4, p, nullptr));
  expect_unavailable(MergePlanesDevice(p, 16, 4, p, PlaneMerge::kXorInto, nullptr));
}

TEST(DeviceEntryPoints, EmptyInputsNeedNoDevice) {
#if EASYSYNC_HAVE_CUDA
  // Nothing to do is done without a CUDA call, device or not.
  EXPECT_TRUE(XorDiffDevice(nullptr, nullptr, 0, 64, nullptr, nullptr, nullptr).ok());
  EXPECT_EQ(CompactTempBytes(0, 64).value(), 0u);
  EXPECT_TRUE(ApplyCompactedBlocksDevice(nullptr, nullptr, 0, 0, 64, nullptr, nullptr).ok());
  EXPECT_TRUE(SplitPlanesDevice(nullptr, 0, 4, nullptr, nullptr).ok());
  EXPECT_TRUE(MergePlanesDevice(nullptr, 0, 8, nullptr, PlaneMerge::kOverwrite, nullptr).ok());
#else
  GTEST_SKIP() << "no CUDA in this build: every device entry point is Unavailable";
#endif
}

}  // namespace
}  // namespace easysync::cuda
