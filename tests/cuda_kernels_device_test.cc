// The cuda/ kernels against their host twins, bit for bit, where a GPU exists (skipped
// otherwise: the host twins are what runs there, tested in cuda_kernels_test.cc).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "cuda_test_util.h"
#include "kernels.h"

#if EASYSYNC_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace easysync::cuda {
namespace {

#define EASYSYNC_SKIP_WITHOUT_DEVICE() \
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device here: the host twins are what runs"

#if EASYSYNC_HAVE_CUDA

// Device memory for a test. `offset` shifts the data off cudaMalloc's 256-byte alignment to
// exercise the kernels' unaligned paths.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes, size_t offset = 0) : offset_(offset) {
    EXPECT_EQ(cudaMalloc(&raw_, bytes + offset + 1), cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(raw_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <class T = uint8_t>
  T* get() const {
    return reinterpret_cast<T*>(static_cast<uint8_t*>(raw_) + offset_);
  }
  template <class T>
  void Upload(const std::vector<T>& v) {
    ASSERT_EQ(cudaMemcpy(get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
    // From pageable memory cudaMemcpy may return before the DMA lands, and the kernels run on a
    // non-blocking stream that does not wait for the legacy one.
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  template <class T>
  std::vector<T> Download(size_t count) const {
    std::vector<T> v(count);
    EXPECT_EQ(cudaMemcpy(v.data(), get(), count * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }

 private:
  void* raw_ = nullptr;
  size_t offset_;
};

// A non-default stream, so that every test also checks that the work runs on the caller's.
class Stream {
 public:
  Stream() { EXPECT_EQ(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), cudaSuccess); }
  ~Stream() { cudaStreamDestroy(s_); }
  void* get() const { return s_; }
  void Sync() const { ASSERT_EQ(cudaStreamSynchronize(s_), cudaSuccess); }

 private:
  cudaStream_t s_ = nullptr;
};

constexpr size_t kDeviceSizes[] = {0, 1, 15, 16, 17, 4095, 4096, 4097, (1 << 20) + 13};
// 48 and 256: 16-byte words, blocks of 3 and 16 words (a warp's 32 lanes straddle blocks).
constexpr size_t kDeviceBlocks[] = {1, 3, 16, 48, 256, 4096};
constexpr size_t kOffsets[] = {0, 1};

TEST(CudaKernelsDevice, XorDiffMatchesHostTwin) {
  EASYSYNC_SKIP_WITHOUT_DEVICE();
  Stream stream;
  for (size_t n : kDeviceSizes) {
    for (size_t block : kDeviceBlocks) {
      for (size_t off : kOffsets) {
        SCOPED_TRACE(::testing::Message() << "n=" << n << " block=" << block << " off=" << off);
        const auto d = testing::MakeBaseAndCur(n, 0.01, static_cast<uint32_t>(n ^ block));
        const size_t blocks = NumBlocks(n, block);
        std::vector<uint8_t> out_h(n), changed_h(blocks);
        XorDiffHost(d.cur.data(), d.base.data(), n, block, out_h.data(), changed_h.data());
        DeviceBuffer cur(n, off), base(n, off), out(n, off), changed(blocks);
        cur.Upload(d.cur);
        base.Upload(d.base);
        ASSERT_TRUE(
            XorDiffDevice(cur.get(), base.get(), n, block, out.get(), changed.get(), stream.get())
                .ok());
        stream.Sync();
        EXPECT_EQ(out.Download<uint8_t>(n), out_h);
        EXPECT_EQ(changed.Download<uint8_t>(blocks), changed_h);
      }
    }
  }
}

TEST(CudaKernelsDevice, CompactAndApplyMatchHostTwinsAndRoundTrip) {
  EASYSYNC_SKIP_WITHOUT_DEVICE();
  Stream stream;
  for (size_t n : kDeviceSizes) {
    for (size_t block : kDeviceBlocks) {
      for (double density : testing::kDensities) {
        for (size_t off : kOffsets) {
          SCOPED_TRACE(::testing::Message()
                       << "n=" << n << " block=" << block << " d=" << density << " off=" << off);
          const auto d = testing::MakeBaseAndCur(n, density, static_cast<uint32_t>(n + block));
          const size_t blocks = NumBlocks(n, block);
          // Host twins: the expected bytes.
          std::vector<uint8_t> xor_h(n), changed_h(blocks), bytes_h(n);
          std::vector<uint32_t> ids_h(blocks);
          XorDiffHost(d.cur.data(), d.base.data(), n, block, xor_h.data(), changed_h.data());
          const size_t count_h = CompactChangedBlocksHost(xor_h.data(), n, block, changed_h.data(),
                                                          ids_h.data(), bytes_h.data());
          const size_t used = CompactedBytes(count_h, count_h ? ids_h[count_h - 1] : 0, n, block);
          ids_h.resize(count_h);
          bytes_h.resize(used);

          // Device: diff, compact, apply to the base on the device.
          DeviceBuffer cur(n, off), base(n, off), xor_d(n, off), changed(blocks);
          DeviceBuffer ids(blocks * sizeof(uint32_t)), bytes(n, off), count(sizeof(uint32_t));
          cur.Upload(d.cur);
          base.Upload(d.base);
          auto temp_bytes = CompactTempBytes(n, block);
          ASSERT_TRUE(temp_bytes.ok()) << temp_bytes.status().message();
          DeviceBuffer temp(*temp_bytes);
          ASSERT_TRUE(XorDiffDevice(cur.get(), base.get(), n, block, xor_d.get(), changed.get(),
                                    stream.get())
                          .ok());
          const Status s = CompactChangedBlocksDevice(
              xor_d.get(), n, block, changed.get(), ids.get<uint32_t>(), bytes.get(),
              count.get<uint32_t>(), temp.get(), *temp_bytes, stream.get());
          ASSERT_TRUE(s.ok()) << s.message();
          stream.Sync();
          ASSERT_EQ(count.Download<uint32_t>(1)[0], count_h);
          EXPECT_EQ(ids.Download<uint32_t>(count_h), ids_h);
          EXPECT_EQ(bytes.Download<uint8_t>(used), bytes_h);

          ASSERT_TRUE(ApplyCompactedBlocksDevice(ids.get<uint32_t>(), bytes.get(), count_h, n,
                                                 block, base.get(), stream.get())
                          .ok());
          stream.Sync();
          EXPECT_EQ(base.Download<uint8_t>(n), d.cur);
        }
      }
    }
  }
}

TEST(CudaKernelsDevice, ApplyOfUploadedBlocksMatchesHostTwin) {
  EASYSYNC_SKIP_WITHOUT_DEVICE();
  // The receiver's side: ids and bytes arrive on the host, go to the device, apply there.
  const size_t n = 100000, block = 64;
  const auto d = testing::MakeBaseAndCur(n, 0.001, 5);
  const auto c = testing::NaiveCompact(d.cur, d.base, block);
  ASSERT_TRUE(ValidateBlockIds(c.ids.data(), c.ids.size(), n, block).ok());
  std::vector<uint8_t> host = d.base;
  ASSERT_TRUE(
      ApplyCompactedBlocksHost(c.ids.data(), c.bytes.data(), c.ids.size(), n, block, host.data())
          .ok());
  DeviceBuffer ids(c.ids.size() * sizeof(uint32_t)), bytes(c.bytes.size()), base(n);
  ids.Upload(c.ids);
  bytes.Upload(c.bytes);
  base.Upload(d.base);
  ASSERT_TRUE(ApplyCompactedBlocksDevice(ids.get<uint32_t>(), bytes.get(), c.ids.size(), n, block,
                                         base.get(), nullptr)
                  .ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(base.Download<uint8_t>(n), host);
  EXPECT_EQ(host, d.cur);
}

TEST(CudaKernelsDevice, CompactRejectsTooLittleTemp) {
  EASYSYNC_SKIP_WITHOUT_DEVICE();
  const size_t n = 1 << 16, block = 64;
  auto need = CompactTempBytes(n, block);
  ASSERT_TRUE(need.ok());
  ASSERT_GT(*need, 0u);
  DeviceBuffer xor_bytes(n), changed(n / block), ids(n / block * 4), bytes(n), count(4),
      temp(*need);
  EXPECT_EQ(
      CompactChangedBlocksDevice(xor_bytes.get(), n, block, changed.get(), ids.get<uint32_t>(),
                                 bytes.get(), count.get<uint32_t>(), temp.get(), *need - 1, nullptr)
          .code(),
      StatusCode::kInvalidArgument);
}

TEST(CudaKernelsDevice, BytePlanesMatchHostTwins) {
  EASYSYNC_SKIP_WITHOUT_DEVICE();
  Stream stream;
  for (size_t esize : {1, 2, 4, 8}) {
    for (size_t count : {size_t{1}, size_t{3}, size_t{1001}, size_t{(1 << 18) + 5}}) {
      for (size_t off : kOffsets) {
        SCOPED_TRACE(::testing::Message()
                     << "esize=" << esize << " count=" << count << " off=" << off);
        const size_t n = count * esize;
        const auto elements = testing::RandomBytes(n, static_cast<uint32_t>(n));
        const auto base = testing::RandomBytes(n, static_cast<uint32_t>(n + 1));
        std::vector<uint8_t> planes_h(n);
        SplitPlanesHost(elements.data(), count, esize, planes_h.data());
        std::vector<uint8_t> xored_h = base;
        MergePlanesHost(planes_h.data(), count, esize, xored_h.data(), PlaneMerge::kXorInto);

        DeviceBuffer in(n, off), planes(n, off), out(n, off);
        in.Upload(elements);
        ASSERT_TRUE(SplitPlanesDevice(in.get(), count, esize, planes.get(), stream.get()).ok());
        ASSERT_TRUE(MergePlanesDevice(planes.get(), count, esize, out.get(), PlaneMerge::kOverwrite,
                                      stream.get())
                        .ok());
        stream.Sync();
        EXPECT_EQ(planes.Download<uint8_t>(n), planes_h);
        EXPECT_EQ(out.Download<uint8_t>(n), elements);

        out.Upload(base);
        ASSERT_TRUE(MergePlanesDevice(planes.get(), count, esize, out.get(), PlaneMerge::kXorInto,
                                      stream.get())
                        .ok());
        stream.Sync();
        EXPECT_EQ(out.Download<uint8_t>(n), xored_h);
      }
    }
  }
}

TEST(CudaKernelsDevice, Xxh3BlockSumsMatchHostTwin) {
  EASYSYNC_SKIP_WITHOUT_DEVICE();
  Stream stream;
  uint64_t secret[kXxh3SecretWords];
  for (size_t i = 0; i < kXxh3SecretWords; ++i) secret[i] = 0x9E3779B97F4A7C15ull * (i + 1);
  for (size_t blocks :
       {size_t{1}, size_t{7}, size_t{8}, size_t{33}, size_t{16384}, size_t{70001}}) {
    SCOPED_TRACE(::testing::Message() << "blocks=" << blocks);
    const size_t n = blocks * kXxh3BlockBytes;
    const auto data = testing::RandomBytes(n, static_cast<uint32_t>(blocks));
    std::vector<uint64_t> want(blocks * kXxh3Lanes);
    Xxh3BlockSumsHost(data.data(), blocks, secret, want.data());
    DeviceBuffer in(n), sums(want.size() * sizeof(uint64_t));
    in.Upload(data);
    ASSERT_TRUE(
        Xxh3BlockSumsDevice(in.get(), blocks, secret, sums.get<uint64_t>(), stream.get()).ok());
    stream.Sync();
    EXPECT_EQ(sums.Download<uint64_t>(want.size()), want);
  }
  DeviceBuffer odd(kXxh3BlockBytes, 1), sums(64);
  EXPECT_EQ(Xxh3BlockSumsDevice(odd.get(), 1, secret, sums.get<uint64_t>(), stream.get()).code(),
            StatusCode::kInvalidArgument);
}

#else  // no CUDA in this build

TEST(CudaKernelsDevice, SkippedWithoutCuda) {
  EASYSYNC_SKIP_WITHOUT_DEVICE();
  FAIL() << "DeviceAvailable() is true in a build without CUDA";
}

#endif

}  // namespace
}  // namespace easysync::cuda
