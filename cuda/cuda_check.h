// One check macro per CUDA error source: a failure becomes an easysync::Status with file:line.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "easysync/status.h"

#define EASYSYNC_CUDA_CHECK(expr)                                                                  \
  do {                                                                                             \
    cudaError_t _es_err = (expr);                                                                  \
    if (_es_err != cudaSuccess) {                                                                  \
      return ::easysync::Status::Internal(std::string(__FILE__) + ":" + std::to_string(__LINE__) + \
                                          ": " #expr ": " + cudaGetErrorString(_es_err));          \
    }                                                                                              \
  } while (0)

// After every kernel launch: catches bad launch configurations at once.
#define EASYSYNC_CUDA_LAUNCH_CHECK() EASYSYNC_CUDA_CHECK(cudaGetLastError())
