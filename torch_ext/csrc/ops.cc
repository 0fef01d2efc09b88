// torch.ops.easysync: the tensor delta codec (docs/wire_format.md) as torch operators, and the
// one TORCH_LIBRARY block of the extension (every schema, and the Client class).
//
//   frame = torch.ops.easysync.delta_encode(base, value)   # uint8 CPU tensor, one frame
//   value2 = torch.ops.easysync.delta_decode(base, frame)  # == value, verified by hash
//   torch.ops.easysync.delta_apply_(base, frame)           # base becomes value, or is untouched
//
// This file holds the CPU kernels; ops_cuda.cc the CUDA ones. Fake (meta) kernels are
// registered from Python: easysync/_fake.py.
#include "ops.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/library.h>
#include <zstd.h>

#include <optional>
#include <span>
#include <string>

#include "client_class.h"
#include "easysync/torch.h"

namespace easysync::torch_ext {
namespace {

std::span<const uint8_t> HostBytes(const at::Tensor& t) {
  return {static_cast<const uint8_t*>(t.const_data_ptr()), t.nbytes()};
}

std::string ShapeString(at::IntArrayRef shape) {
  std::string s = "[";
  for (const auto i : c10::irange(shape.size())) {
    if (i != 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

DType CheckedDType(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", name, " must be a dense (strided) tensor");
  const auto dtype = DTypeFromTorch(t.scalar_type());
  TORCH_CHECK(dtype.has_value(), op, ": ", name, " has dtype ", TorchDTypeName(t.scalar_type()),
              ", which the codec does not support; supported: ", SupportedTorchDTypes());
  return *dtype;
}

}  // namespace

DType CheckEncodeArgs(const at::Tensor& base, const at::Tensor& value, int64_t level) {
  constexpr const char* kOp = "easysync::delta_encode";
  const DType dtype = CheckedDType(value, kOp, "value");
  CheckedDType(base, kOp, "base");
  TORCH_CHECK(base.scalar_type() == value.scalar_type(), kOp,
              ": base and value must have the same dtype, got ", TorchDTypeName(base.scalar_type()),
              " and ", TorchDTypeName(value.scalar_type()));
  TORCH_CHECK(base.sizes() == value.sizes(), kOp, ": base and value must have the same shape, got ",
              ShapeString(base.sizes()), " and ", ShapeString(value.sizes()));
  TORCH_CHECK(base.device() == value.device(), kOp,
              ": base and value must be on the same device, got ", base.device(), " and ",
              value.device());
  TORCH_CHECK(level >= ZSTD_minCLevel() && level <= ZSTD_maxCLevel(), kOp,
              ": level must be a zstd level in [", ZSTD_minCLevel(), ", ", ZSTD_maxCLevel(),
              "], got ", level);
  return dtype;
}

at::Tensor CheckFrame(const at::Tensor& base, const at::Tensor& frame, const char* op) {
  const DType dtype = CheckedDType(base, op, "base");
  TORCH_CHECK(frame.defined() && frame.scalar_type() == at::kByte && frame.dim() == 1, op,
              ": frame must be a 1-D uint8 tensor (as delta_encode returns)");
  at::Tensor host = frame.to(at::kCPU).contiguous();
  auto info = codec::PeekFrame(HostBytes(host));
  TORCH_CHECK(info.ok(), op, ": ", info.status().ToString());
  TORCH_CHECK(info->dtype == dtype, op, ": the frame encodes a tensor of ",
              TorchDTypeName(TorchFromDType(info->dtype)), " but base is ",
              TorchDTypeName(base.scalar_type()));
  TORCH_CHECK(info->element_count == static_cast<uint64_t>(base.numel()), op,
              ": the frame encodes ", info->element_count, " elements but base has ", base.numel());
  return host;
}

codec::Encoder& ThreadEncoder(int64_t level) {
  thread_local std::optional<codec::Encoder> encoder;
  if (!encoder || encoder->options().zstd_level != level) {
    codec::EncoderOptions options;
    options.zstd_level = static_cast<int>(level);
    encoder.emplace(options);
  }
  return *encoder;
}

at::Tensor FrameBuffer(DType dtype, size_t count, const char* op) {
  const size_t bound = codec::EncodeBound(dtype, count);
  TORCH_CHECK(bound != 0, op, ": the tensor's byte size overflows");
  // Untouched pages of a large allocation cost nothing: most of a delta's bound never is.
  return at::empty({static_cast<int64_t>(bound)}, at::TensorOptions().dtype(at::kByte));
}

at::Tensor TrimFrame(at::Tensor buffer, size_t size) {
  const auto n = static_cast<int64_t>(size);
  // A frame of at least half the buffer keeps it (one allocation); a small delta is copied
  // out so that the tensor-sized buffer is freed.
  if (2 * n >= buffer.numel()) return buffer.resize_({n});
  return buffer.narrow(0, 0, n).clone();
}

at::Tensor EncodeOnHost(DType dtype, const at::Tensor& base, const at::Tensor& value, int64_t level,
                        const codec::EncodeHints& hints) {
  constexpr const char* kOp = "easysync::delta_encode";
  const auto count = static_cast<size_t>(value.numel());
  const codec::TensorBytes cur{dtype, count, static_cast<const uint8_t*>(value.const_data_ptr())};
  const codec::TensorBytes old{dtype, count, static_cast<const uint8_t*>(base.const_data_ptr())};
  at::Tensor out = FrameBuffer(dtype, count, kOp);
  auto size = ThreadEncoder(level).Encode(
      cur, &old, kFrameBaseVersion, kFrameNewVersion,
      {static_cast<uint8_t*>(out.mutable_data_ptr()), static_cast<size_t>(out.numel())}, hints);
  TORCH_CHECK(size.ok(), kOp, ": ", size.status().ToString());
  return TrimFrame(std::move(out), *size);
}

void DecodeOnHost(const at::Tensor& frame, const at::Tensor& base, const at::Tensor& out,
                  const char* op) {
  thread_local codec::Decoder decoder;
  const Status s =
      decoder.Decode(HostBytes(frame), static_cast<const uint8_t*>(base.const_data_ptr()),
                     base.nbytes(), {static_cast<uint8_t*>(out.mutable_data_ptr()), out.nbytes()});
  TORCH_CHECK(s.ok(), op, ": ", s.ToString());
}

at::Tensor DeltaEncodeCpu(const at::Tensor& base, const at::Tensor& value, int64_t level) {
  const DType dtype = CheckEncodeArgs(base, value, level);
  return EncodeOnHost(dtype, base.contiguous(), value.contiguous(), level);
}

at::Tensor DeltaDecodeCpu(const at::Tensor& base, const at::Tensor& frame) {
  constexpr const char* kOp = "easysync::delta_decode";
  const at::Tensor f = CheckFrame(base, frame, kOp);
  const at::Tensor b = base.contiguous();
  at::Tensor out = at::empty(base.sizes(), base.options());
  DecodeOnHost(f, b, out, kOp);
  return out;
}

void DeltaApplyCpu(at::Tensor& base, const at::Tensor& frame) {
  constexpr const char* kOp = "easysync::delta_apply_";
  const at::Tensor f = CheckFrame(base, frame, kOp);
  if (base.is_contiguous()) {
    DecodeOnHost(f, base, base, kOp);  // the decoder restores base when the frame fails
    return;
  }
  at::Tensor work = base.contiguous();
  DecodeOnHost(f, work, work, kOp);
  base.copy_(work);
}

}  // namespace easysync::torch_ext

TORCH_LIBRARY(easysync, m) {
  m.def("delta_encode(Tensor base, Tensor value, int level=3) -> Tensor");
  m.def("delta_decode(Tensor base, Tensor frame) -> Tensor");
  m.def("delta_apply_(Tensor(a!) base, Tensor frame) -> ()");
  easysync::torch_ext::RegisterClientClass(m);
}

TORCH_LIBRARY_IMPL(easysync, CPU, m) {
  m.impl("delta_encode", &easysync::torch_ext::DeltaEncodeCpu);
  m.impl("delta_decode", &easysync::torch_ext::DeltaDecodeCpu);
  m.impl("delta_apply_", &easysync::torch_ext::DeltaApplyCpu);
}
