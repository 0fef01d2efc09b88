// CPU tensors as EasySync values, and the view type that crosses core/.
//
// core/ never depends on libtorch: a torch::Tensor or an Eigen array becomes a Tensor (an
// owned, 64-byte-aligned CPU buffer with a dtype and a row-major shape) or a TensorView
// (non-owning: dtype, shape, device, pointer, stream).
//
// Tensor has value semantics with shared storage: copies are cheap and share bytes, and
// mutable_data() copies first when the storage is shared (copy on write), so a tensor
// handed out by a Synced<Tensor> never changes under its holder.
// Thread-safety: a const Tensor may be read from many threads; mutation needs one owner.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <vector>

#include "easysync/dtype.h"
#include "easysync/sole_owner.h"
#include "easysync/status.h"

namespace easysync {

inline constexpr size_t kMaxTensorDims = 8;

enum class DeviceType : uint8_t { kCPU = 0, kCUDA = 1 };

struct TensorView {
  DType dtype = DType::kFloat32;
  std::span<const int64_t> shape;
  DeviceType device = DeviceType::kCPU;
  int device_index = 0;
  const void* data = nullptr;
  void* stream = nullptr;  // cudaStream_t for CUDA tensors
  size_t nbytes() const;
};

class Tensor {
 public:
  // An empty float32 tensor of shape {0}.
  Tensor();
  // A zero-filled tensor. Throws easysync::Error on a negative dimension or too many dims.
  Tensor(DType dtype, std::vector<int64_t> shape);
  // A tensor holding a copy of `data` (nbytes of dtype x shape).
  static Tensor FromData(DType dtype, std::vector<int64_t> shape, const void* data);
  // A tensor over `data` (nbytes of dtype x shape, 64-byte aligned), which `owner` keeps
  // alive, without a copy. The bytes must not change while the owner is shared: the tensor
  // shares it, so mutable_data() copies them first (copy on write) unless the tensor is
  // the owner's last holder. InvalidArgument if data is not 64-byte aligned.
  static Result<Tensor> Borrow(DType dtype, std::vector<int64_t> shape,
                               std::shared_ptr<const void> owner, const std::byte* data);

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  size_t numel() const { return numel_; }
  size_t nbytes() const { return numel_ * DTypeSize(dtype_); }

  const std::byte* data() const { return data_; }
  // Unshares the storage first if another Tensor shares it.
  std::byte* mutable_data();
  template <class T>
  const T* data_as() const {
    return reinterpret_cast<const T*>(data_);
  }
  template <class T>
  T* mutable_data_as() {
    return reinterpret_cast<T*>(mutable_data());
  }

  TensorView view() const;
  // True when no other Tensor shares this storage.
  bool unique() const { return !storage_ || detail::SoleOwner(storage_); }

  // Same dtype, shape and bytes.
  friend bool operator==(const Tensor& a, const Tensor& b);

 private:
  void Allocate();
  DType dtype_ = DType::kFloat32;
  std::vector<int64_t> shape_{0};
  size_t numel_ = 0;
  std::shared_ptr<std::byte> storage_;
  std::byte* data_ = nullptr;
};

// Element count of a shape, or an error on a negative dimension or an overflow.
Result<size_t> ShapeNumel(std::span<const int64_t> shape);

}  // namespace easysync
