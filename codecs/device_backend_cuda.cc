// The CUDA DeltaBackend: cuda/ kernels on the caller's stream, device memory.
#include <algorithm>
#include <mutex>
#include <unordered_set>

#include "easysync/device_codec.h"

#if EASYSYNC_HAVE_CUDA
#include <cuda_runtime.h>

#include "compact.h"
#include "cuda_check.h"
#include "xor_diff.h"
#include "xxh3_blocks.h"
#endif

namespace easysync::codec {

#if EASYSYNC_HAVE_CUDA
namespace {

class CudaDeltaBackend final : public DeltaBackend {
 public:
  explicit CudaDeltaBackend(void* stream) : stream_(static_cast<cudaStream_t>(stream)) {}
  ~CudaDeltaBackend() override {
    if (sums_ != nullptr) cudaFree(sums_);
  }
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
  // The kernel into device memory of the backend's own, then the sums to the host.
  Status Xxh3BlockSums(const uint8_t* data, size_t blocks, const uint64_t* secret,
                       uint64_t* host_sums) override {
    const size_t bytes = blocks * cuda::kXxh3Lanes * sizeof(uint64_t);
    if (bytes == 0) return Status::Ok();
    std::lock_guard<std::mutex> lock(sums_mu_);
    if (sums_bytes_ < bytes) {
      if (sums_ != nullptr) cudaFree(sums_);
      sums_ = nullptr;
      sums_bytes_ = 0;
      EASYSYNC_CUDA_CHECK(cudaMalloc(&sums_, bytes));
      sums_bytes_ = bytes;
    }
    EASYSYNC_RETURN_IF_ERROR(
        cuda::Xxh3BlockSumsDevice(data, blocks, secret, static_cast<uint64_t*>(sums_), stream_));
    return ToHost(host_sums, sums_, bytes);
  }
  bool device_memory() const override { return true; }
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
  // Page-locked; where the system refuses to lock that much, pageable (slower copies, same
  // bytes).
  Result<uint8_t*> AllocateHost(size_t bytes) override {
    void* p = nullptr;
    if (cudaHostAlloc(&p, std::max<size_t>(bytes, 1), cudaHostAllocDefault) == cudaSuccess) {
      return static_cast<uint8_t*>(p);
    }
    (void)cudaGetLastError();  // not sticky, but not left for the next check to report
    EASYSYNC_ASSIGN_OR_RETURN(uint8_t * q, DeltaBackend::AllocateHost(bytes));
    std::lock_guard<std::mutex> lock(mu_);
    pageable_.insert(q);
    return q;
  }
  void FreeHost(uint8_t* p) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (pageable_.erase(p) != 0) return DeltaBackend::FreeHost(p);
    }
    cudaFreeHost(p);
  }

 private:
  cudaStream_t stream_;
  std::mutex mu_;
  std::unordered_set<uint8_t*> pageable_;
  std::mutex sums_mu_;
  void* sums_ = nullptr;  // Xxh3BlockSums' device buffer
  size_t sums_bytes_ = 0;
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
