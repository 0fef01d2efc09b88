// The XOR-diff kernel's host twin, and the device path where a GPU exists.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "xor_diff.h"

#if EASYSYNC_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace easysync::cuda {
namespace {

TEST(XorDiffHost, XorAndChangeMapPerBlock) {
  std::vector<uint8_t> base(1000, 7), cur = base;
  cur[0] ^= 1;       // block 0
  cur[999] ^= 0x80;  // last, partial block
  std::vector<uint8_t> out(1000), changed(NumBlocks(1000, 256));
  XorDiffHost(cur.data(), base.data(), 1000, 256, out.data(), changed.data());
  EXPECT_EQ(changed, (std::vector<uint8_t>{1, 0, 0, 1}));
  EXPECT_EQ(out[0], 1);
  EXPECT_EQ(out[999], 0x80);
  EXPECT_EQ(out[500], 0);
}

TEST(XorDiffHost, EmptyInput) {
  XorDiffHost(nullptr, nullptr, 0, 64, nullptr, nullptr);
  EXPECT_EQ(NumBlocks(0, 64), 0u);
}

TEST(XorDiffDevice, MatchesHostTwinBitForBit) {
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device here: the host twin is what runs";
#if EASYSYNC_HAVE_CUDA
  const size_t n = (1 << 20) + 13, block = 4096;
  std::mt19937 rng(1);
  std::vector<uint8_t> base(n), cur(n);
  for (auto& b : base) b = static_cast<uint8_t>(rng());
  cur = base;
  for (int i = 0; i < 100; ++i) cur[rng() % n] ^= static_cast<uint8_t>(1 + rng() % 255);
  std::vector<uint8_t> out_h(n), changed_h(NumBlocks(n, block));
  XorDiffHost(cur.data(), base.data(), n, block, out_h.data(), changed_h.data());
  uint8_t *d_cur, *d_base, *d_out, *d_changed;
  ASSERT_EQ(cudaMalloc(&d_cur, n), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_base, n), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_out, n), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_changed, changed_h.size()), cudaSuccess);
  cudaMemcpy(d_cur, cur.data(), n, cudaMemcpyHostToDevice);
  cudaMemcpy(d_base, base.data(), n, cudaMemcpyHostToDevice);
  ASSERT_TRUE(XorDiffDevice(d_cur, d_base, n, block, d_out, d_changed, nullptr).ok());
  std::vector<uint8_t> out_d(n), changed_d(changed_h.size());
  cudaMemcpy(out_d.data(), d_out, n, cudaMemcpyDeviceToHost);
  cudaMemcpy(changed_d.data(), d_changed, changed_d.size(), cudaMemcpyDeviceToHost);
  EXPECT_EQ(out_d, out_h);
  EXPECT_EQ(changed_d, changed_h);
  cudaFree(d_cur);
  cudaFree(d_base);
  cudaFree(d_out);
  cudaFree(d_changed);
#endif
}

}  // namespace
}  // namespace easysync::cuda
