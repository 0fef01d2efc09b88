// Eigen matrices and arrays as tensor attributes (header-only).
//
//   easysync::Synced<Eigen::MatrixXf> m{this, "m"};
//
// A matrix travels as a row-major 2-D tensor of shape {rows, cols} whatever its storage
// order, so a torch or NumPy reader sees the same matrix. Reading back resizes dynamic
// matrices; a fixed-size matrix accepts only its own shape (TypeMismatch otherwise).
#pragma once

#include <Eigen/Core>

#include <cstring>
#include <type_traits>

#include "easysync/value_traits.h"

namespace easysync {
namespace detail {

template <class S>
constexpr DType EigenDType() {
  if constexpr (std::is_same_v<S, float>)
    return DType::kFloat32;
  else if constexpr (std::is_same_v<S, double>)
    return DType::kFloat64;
  else if constexpr (std::is_same_v<S, int8_t>)
    return DType::kInt8;
  else if constexpr (std::is_same_v<S, int16_t>)
    return DType::kInt16;
  else if constexpr (std::is_same_v<S, int32_t>)
    return DType::kInt32;
  else if constexpr (std::is_same_v<S, int64_t>)
    return DType::kInt64;
  else if constexpr (std::is_same_v<S, uint8_t>)
    return DType::kUInt8;
  else if constexpr (std::is_same_v<S, bool>)
    return DType::kBool;
  else
    static_assert(sizeof(S) == 0, "this Eigen scalar type has no EasySync dtype");
}

template <class M>
struct EigenTraits {
  using Scalar = typename M::Scalar;
  using RowMajorMap =
      Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
  using ConstRowMajorMap =
      Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
  static constexpr ValueKind kKind = ValueKind::kTensor;

  template <class F>
  static auto WithEncoding(const M& m, F&& f) {
    const size_t bytes = static_cast<size_t>(m.size()) * sizeof(Scalar);
    return f(EncodedTensorSize(EigenDType<Scalar>(), bytes), [&](std::byte* dst) {
      const int64_t shape[2] = {m.rows(), m.cols()};
      EncodeTensorHeader(EigenDType<Scalar>(), shape, dst);
      if (bytes == 0) return;
      // The header is 128 bytes, so the data keeps the destination's alignment.
      RowMajorMap(reinterpret_cast<Scalar*>(dst + kTensorHeaderBytes), m.rows(), m.cols()) =
          m.matrix();
    });
  }

  static Status Decode(ByteSpan in, M* out) {
    TensorBytes tb;
    EASYSYNC_RETURN_IF_ERROR(ParseTensor(in, &tb));
    if (tb.dtype != EigenDType<Scalar>()) {
      return Status::TypeMismatch(std::string("tensor of ") + std::string(DTypeName(tb.dtype)) +
                                  " does not fit an Eigen matrix of " +
                                  std::string(DTypeName(EigenDType<Scalar>())));
    }
    if (tb.ndim > 2) return Status::TypeMismatch("a tensor of more than 2 dims is not a matrix");
    const int64_t rows = tb.ndim >= 1 ? tb.shape[0] : 1;
    const int64_t cols = tb.ndim == 2 ? tb.shape[1] : 1;
    if ((M::RowsAtCompileTime != Eigen::Dynamic && M::RowsAtCompileTime != rows) ||
        (M::ColsAtCompileTime != Eigen::Dynamic && M::ColsAtCompileTime != cols)) {
      return Status::TypeMismatch("tensor shape does not fit this fixed-size Eigen type");
    }
    out->resize(rows, cols);
    if (rows * cols == 0) return Status::Ok();
    // Copied out first: the bytes in the segment need not be aligned for Scalar.
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> tmp(rows, cols);
    std::memcpy(tmp.data(), tb.data.data(), tb.data.size());
    out->matrix() = tmp;
    return Status::Ok();
  }
};

}  // namespace detail

template <class S, int R, int C, int O, int MR, int MC>
struct ValueTraits<Eigen::Matrix<S, R, C, O, MR, MC>>
    : detail::EigenTraits<Eigen::Matrix<S, R, C, O, MR, MC>> {};

template <class S, int R, int C, int O, int MR, int MC>
struct ValueTraits<Eigen::Array<S, R, C, O, MR, MC>>
    : detail::EigenTraits<Eigen::Array<S, R, C, O, MR, MC>> {};

}  // namespace easysync
