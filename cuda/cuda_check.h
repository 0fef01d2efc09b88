// One check macro per CUDA error source: a failure becomes an easysync::Status with file:line.
// No device or no usable driver is Unavailable (the caller runs the host twins instead); any
// other CUDA error is Internal.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "easysync/status.h"

namespace easysync::cuda::detail {

inline Status CudaErrorStatus(cudaError_t err, const char* file, int line, const char* expr) {
  std::string msg =
      std::string(file) + ":" + std::to_string(line) + ": " + expr + ": " + cudaGetErrorString(err);
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver ||
      err == cudaErrorStubLibrary) {
    return Status::Unavailable(std::move(msg));
  }
  return Status::Internal(std::move(msg));
}

}  // namespace easysync::cuda::detail

#define EASYSYNC_CUDA_CHECK(expr)                                                           \
  do {                                                                                      \
    cudaError_t _es_err = (expr);                                                           \
    if (_es_err != cudaSuccess) {                                                           \
      return ::easysync::cuda::detail::CudaErrorStatus(_es_err, __FILE__, __LINE__, #expr); \
    }                                                                                       \
  } while (0)

// After every kernel launch: catches bad launch configurations at once.
#define EASYSYNC_CUDA_LAUNCH_CHECK() EASYSYNC_CUDA_CHECK(cudaGetLastError())
