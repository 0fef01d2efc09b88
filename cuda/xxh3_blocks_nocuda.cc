// Build without CUDA: the device entry point of xxh3_blocks.h exists and says so.
#include "xxh3_blocks.h"

namespace easysync::cuda {

Status Xxh3BlockSumsDevice(const uint8_t*, size_t, const uint64_t*, uint64_t*, void*) {
  return Status::Unavailable("this EasySync build has no CUDA kernels (EASYSYNC_WITH_CUDA=OFF)");
}

}  // namespace easysync::cuda
