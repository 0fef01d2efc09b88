#include "byte_planes.h"

namespace easysync::cuda {
namespace {

template <size_t E>
void SplitT(const uint8_t* elements, size_t count, uint8_t* planes) {
  for (size_t b = 0; b < E; ++b) {
    uint8_t* plane = planes + b * count;
    for (size_t i = 0; i < count; ++i) plane[i] = elements[i * E + b];
  }
}

template <size_t E, PlaneMerge kMode>
void MergeT(const uint8_t* planes, size_t count, uint8_t* out) {
  for (size_t b = 0; b < E; ++b) {
    const uint8_t* plane = planes + b * count;
    for (size_t i = 0; i < count; ++i) {
      if constexpr (kMode == PlaneMerge::kXorInto) {
        out[i * E + b] ^= plane[i];
      } else {
        out[i * E + b] = plane[i];
      }
    }
  }
}

template <size_t E>
void MergeE(const uint8_t* planes, size_t count, uint8_t* out, PlaneMerge mode) {
  if (mode == PlaneMerge::kXorInto) {
    MergeT<E, PlaneMerge::kXorInto>(planes, count, out);
  } else {
    MergeT<E, PlaneMerge::kOverwrite>(planes, count, out);
  }
}

}  // namespace

void SplitPlanesHost(const uint8_t* elements, size_t count, size_t esize, uint8_t* planes) {
  switch (esize) {
    case 1:
      return SplitT<1>(elements, count, planes);
    case 2:
      return SplitT<2>(elements, count, planes);
    case 4:
      return SplitT<4>(elements, count, planes);
    case 8:
      return SplitT<8>(elements, count, planes);
    default:
      return;
  }
}

void MergePlanesHost(const uint8_t* planes, size_t count, size_t esize, uint8_t* out,
                     PlaneMerge mode) {
  switch (esize) {
    case 1:
      return MergeE<1>(planes, count, out, mode);
    case 2:
      return MergeE<2>(planes, count, out, mode);
    case 4:
      return MergeE<4>(planes, count, out, mode);
    case 8:
      return MergeE<8>(planes, count, out, mode);
    default:
      return;
  }
}

}  // namespace easysync::cuda
