// Serializing the frame header (layout in frame_format.h, spec in docs/wire_format.md).
#pragma once

#include <cstdint>

#include "easysync/codec.h"

namespace easysync::codec::internal {

// Writes the 64-byte header for `info` (frame_size and tensor_bytes are derived, not read),
// including the header check. REQUIRES: 64 writable bytes at out.
void WriteHeader(const FrameInfo& info, uint8_t* out);

// element_count * esize, or false when it overflows size_t.
inline bool TensorSize(uint64_t element_count, size_t esize, size_t* bytes) {
  if (esize == 0) return false;
  if (element_count > SIZE_MAX / esize) return false;
  *bytes = static_cast<size_t>(element_count) * esize;
  return true;
}

}  // namespace easysync::codec::internal
