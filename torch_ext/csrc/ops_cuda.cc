// The CUDA kernels of torch.ops.easysync, on at::cuda's current stream. Compiled by the host
// compiler against c10/cuda; the device work is the codec's DeltaBackend (cuda/ kernels).
//
// What crosses PCIe:
//   delta_encode: the whole base to the host (frames carry XXH3-64 hashes of base and result,
//     computed on the host), then 4 bytes of change count, and for a sparse update only the
//     changed block ids and their XOR bytes; the value itself crosses only when more than half
//     of its blocks changed (or when this build has no CUDA kernels: then both tensors).
//   delta_decode / delta_apply_: base to the host, the decoded tensor back (the decoder
//     verifies hashes over the whole base, which needs it on the host anyway).
// The frame is a CPU tensor in and out.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <memory>

#include "easysync/device_codec.h"
#include "ops.h"

namespace easysync::torch_ext {
namespace {

at::Tensor DeltaEncodeCuda(const at::Tensor& base, const at::Tensor& value, int64_t level) {
  const DType dtype = CheckEncodeArgs(base, value, level);
  const c10::cuda::CUDAGuard guard(value.device());
  const at::Tensor cur = value.contiguous();
  const at::Tensor old = base.contiguous();
  auto backend = codec::MakeCudaDeltaBackend(c10::cuda::getCurrentCUDAStream().stream());
  // A build without the kernels: both tensors cross to the host and are encoded there.
  if (!backend.ok()) return EncodeOnHost(dtype, old.cpu(), cur.cpu(), level);
  return EncodeThroughBackend(**backend, dtype, old, cur, level);
}

// The decoded tensor as a contiguous CPU tensor, base unchanged.
at::Tensor DecodeStaged(const at::Tensor& base, const at::Tensor& frame, const char* op) {
  const at::Tensor f = CheckFrame(base, frame, op);
  const at::Tensor host = base.contiguous().cpu();
  DecodeOnHost(f, host, host, op);
  return host;
}

at::Tensor DeltaDecodeCuda(const at::Tensor& base, const at::Tensor& frame) {
  if (!base.is_cuda()) return DeltaDecodeCpu(base, frame);
  const c10::cuda::CUDAGuard guard(base.device());
  return DecodeStaged(base, frame, "easysync::delta_decode").to(base.device());
}

void DeltaApplyCuda(at::Tensor& base, const at::Tensor& frame) {
  if (!base.is_cuda()) return DeltaApplyCpu(base, frame);
  const c10::cuda::CUDAGuard guard(base.device());
  // Nothing is written to base unless the frame verified.
  base.copy_(DecodeStaged(base, frame, "easysync::delta_apply_"));
}

}  // namespace
}  // namespace easysync::torch_ext

TORCH_LIBRARY_IMPL(easysync, CUDA, m) {
  m.impl("delta_encode", &easysync::torch_ext::DeltaEncodeCuda);
  m.impl("delta_decode", &easysync::torch_ext::DeltaDecodeCuda);
  m.impl("delta_apply_", &easysync::torch_ext::DeltaApplyCuda);
}
