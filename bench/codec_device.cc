// The device side of the codec suite (--device cuda): the XOR diff + change map kernel against a
// device-to-device copy of the same size, timed with CUDA events on one stream in the same run,
// and the compaction of the changed blocks (what would cross PCIe).
//
// GB/s here are tensor bytes per second, as on the host: the diff reads cur and base and writes
// the XOR (3 bytes of traffic per tensor byte), the copy reads and writes once (2 per byte).
//
// Builds without CUDA (EASYSYNC_HAVE_CUDA unset): then CudaDeviceUsable() says so.
#include <string>
#include <vector>

#include "codec_bench.h"
#include "stats_util.h"
#include "xor_diff.h"

#if EASYSYNC_HAVE_CUDA
#include <cuda_runtime.h>

#include <cstring>

#include "compact.h"
#endif

namespace easysync::bench {

bool CudaDeviceUsable(std::string* why) {
#if EASYSYNC_HAVE_CUDA
  if (cuda::DeviceAvailable()) return true;
  *why = "the CUDA runtime finds no usable device";
#else
  *why = "this build has no CUDA kernels (configured with EASYSYNC_WITH_CUDA=OFF)";
#endif
  return false;
}

#if EASYSYNC_HAVE_CUDA
namespace {

// Device memory freed on scope exit.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  cudaError_t Allocate(size_t bytes) { return cudaMalloc(&p_, bytes == 0 ? 1 : bytes); }
  template <class T>
  T* As() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

// Owns a stream and two events; the destructor releases whatever was created.
struct StreamAndEvents {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  ~StreamAndEvents() {
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

bool Ok(cudaError_t err, const char* what, std::string* error) {
  if (err == cudaSuccess) return true;
  *error = std::string(what) + ": " + cudaGetErrorString(err);
  return false;
}

bool Ok(const Status& s, const char* what, std::string* error) {
  if (s.ok()) return true;
  *error = std::string(what) + ": " + s.ToString();
  return false;
}

}  // namespace

bool MeasureDevicePair(const TensorPair& pair, const Reps& reps, size_t block_bytes, Record* out,
                       std::string* error) {
  const size_t n = pair.cur.size();
  const size_t blocks = cuda::NumBlocks(n, block_bytes);
  if (blocks > cuda::kMaxBlocks) {
    *error = "too many blocks for the compaction: raise --block-bytes";
    return false;
  }
  Result<size_t> temp_bytes = cuda::CompactTempBytes(n, block_bytes);
  if (!Ok(temp_bytes.status(), "CompactTempBytes", error)) return false;

  DeviceBuffer cur, base, xor_bytes, changed, copy, ids, compacted, count, temp;
  if (!Ok(cur.Allocate(n), "cudaMalloc", error) || !Ok(base.Allocate(n), "cudaMalloc", error) ||
      !Ok(xor_bytes.Allocate(n), "cudaMalloc", error) ||
      !Ok(changed.Allocate(blocks), "cudaMalloc", error) ||
      !Ok(copy.Allocate(n), "cudaMalloc", error) ||
      !Ok(ids.Allocate(blocks * sizeof(uint32_t)), "cudaMalloc", error) ||
      !Ok(compacted.Allocate(n), "cudaMalloc", error) ||
      !Ok(count.Allocate(sizeof(uint32_t)), "cudaMalloc", error) ||
      !Ok(temp.Allocate(*temp_bytes), "cudaMalloc", error)) {
    return false;
  }
  StreamAndEvents se;
  if (!Ok(cudaStreamCreate(&se.stream), "cudaStreamCreate", error) ||
      !Ok(cudaEventCreate(&se.start), "cudaEventCreate", error) ||
      !Ok(cudaEventCreate(&se.stop), "cudaEventCreate", error) ||
      !Ok(cudaMemcpy(cur.As<void>(), pair.cur.data(), n, cudaMemcpyHostToDevice), "upload",
          error) ||
      !Ok(cudaMemcpy(base.As<void>(), pair.base.data(), n, cudaMemcpyHostToDevice), "upload",
          error)) {
    return false;
  }

  // Median milliseconds of launch() between two events on the stream.
  auto time_ms = [&](auto&& launch, const char* what, double* median_ms) {
    std::vector<double> ms;
    for (int i = 0; i < reps.warmup + reps.timed; ++i) {
      if (!Ok(cudaEventRecord(se.start, se.stream), "cudaEventRecord", error) ||
          !Ok(launch(), what, error) ||
          !Ok(cudaEventRecord(se.stop, se.stream), "cudaEventRecord", error) ||
          !Ok(cudaEventSynchronize(se.stop), what, error)) {
        return false;
      }
      float elapsed = 0;
      if (!Ok(cudaEventElapsedTime(&elapsed, se.start, se.stop), "cudaEventElapsedTime", error)) {
        return false;
      }
      if (i >= reps.warmup) ms.push_back(elapsed);
    }
    *median_ms = Median(std::move(ms));
    return true;
  };
  double diff_ms = 0;
  double copy_ms = 0;
  if (!time_ms(
          [&] {
            return cuda::XorDiffDevice(cur.As<uint8_t>(), base.As<uint8_t>(), n, block_bytes,
                                       xor_bytes.As<uint8_t>(), changed.As<uint8_t>(), se.stream);
          },
          "XorDiffDevice", &diff_ms) ||
      !time_ms(
          [&] {
            return cudaMemcpyAsync(copy.As<void>(), cur.As<void>(), n, cudaMemcpyDeviceToDevice,
                                   se.stream);
          },
          "cudaMemcpyAsync D2D", &copy_ms)) {
    return false;
  }

  // Compaction of the last diff's changed blocks (timed), checked against the host's count.
  double compact_ms = 0;
  if (!time_ms(
          [&] {
            return cuda::CompactChangedBlocksDevice(xor_bytes.As<uint8_t>(), n, block_bytes,
                                                    changed.As<uint8_t>(), ids.As<uint32_t>(),
                                                    compacted.As<uint8_t>(), count.As<uint32_t>(),
                                                    temp.As<void>(), *temp_bytes, se.stream);
          },
          "CompactChangedBlocksDevice", &compact_ms)) {
    return false;
  }
  uint32_t changed_blocks = 0;
  uint32_t last_id = 0;
  if (!Ok(cuda::CompactChangedBlocksDevice(xor_bytes.As<uint8_t>(), n, block_bytes,
                                           changed.As<uint8_t>(), ids.As<uint32_t>(),
                                           compacted.As<uint8_t>(), count.As<uint32_t>(),
                                           temp.As<void>(), *temp_bytes, se.stream),
          "CompactChangedBlocksDevice", error) ||
      !Ok(cudaStreamSynchronize(se.stream), "CompactChangedBlocksDevice", error) ||
      !Ok(cudaMemcpy(&changed_blocks, count.As<void>(), sizeof(uint32_t), cudaMemcpyDeviceToHost),
          "download", error)) {
    return false;
  }
  if (changed_blocks != 0 && !Ok(cudaMemcpy(&last_id, ids.As<uint32_t>() + (changed_blocks - 1),
                                            sizeof(uint32_t), cudaMemcpyDeviceToHost),
                                 "download", error)) {
    return false;
  }
  size_t host_changed = 0;
  for (size_t b = 0; b < blocks; ++b) {
    const size_t len = cuda::BlockSize(b, n, block_bytes);
    const size_t off = b * block_bytes;
    host_changed += std::memcmp(&pair.cur[off], &pair.base[off], len) != 0 ? 1 : 0;
  }
  if (host_changed != changed_blocks) {
    *error = "the device found " + std::to_string(changed_blocks) + " changed blocks, the host " +
             std::to_string(host_changed);
    return false;
  }
  const size_t compacted_bytes = cuda::CompactedBytes(changed_blocks, last_id, n, block_bytes);

  cudaDeviceProp prop{};
  int device = 0;
  if (!Ok(cudaGetDevice(&device), "cudaGetDevice", error) ||
      !Ok(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties", error)) {
    return false;
  }
  auto gbps = [&](double ms) { return ms > 0 ? static_cast<double>(n) / (ms * 1e6) : 0.0; };
  // Bandwidth counts what each moves through device memory: the copy reads and writes the
  // tensor once; the diff reads two tensors, writes their XOR and the change map (and zeroes
  // the map first).
  const double copy_traffic = 2.0 * static_cast<double>(n);
  const double diff_traffic = 3.0 * static_cast<double>(n) + 2.0 * static_cast<double>(blocks);
  auto traffic_gbps = [](double bytes, double ms) { return ms > 0 ? bytes / (ms * 1e6) : 0.0; };
  out->Add("device", std::string(prop.name))
      .Add("raw_bytes", static_cast<int64_t>(n))
      .Add("block_bytes", static_cast<int64_t>(block_bytes))
      .Add("diff_gbps", gbps(diff_ms))
      .Add("d2d_copy_gbps", gbps(copy_ms))
      .Add("diff_vs_copy", copy_ms > 0 && diff_ms > 0 ? copy_ms / diff_ms : 0.0)
      .Add("diff_bandwidth_gbps", traffic_gbps(diff_traffic, diff_ms))
      .Add("copy_bandwidth_gbps", traffic_gbps(copy_traffic, copy_ms))
      .Add("diff_vs_copy_bandwidth",
           copy_ms > 0 && diff_ms > 0
               ? traffic_gbps(diff_traffic, diff_ms) / traffic_gbps(copy_traffic, copy_ms)
               : 0.0)
      .Add("compact_ms", compact_ms)
      .Add("diff_ms", diff_ms)
      .Add("changed_blocks", static_cast<int64_t>(changed_blocks))
      .Add("compacted_bytes", static_cast<int64_t>(compacted_bytes))
      .Add("compacted_fraction",
           n == 0 ? 0.0 : static_cast<double>(compacted_bytes) / static_cast<double>(n));
  return true;
}

#else  // !EASYSYNC_HAVE_CUDA

bool MeasureDevicePair(const TensorPair&, const Reps&, size_t, Record*, std::string* error) {
  *error = "this build has no CUDA kernels (configured with EASYSYNC_WITH_CUDA=OFF)";
  return false;
}

#endif

}  // namespace easysync::bench
