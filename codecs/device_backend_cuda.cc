// The CUDA DeltaBackend: cuda/ kernels on the caller's stream, device memory.
#include <algorithm>

#include "easysync/device_codec.h"

#if EASYSYNC_HAVE_CUDA
#include <cuda_runtime.h>

#include "compact.h"
#include "cuda_check.h"
#include "xor_diff.h"
#endif

namespace easysync::codec {

#if EASYSYNC_HAVE_CUDA
namespace {

class CudaDeltaBackend final : public DeltaBackend {
 public:
  explicit CudaDeltaBackend(void* stream) : stream_(static_cast<cudaStream_t>(stream)) {}
  const char* name() const override { return "cuda"; }
  Result<uint8_t*> Allocate(size_t bytes) override {
    void* p = nullptr;
    EASYSYNC_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(bytes, 1)));
    return static_cast<uint8_t*>(p);
  }
  void Free(uint8_t* p) override { cudaFree(p); }
  Status XorDiff(const uint8_t* cur, const uint8_t* base, size_t n, size_t block_bytes,
                 uint8_t* xor_out, uint8_t* changed) override {
    return cuda::XorDiffDevice(cur, base, n, block_bytes, xor_out, changed, stream_);
  }
  Result<size_t> CompactTempBytes(size_t n, size_t block_bytes) override {
    return cuda::CompactTempBytes(n, block_bytes);
  }
  Status Compact(const uint8_t* xor_bytes, size_t n, size_t block_bytes, const uint8_t* changed,
                 uint32_t* ids, uint8_t* out, uint32_t* count, uint8_t* temp,
                 size_t temp_bytes) override {
    return cuda::CompactChangedBlocksDevice(xor_bytes, n, block_bytes, changed, ids, out, count,
                                            temp, temp_bytes, stream_);
  }
  Status ToHost(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return Status::Ok();
    EASYSYNC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    EASYSYNC_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return Status::Ok();
  }
  Status Copy(uint8_t* dst, const uint8_t* src, size_t bytes) override {
    if (bytes == 0) return Status::Ok();
    EASYSYNC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
    return Status::Ok();
  }

 private:
  cudaStream_t stream_;
};

}  // namespace

Result<std::unique_ptr<DeltaBackend>> MakeCudaDeltaBackend(void* stream) {
  if (!cuda::DeviceAvailable()) return Status::Unavailable("no CUDA device on this machine");
  return std::unique_ptr<DeltaBackend>(std::make_unique<CudaDeltaBackend>(stream));
}
#else
Result<std::unique_ptr<DeltaBackend>> MakeCudaDeltaBackend(void*) {
  return Status::Unavailable("this EasySync build has no CUDA kernels (EASYSYNC_WITH_CUDA=OFF)");
}
#endif

}  // namespace easysync::codec
