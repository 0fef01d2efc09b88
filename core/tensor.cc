#include "easysync/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

namespace easysync {

Result<size_t> ShapeNumel(std::span<const int64_t> shape) {
  if (shape.size() > kMaxTensorDims) {
    return Status::InvalidArgument("tensor has " + std::to_string(shape.size()) +
                                   " dimensions; at most " + std::to_string(kMaxTensorDims));
  }
  size_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return Status::InvalidArgument("negative tensor dimension");
    if (__builtin_mul_overflow(n, static_cast<size_t>(d), &n)) {
      return Status::InvalidArgument("tensor element count overflows");
    }
  }
  return n;
}

size_t TensorView::nbytes() const {
  auto n = ShapeNumel(shape);
  return n.ok() ? n.value() * DTypeSize(dtype) : 0;
}

Tensor::Tensor() = default;

Tensor::Tensor(DType dtype, std::vector<int64_t> shape) : dtype_(dtype), shape_(std::move(shape)) {
  if (DTypeSize(dtype) == 0) throw Error(Status::InvalidArgument("invalid dtype"));
  numel_ = ValueOrThrow(ShapeNumel(shape_));
  size_t bytes;
  if (__builtin_mul_overflow(numel_, DTypeSize(dtype), &bytes)) {
    throw Error(Status::InvalidArgument("tensor byte size overflows"));
  }
  Allocate();
  if (bytes > 0) std::memset(data_, 0, bytes);
}

void Tensor::Allocate() {
  const size_t bytes = nbytes();
  if (bytes == 0) {
    storage_.reset();
    data_ = nullptr;
    return;
  }
  // 64-byte alignment: whole cache lines for memcpy and SIMD, like the segment's buffers.
  const size_t rounded = (bytes + 63) & ~size_t{63};
  void* p = std::aligned_alloc(64, rounded);
  if (p == nullptr) throw std::bad_alloc();
  storage_.reset(static_cast<std::byte*>(p), [](std::byte* q) { std::free(q); });
  data_ = storage_.get();
}

Tensor Tensor::FromData(DType dtype, std::vector<int64_t> shape, const void* data) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  if (DTypeSize(dtype) == 0) throw Error(Status::InvalidArgument("invalid dtype"));
  t.numel_ = ValueOrThrow(ShapeNumel(t.shape_));
  t.Allocate();
  if (t.nbytes() > 0) std::memcpy(t.data_, data, t.nbytes());
  return t;
}

Result<Tensor> Tensor::Borrow(DType dtype, std::vector<int64_t> shape,
                              std::shared_ptr<const void> owner, const std::byte* data) {
  if (DTypeSize(dtype) == 0) return Status::InvalidArgument("invalid dtype");
  EASYSYNC_ASSIGN_OR_RETURN(size_t numel, ShapeNumel(shape));
  if (reinterpret_cast<uintptr_t>(data) % 64 != 0) {
    return Status::InvalidArgument("Tensor::Borrow: data is not 64-byte aligned");
  }
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.numel_ = numel;
  if (t.nbytes() > 0) {
    // Shares the owner's reference count: use_count() > 1 while anyone else holds the
    // owner, which is what copy on write looks at. The cast is that discipline's to keep.
    t.storage_ = std::shared_ptr<std::byte>(std::const_pointer_cast<void>(std::move(owner)),
                                            const_cast<std::byte*>(data));
    t.data_ = t.storage_.get();
  }
  return t;
}

std::byte* Tensor::mutable_data() {
  if (!unique()) {
    std::shared_ptr<std::byte> old = storage_;
    Allocate();
    std::memcpy(data_, old.get(), nbytes());
  }
  return data_;
}

TensorView Tensor::view() const {
  TensorView v;
  v.dtype = dtype_;
  v.shape = shape_;
  v.data = data_;
  return v;
}

bool operator==(const Tensor& a, const Tensor& b) {
  if (a.dtype_ != b.dtype_ || a.shape_ != b.shape_) return false;
  return a.nbytes() == 0 || std::memcmp(a.data_, b.data_, a.nbytes()) == 0;
}

}  // namespace easysync
