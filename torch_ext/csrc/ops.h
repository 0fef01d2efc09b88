// What the CPU and CUDA kernels of torch.ops.easysync share (private to libeasysync_torch).
//
// The ops are stateless: a frame names base version kFrameBaseVersion and new version
// kFrameNewVersion (the codec carries them but only its hashes decide whether a frame fits a
// base), so any frame from delta_encode(base, value) applies to a tensor equal to base.
// Errors are c10::Error (TORCH_CHECK) whose message starts with the op's name.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>

#include "easysync/codec.h"
#include "easysync/device_codec.h"
#include "easysync/dtype.h"

namespace easysync::torch_ext {

inline constexpr uint64_t kFrameBaseVersion = 1;
inline constexpr uint64_t kFrameNewVersion = 2;

// Checks delta_encode's arguments (defined, same dtype, shape and device, a codec dtype, a
// zstd level) and returns their dtype.
DType CheckEncodeArgs(const at::Tensor& base, const at::Tensor& value, int64_t level);

// Checks that `frame` is a 1-D uint8 tensor whose header is valid and describes a tensor of
// base's dtype and element count; returns the frame as a contiguous CPU tensor.
at::Tensor CheckFrame(const at::Tensor& base, const at::Tensor& frame, const char* op);

// This thread's encoder, set to zstd `level`: reused so that steady-state encoding allocates
// only its output.
codec::Encoder& ThreadEncoder(int64_t level);

// A frame buffer of EncodeBound bytes for dtype x count, to encode into and then Trim.
at::Tensor FrameBuffer(DType dtype, size_t count, const char* op);
// The first `size` bytes of a FrameBuffer, without holding on to much more memory than that.
at::Tensor TrimFrame(at::Tensor buffer, size_t size);

// delta_encode on host memory. REQUIRES: base and value are contiguous CPU tensors that
// passed CheckEncodeArgs.
at::Tensor EncodeOnHost(DType dtype, const at::Tensor& base, const at::Tensor& value, int64_t level,
                        const codec::EncodeHints& hints = {});

// delta_encode through a DeltaBackend's XorDiff and Compact, on the memory it works on: the
// CUDA backend on device tensors (on the current stream, which must be the backend's), the
// host backend on CPU tensors (how tests run this path without a GPU). Only the base, the
// changed blocks and their ids come to the host, unless most blocks changed.
// REQUIRES: base and value are contiguous, on the backend's device, and passed
// CheckEncodeArgs.
at::Tensor EncodeThroughBackend(codec::DeltaBackend& backend, DType dtype, const at::Tensor& base,
                                const at::Tensor& value, int64_t level);

// Decodes `frame` (from CheckFrame) against `base` into `out` (a tensor of base's size; may be
// base itself: then base is left unchanged on error). REQUIRES: all three are contiguous CPU
// tensors.
void DecodeOnHost(const at::Tensor& frame, const at::Tensor& base, const at::Tensor& out,
                  const char* op);

// The CPU kernels. The CUDA kernels hand over to the decoding ones when only the frame is on a
// GPU (the dispatcher picks CUDA for any CUDA argument).
at::Tensor DeltaEncodeCpu(const at::Tensor& base, const at::Tensor& value, int64_t level);
at::Tensor DeltaDecodeCpu(const at::Tensor& base, const at::Tensor& frame);
void DeltaApplyCpu(at::Tensor& base, const at::Tensor& frame);

}  // namespace easysync::torch_ext
