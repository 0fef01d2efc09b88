// Network mode with a tensor in GPU memory: the delta is computed on the device and only the
// changed blocks cross PCIe; the receiver gets the value bit-exact. Skipped without a device
// (the same path runs on the kernels' host twins in net_sync_test's NetDevice test).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "easysync/easysync.h"
#include "easysync/net.h"
#include "kernels.h"
#include "net_test_util.h"

#if EASYSYNC_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace easysync {
namespace {

using std::chrono::milliseconds;
using testing::HubProcess;
using testing::WaitFor;

struct Model : SyncedObject {
  Synced<Tensor> w{this, "w"};
  explicit Model(Client& c) : SyncedObject(c, "DeviceModel") {}
};

TEST(NetDeviceCuda, GpuTensorCrossesTheHubAsADelta) {
  if (!cuda::DeviceAvailable()) GTEST_SKIP() << "no CUDA device here";
#if EASYSYNC_HAVE_CUDA
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  NetOptions o;
  o.port = hub.port();
  o.token = testing::kTestToken;
  auto ca = connect(o);
  auto cb = connect(o);
  Model a(*ca), b(*cb);
  constexpr size_t kN = size_t{16} << 20;  // 64 MiB of float32
  Tensor host(DType::kFloat32, {static_cast<int64_t>(kN)});
  for (size_t i = 0; i < kN; ++i) host.mutable_data_as<float>()[i] = static_cast<float>(i % 977);
  void* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, kN * 4), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dev, host.data(), kN * 4, cudaMemcpyHostToDevice), cudaSuccess);
  const std::vector<int64_t> shape = {static_cast<int64_t>(kN)};
  TensorView view{DType::kFloat32, shape, DeviceType::kCUDA, 0, dev, nullptr};
  ASSERT_TRUE(ca->WriteTensor(a.w.attr(), view).ok());
  ASSERT_TRUE(WaitFor([&] { return b.w.get() == host; }, std::chrono::seconds(60)));
  // Change 0.1% of the elements on the device.
  for (size_t i = 0; i < kN; i += 1000) {
    host.mutable_data_as<float>()[i] = -1;
    ASSERT_EQ(cudaMemcpy(static_cast<float*>(dev) + i, host.data_as<float>() + i, 4,
                         cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  const Stats before = ca->stats();
  ASSERT_TRUE(ca->WriteTensor(a.w.attr(), view).ok());
  const Stats after = ca->stats();
  EXPECT_EQ(after.deltas_sent, before.deltas_sent + 1);
  EXPECT_LT(after.bytes_sent - before.bytes_sent, kN * 4 / 20);
  ASSERT_TRUE(WaitFor([&] { return b.w.get() == host; }, std::chrono::seconds(60)));
  cudaFree(dev);
  EXPECT_EQ(hub.Stop(), 0);
#endif
}

}  // namespace
}  // namespace easysync
