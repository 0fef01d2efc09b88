// Build without CUDA: the device entry points exist and say so.
#include "xor_diff.h"

namespace easysync::cuda {

bool DeviceAvailable() { return false; }

Status XorDiffDevice(const uint8_t*, const uint8_t*, size_t, size_t, uint8_t*, uint8_t*, void*) {
  return Status::Unavailable("this EasySync build has no CUDA kernels (EASYSYNC_WITH_CUDA=OFF)");
}

}  // namespace easysync::cuda
