// How a C++ type becomes the bytes of an attribute, and back.
//
// ValueTraits<T> gives the attribute kind and two operations:
//   template <class F> static auto WithEncoding(const T& v, F&& f)
//       calls f(size, encode) where encode(std::byte* dst) writes exactly size bytes;
//   static Status Decode(std::span<const std::byte> in, T* out)
//       parses untrusted bytes; never crashes on garbage.
// Fixed-size scalars encode with no allocation. Types with a msgpack-c adaptor (standard
// containers, easysync::Value) travel as msgpack. Eigen types: include easysync/eigen.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>

#include <msgpack.hpp>

#include "easysync/status.h"
#include "easysync/tensor.h"
#include "easysync/value.h"

namespace easysync {

// The numeric values are part of the shared-memory layout: only append.
enum class ValueKind : uint8_t {
  kBool = 1,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kUInt8,
  kUInt16,
  kUInt32,
  kUInt64,
  kFloat32,
  kFloat64,
  kString,
  kBytes,
  kMsgpack,
  kTensor,
};
inline constexpr uint8_t kMaxValueKind = static_cast<uint8_t>(ValueKind::kTensor);

std::string_view ValueKindName(ValueKind kind);

using ByteSpan = std::span<const std::byte>;

namespace detail {
template <class T>
constexpr ValueKind ArithmeticKind() {
  if constexpr (std::is_same_v<T, bool>)
    return ValueKind::kBool;
  else if constexpr (std::is_floating_point_v<T>)
    return sizeof(T) == 4 ? ValueKind::kFloat32 : ValueKind::kFloat64;
  else if constexpr (std::is_signed_v<T>) {
    if constexpr (sizeof(T) == 1)
      return ValueKind::kInt8;
    else if constexpr (sizeof(T) == 2)
      return ValueKind::kInt16;
    else if constexpr (sizeof(T) == 4)
      return ValueKind::kInt32;
    else
      return ValueKind::kInt64;
  } else {
    if constexpr (sizeof(T) == 1)
      return ValueKind::kUInt8;
    else if constexpr (sizeof(T) == 2)
      return ValueKind::kUInt16;
    else if constexpr (sizeof(T) == 4)
      return ValueKind::kUInt32;
    else
      return ValueKind::kUInt64;
  }
}

// The msgpack buffer reused by each thread, so steady-state encoding does not allocate.
msgpack::sbuffer& ThreadMsgpackBuffer();
// msgpack::unpack with limits fit for untrusted input (depth, counts, sizes). A tuple
// (IsTuple) becomes a plain array unless keep_tuples.
Status UnpackUntrusted(ByteSpan in, msgpack::object_handle* out, bool keep_tuples = false);

// packer::pack_double writes integral doubles as integers; a float must stay a float for a
// dynamic value (easysync::Value, Python), so this writes float64 (0xcb, big-endian) itself.
template <class Packer>
void PackFloat64(Packer& p, double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  char raw[9];
  raw[0] = static_cast<char>(0xcb);
  for (int i = 0; i < 8; ++i) raw[1 + i] = static_cast<char>(bits >> (56 - 8 * i));
  p.pack_bin_body(raw, sizeof(raw));  // appends raw bytes
}

// A tuple (Python's) travels as an array whose first element is this marker: an empty
// msgpack extension of type kTupleExtType (ext 8: c7 00 01). C++ readers get the rest as a
// plain array (a Value list, a std::vector, a std::tuple; UnpackUntrusted drops the marker);
// nothing else writes an extension type.
inline constexpr int8_t kTupleExtType = 1;
template <class Packer>
void PackTupleMarker(Packer& p) {
  p.pack_ext(0, kTupleExtType);
}
inline bool IsTupleMarker(const msgpack::object& o) {
  return o.type == msgpack::type::EXT && o.via.ext.type() == kTupleExtType && o.via.ext.size == 0;
}
// An array that holds a tuple: marker first.
inline bool IsTuple(const msgpack::object& o) {
  return o.type == msgpack::type::ARRAY && o.via.array.size >= 1 &&
         IsTupleMarker(o.via.array.ptr[0]);
}

// Tensor bytes in a slot: a fixed 128-byte header, then the row-major data.
inline constexpr size_t kTensorHeaderBytes = 128;
size_t EncodedTensorSize(DType dtype, size_t data_bytes);
// Writes the header for dtype/shape; the caller writes the data after it.
void EncodeTensorHeader(DType dtype, std::span<const int64_t> shape, std::byte* dst);
// Validates a tensor encoding; on success fills dtype, shape (<= kMaxTensorDims) and data.
struct TensorBytes {
  DType dtype;
  size_t ndim;
  int64_t shape[kMaxTensorDims];
  size_t data_bytes;
  ByteSpan data;
};
Status ParseTensor(ByteSpan in, TensorBytes* out);
// Validates only the header (the first kTensorHeaderBytes of `in`); data stays empty.
Status ParseTensorHeader(ByteSpan in, TensorBytes* out);
}  // namespace detail

template <class T, class Enable = void>
struct ValueTraits {
  // Anything msgpack-c can pack and convert: standard containers, easysync::Value, ...
  static constexpr ValueKind kKind = ValueKind::kMsgpack;
  template <class F>
  static auto WithEncoding(const T& v, F&& f) {
    msgpack::sbuffer& buf = detail::ThreadMsgpackBuffer();
    buf.clear();
    msgpack::pack(buf, v);
    return f(buf.size(), [&](std::byte* dst) { std::memcpy(dst, buf.data(), buf.size()); });
  }
  static Status Decode(ByteSpan in, T* out) {
    msgpack::object_handle oh;
    EASYSYNC_RETURN_IF_ERROR(detail::UnpackUntrusted(in, &oh));
    try {
      oh.get().convert(*out);
    } catch (const std::exception& e) {
      return Status::TypeMismatch(std::string("msgpack value does not convert: ") + e.what());
    }
    return Status::Ok();
  }
};

template <class T>
struct ValueTraits<T, std::enable_if_t<std::is_arithmetic_v<T>>> {
  static constexpr ValueKind kKind = detail::ArithmeticKind<T>();
  template <class F>
  static auto WithEncoding(const T& v, F&& f) {
    return f(sizeof(T), [&](std::byte* dst) { std::memcpy(dst, &v, sizeof(T)); });
  }
  static Status Decode(ByteSpan in, T* out) {
    if (in.size() != sizeof(T)) return Status::Corruption("scalar value has the wrong size");
    if constexpr (std::is_same_v<T, bool>) {
      const auto b = static_cast<uint8_t>(in[0]);
      if (b > 1) return Status::Corruption("bool value is neither 0 nor 1");
      *out = b != 0;
    } else {
      std::memcpy(out, in.data(), sizeof(T));
    }
    return Status::Ok();
  }
};

template <>
struct ValueTraits<std::string> {
  static constexpr ValueKind kKind = ValueKind::kString;
  template <class F>
  static auto WithEncoding(const std::string& v, F&& f) {
    return f(v.size(), [&](std::byte* dst) {
      if (!v.empty()) std::memcpy(dst, v.data(), v.size());  // dst may be null when empty
    });
  }
  static Status Decode(ByteSpan in, std::string* out) {
    out->assign(reinterpret_cast<const char*>(in.data()), in.size());
    return Status::Ok();
  }
};

template <>
struct ValueTraits<Bytes> {
  static constexpr ValueKind kKind = ValueKind::kBytes;
  template <class F>
  static auto WithEncoding(const Bytes& v, F&& f) {
    return f(v.size(), [&](std::byte* dst) {
      if (!v.empty()) std::memcpy(dst, v.data(), v.size());
    });
  }
  static Status Decode(ByteSpan in, Bytes* out) {
    const auto* p = reinterpret_cast<const uint8_t*>(in.data());
    out->assign(p, p + in.size());
    return Status::Ok();
  }
};

template <>
struct ValueTraits<Tensor> {
  static constexpr ValueKind kKind = ValueKind::kTensor;
  template <class F>
  static auto WithEncoding(const Tensor& t, F&& f) {
    return f(detail::EncodedTensorSize(t.dtype(), t.nbytes()), [&](std::byte* dst) {
      detail::EncodeTensorHeader(t.dtype(), t.shape(), dst);
      if (t.nbytes() > 0) std::memcpy(dst + detail::kTensorHeaderBytes, t.data(), t.nbytes());
    });
  }
  // Reuses out's storage when it is unshared and of the same size (no allocation).
  static Status Decode(ByteSpan in, Tensor* out);
  // Without a copy: *out borrows the bytes, which `owner` keeps alive and unchanged
  // (Client::ReadSharedIfNewer); copies where the data is not 64-byte aligned.
  static Status DecodeShared(std::shared_ptr<const void> owner, ByteSpan in, Tensor* out);
};

}  // namespace easysync

// msgpack-c adaptors for easysync::Value.
namespace msgpack {
MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS) {
  namespace adaptor {
  template <>
  struct convert<easysync::Value> {
    const msgpack::object& operator()(const msgpack::object& o, easysync::Value& v) const;
  };
  template <>
  struct pack<easysync::Value> {
    template <class Stream>
    packer<Stream>& operator()(packer<Stream>& p, const easysync::Value& v) const {
      std::visit(
          [&](const auto& x) {
            using X = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<X, std::monostate>) {
              p.pack_nil();
            } else if constexpr (std::is_same_v<X, double>) {
              easysync::detail::PackFloat64(p, x);
            } else if constexpr (std::is_same_v<X, easysync::Bytes>) {
              p.pack_bin(static_cast<uint32_t>(x.size()));
              p.pack_bin_body(reinterpret_cast<const char*>(x.data()),
                              static_cast<uint32_t>(x.size()));
            } else {
              p.pack(x);
            }
          },
          v.variant());
      return p;
    }
  };
  }  // namespace adaptor
}
}  // namespace msgpack
