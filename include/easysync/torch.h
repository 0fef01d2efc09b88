// torch::Tensor as a tensor attribute (header-only; needs libtorch).
//
//   struct Model : easysync::SyncedObject {
//     easysync::Synced<torch::Tensor> weights{this, "weights"};
//     easysync::Synced<int64_t> step{this, "step"};
//     explicit Model(easysync::Client& c) : SyncedObject(c, "Model") {}
//   };
//
// A torch tensor travels with kind kTensor in the same bytes as easysync::Tensor and the
// Eigen types (row-major, see value_traits.h), so any of them can read what another wrote.
// Writing copies to the host: a non-contiguous tensor is made contiguous, a CUDA tensor is
// copied (for GPU writes that move only the changed blocks, see Client::WriteTensor). Reading
// gives a contiguous CPU tensor; before the first write, get() gives an undefined tensor.
//
// torch tensors are references, not values: after w.set(t), w.get() returns t itself until
// a newer version arrives, so changing t in place changes what this process reads but
// publishes nothing (call set again). A decoded value is written into the cached tensor only
// while nobody else holds it or a view of it.
//
// The dtypes are those of easysync/dtype.h; writing any other (complex, uint16, ...) throws
// easysync::Error with a TypeMismatch. Every dtype a value can carry has a torch dtype, so
// reading never fails that way.
#pragma once

#include <torch/types.h>

#include <atomic>
#include <cstring>
#include <optional>
#include <string>

#include "easysync/value_traits.h"

namespace easysync {

// The one mapping between torch's scalar types and the codec's dtypes.
constexpr std::optional<DType> DTypeFromTorch(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kDouble:
      return DType::kFloat64;
    case at::kFloat8_e4m3fn:
      return DType::kFloat8E4M3;
    case at::kFloat8_e5m2:
      return DType::kFloat8E5M2;
    case at::kChar:
      return DType::kInt8;
    case at::kShort:
      return DType::kInt16;
    case at::kInt:
      return DType::kInt32;
    case at::kLong:
      return DType::kInt64;
    case at::kByte:
      return DType::kUInt8;
    case at::kBool:
      return DType::kBool;
    default:
      return std::nullopt;
  }
}

constexpr at::ScalarType TorchFromDType(DType t) {
  switch (t) {
    case DType::kFloat32:
      return at::kFloat;
    case DType::kFloat16:
      return at::kHalf;
    case DType::kBFloat16:
      return at::kBFloat16;
    case DType::kFloat64:
      return at::kDouble;
    case DType::kFloat8E4M3:
      return at::kFloat8_e4m3fn;
    case DType::kFloat8E5M2:
      return at::kFloat8_e5m2;
    case DType::kInt8:
      return at::kChar;
    case DType::kInt16:
      return at::kShort;
    case DType::kInt32:
      return at::kInt;
    case DType::kInt64:
      return at::kLong;
    case DType::kUInt8:
      return at::kByte;
    case DType::kBool:
      return at::kBool;
  }
  return at::ScalarType::Undefined;
}

// A dtype as Python spells it (torch.<name>): "float32", "float8_e4m3fn", "complex64".
inline std::string TorchDTypeName(at::ScalarType t) {
  return std::string(c10::getDtypeNames(t).first);
}

// "float32, float16, ...": the torch dtypes that have an EasySync dtype, for error messages.
inline std::string SupportedTorchDTypes() {
  std::string names;
  for (DType d : kAllDTypes) {
    if (!names.empty()) names += ", ";
    names += TorchDTypeName(TorchFromDType(d));
  }
  return names;
}

// The codec dtype of t, or a TypeMismatch that names what is supported.
inline Result<DType> TorchTensorDType(const at::Tensor& t) {
  if (!t.defined()) return Status::InvalidArgument("the tensor is undefined");
  if (t.layout() != at::kStrided) {
    return Status::TypeMismatch("only strided (dense) torch tensors can be synced");
  }
  if (const auto d = DTypeFromTorch(t.scalar_type())) return *d;
  return Status::TypeMismatch("torch dtype " + TorchDTypeName(t.scalar_type()) +
                              " has no EasySync dtype; supported: " + SupportedTorchDTypes());
}

template <>
struct ValueTraits<at::Tensor> {
  static constexpr ValueKind kKind = ValueKind::kTensor;

  // Throws easysync::Error (TypeMismatch, InvalidArgument) for a tensor that cannot travel.
  template <class F>
  static auto WithEncoding(const at::Tensor& t, F&& f) {
    const DType dtype = ValueOrThrow(TorchTensorDType(t));
    if (static_cast<size_t>(t.dim()) > kMaxTensorDims) {
      throw Error(Status::InvalidArgument("a tensor attribute has at most " +
                                          std::to_string(kMaxTensorDims) + " dims, this has " +
                                          std::to_string(t.dim())));
    }
    // Materializes views with the conjugate/negative bits and strided layouts as plain bytes.
    const at::Tensor host = t.to(at::kCPU).contiguous().resolve_conj().resolve_neg();
    const size_t bytes = host.nbytes();
    const auto sizes = host.sizes();
    return f(detail::EncodedTensorSize(dtype, bytes), [&](std::byte* dst) {
      detail::EncodeTensorHeader(dtype, {sizes.data(), sizes.size()}, dst);
      if (bytes != 0) std::memcpy(dst + detail::kTensorHeaderBytes, host.const_data_ptr(), bytes);
    });
  }

  // Reuses out's storage when no other tensor shares it and it has the same dtype and shape,
  // so a reader that keeps no references decodes without allocating; a tensor handed out
  // earlier (Synced::get returns one that shares the cache) is never written. Only memory
  // torch allocated itself (resizable storage) is reused: from_blob memory may have another
  // owner, such as a NumPy array.
  static Status Decode(ByteSpan in, at::Tensor* out) {
    detail::TensorBytes tb;
    EASYSYNC_RETURN_IF_ERROR(detail::ParseTensor(in, &tb));
    const at::ScalarType type = TorchFromDType(tb.dtype);
    const at::IntArrayRef shape(tb.shape, tb.ndim);
    const bool reuse =
        out->defined() && out->use_count() == 1 && out->is_cpu() && !out->requires_grad() &&
        out->is_contiguous() && out->storage_offset() == 0 && out->storage().use_count() == 1 &&
        out->storage().resizable() && out->scalar_type() == type && out->sizes() == shape;
    if (!reuse) {
      *out = at::empty(shape, at::TensorOptions().dtype(type));
    } else {
      // use_count() is a relaxed load: this orders the reads of a holder on another thread
      // that dropped its reference before the write (see easysync/sole_owner.h).
      std::atomic_thread_fence(std::memory_order_acquire);
    }
    if (!tb.data.empty()) std::memcpy(out->mutable_data_ptr(), tb.data.data(), tb.data.size());
    return Status::Ok();
  }
};

}  // namespace easysync
