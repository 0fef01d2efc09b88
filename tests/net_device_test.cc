// Network mode with a tensor in GPU memory: the delta is computed on the device and only the
// changed blocks cross PCIe; the receiver gets the value bit-exact. Skipped without a device
// (the same path runs on the kernels' host twins in net_sync_test's NetDevice test).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "easysync/easysync.h"
#include "easysync/net.h"
#include "kernels.h"
#include "net/net_client.h"
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

#if EASYSYNC_HAVE_CUDA
NetOptions Options(const HubProcess& hub) {
  NetOptions o;
  o.port = hub.port();
  o.token = testing::kTestToken;
  return o;
}
#endif

TEST(NetDeviceCuda, GpuTensorCrossesTheHubAsADelta) {
  if (!cuda::DeviceAvailable()) GTEST_SKIP() << "no CUDA device here";
#if EASYSYNC_HAVE_CUDA
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  NetOptions o = Options(hub);
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

TEST(NetDeviceCuda, AWholeGpuValueGoesFromDeviceMemoryWhereUcxMovesIt) {
  // Where UCX moves CUDA memory (a UCX built with CUDA, e.g. PyPI's libucx-cu13), a whole value
  // of a GPU tensor in segments is hashed on the device and UCX reads its bytes from there:
  // raw frames (every byte crosses, even of a compressible tensor), bit-exact at the reader
  // and in the writer's replica, and deltas after it.
  if (!cuda::DeviceAvailable()) GTEST_SKIP() << "no CUDA device here";
#if EASYSYNC_HAVE_CUDA
  HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  NetOptions o = Options(hub);
  o.device_direct = NetOptions::DeviceDirect::kAlways;  // no RDMA lane on loopback
  auto ca = connect(o);
  auto cb = connect(o);
  if (!net::UcxMovesCudaMemory(*ca)) {
    GTEST_SKIP() << "this UCX does not move CUDA memory (\"CUDA memory no\")";
  }
  Model a(*ca), b(*cb);
  // 48 MiB of float32 and 100 bytes: three segments that go by rendezvous, and a short one.
  constexpr size_t kN = (size_t{12} << 20) + 25;
  Tensor host(DType::kFloat32, {static_cast<int64_t>(kN)});
  for (size_t i = 0; i < kN; ++i) host.mutable_data_as<float>()[i] = static_cast<float>(i % 977);
  b.w = host;  // the hub holds a value of this shape: whole values go in segments
  ASSERT_TRUE(WaitFor([&] { return a.w.get() == host; }, std::chrono::seconds(60)));
  for (size_t i = 0; i < kN; i += 3) host.mutable_data_as<float>()[i] += 1;
  void* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, kN * 4), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dev, host.data(), kN * 4, cudaMemcpyHostToDevice), cudaSuccess);
  const std::vector<int64_t> shape = {static_cast<int64_t>(kN)};
  TensorView view{DType::kFloat32, shape, DeviceType::kCUDA, 0, dev, nullptr};
  Stats before = ca->stats();
  auto v = ca->WriteTensor(a.w.attr(), view);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  Stats after = ca->stats();
  EXPECT_EQ(after.full_sent, before.full_sent + 1);
  EXPECT_GE(after.packets_sent, before.packets_sent + 4);
  EXPECT_GE(after.bytes_sent - before.bytes_sent, kN * 4);  // raw
  EXPECT_LT(after.bytes_sent - before.bytes_sent, kN * 4 + 4096);
  ASSERT_TRUE(WaitFor([&] { return b.w.get() == host; }, std::chrono::seconds(60)));
  EXPECT_TRUE(a.w.get() == host);
  // A delta on top of it, from the device encoder's base.
  for (size_t i = 0; i < kN; i += 1000) host.mutable_data_as<float>()[i] = -1;
  ASSERT_EQ(cudaMemcpy(dev, host.data(), kN * 4, cudaMemcpyHostToDevice), cudaSuccess);
  before = ca->stats();
  ASSERT_TRUE(ca->WriteTensor(a.w.attr(), view).ok());
  after = ca->stats();
  EXPECT_EQ(after.deltas_sent, before.deltas_sent + 1);
  EXPECT_LT(after.bytes_sent - before.bytes_sent, kN * 4 / 20);
  ASSERT_TRUE(WaitFor([&] { return b.w.get() == host; }, std::chrono::seconds(60)));
  cudaFree(dev);
  EXPECT_EQ(hub.Stop(), 0);
#endif
}

}  // namespace
}  // namespace easysync
