// Build without CUDA: the device entry points of compact.h and byte_planes.h exist and say so.
// (xor_diff_nocuda.cc does the same for xor_diff.h.)
#include "byte_planes.h"
#include "compact.h"

namespace easysync::cuda {
namespace {

Status NoCuda() {
  return Status::Unavailable("this EasySync build has no CUDA kernels (EASYSYNC_WITH_CUDA=OFF)");
}

}  // namespace

Result<size_t> CompactTempBytes(size_t, size_t) { return NoCuda(); }

Status CompactChangedBlocksDevice(const uint8_t*, size_t, size_t, const uint8_t*, uint32_t*,
                                  uint8_t*, uint32_t*, void*, size_t, void*) {
  return NoCuda();
}

Status ApplyCompactedBlocksDevice(const uint32_t*, const uint8_t*, size_t, size_t, size_t, uint8_t*,
                                  void*) {
  return NoCuda();
}

Status SplitPlanesDevice(const uint8_t*, size_t, size_t, uint8_t*, void*) { return NoCuda(); }

Status MergePlanesDevice(const uint8_t*, size_t, size_t, uint8_t*, PlaneMerge, void*) {
  return NoCuda();
}

}  // namespace easysync::cuda
