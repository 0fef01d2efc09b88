// Encodings of attribute values: tensors, msgpack limits, and easysync::Value.
#include <algorithm>
#include <cstring>
#include <string>

#include "easysync/value_traits.h"

namespace easysync {

std::string_view ValueKindName(ValueKind kind) {
  switch (kind) {
    case ValueKind::kBool:
      return "bool";
    case ValueKind::kInt8:
      return "int8";
    case ValueKind::kInt16:
      return "int16";
    case ValueKind::kInt32:
      return "int32";
    case ValueKind::kInt64:
      return "int64";
    case ValueKind::kUInt8:
      return "uint8";
    case ValueKind::kUInt16:
      return "uint16";
    case ValueKind::kUInt32:
      return "uint32";
    case ValueKind::kUInt64:
      return "uint64";
    case ValueKind::kFloat32:
      return "float32";
    case ValueKind::kFloat64:
      return "float64";
    case ValueKind::kString:
      return "string";
    case ValueKind::kBytes:
      return "bytes";
    case ValueKind::kMsgpack:
      return "nested (msgpack)";
    case ValueKind::kTensor:
      return "tensor";
  }
  return "invalid";
}

namespace detail {

msgpack::sbuffer& ThreadMsgpackBuffer() {
  thread_local msgpack::sbuffer buf;
  return buf;
}

namespace {
// Tuples become plain arrays (the unpack limits bound the depth).
void DropTupleMarkers(msgpack::object& o) {
  if (o.type == msgpack::type::ARRAY) {
    if (IsTuple(o)) {
      ++o.via.array.ptr;
      --o.via.array.size;
    }
    for (uint32_t i = 0; i < o.via.array.size; ++i) DropTupleMarkers(o.via.array.ptr[i]);
  } else if (o.type == msgpack::type::MAP) {
    for (uint32_t i = 0; i < o.via.map.size; ++i) {
      DropTupleMarkers(o.via.map.ptr[i].key);
      DropTupleMarkers(o.via.map.ptr[i].val);
    }
  }
}
}  // namespace

Status UnpackUntrusted(ByteSpan in, msgpack::object_handle* out, bool keep_tuples) {
  // Limits: a value never holds more elements than it has bytes, and nesting stays shallow
  // enough that recursion cannot exhaust the stack.
  const size_t n = in.size();
  const auto cap = static_cast<std::size_t>(n < 0xffffffffu ? n : 0xffffffffu);
  msgpack::unpack_limit limit(cap, cap, cap, cap, cap, /*depth=*/64);
  try {
    std::size_t off = 0;
    *out =
        msgpack::unpack(reinterpret_cast<const char*>(in.data()), n, off, nullptr, nullptr, limit);
    if (off != n) return Status::Corruption("msgpack value has trailing bytes");
    if (!keep_tuples) {
      msgpack::object root = out->get();  // what it points to lives in the handle's zone
      DropTupleMarkers(root);
      out->set(root);
    }
  } catch (const std::exception& e) {
    return Status::Corruption(std::string("msgpack value does not parse: ") + e.what());
  }
  return Status::Ok();
}

namespace {
constexpr uint32_t kTensorMagic = 0x524e5354;  // "TSNR" little-endian
struct TensorHeaderLayout {
  uint32_t magic;
  uint8_t dtype;
  uint8_t ndim;
  uint16_t reserved;
  uint64_t data_bytes;
  int64_t dims[kMaxTensorDims];
};
static_assert(sizeof(TensorHeaderLayout) <= kTensorHeaderBytes);
}  // namespace

size_t EncodedTensorSize(DType, size_t data_bytes) { return kTensorHeaderBytes + data_bytes; }

void EncodeTensorHeader(DType dtype, std::span<const int64_t> shape, std::byte* dst) {
  TensorHeaderLayout h{};
  h.magic = kTensorMagic;
  h.dtype = static_cast<uint8_t>(dtype);
  h.ndim = static_cast<uint8_t>(shape.size());
  size_t numel = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    h.dims[i] = shape[i];
    numel *= static_cast<size_t>(shape[i]);
  }
  h.data_bytes = numel * DTypeSize(dtype);
  std::memset(dst, 0, kTensorHeaderBytes);
  std::memcpy(dst, &h, sizeof(h));
}

Status ParseTensorHeader(ByteSpan in, TensorBytes* out) {
  if (in.size() < kTensorHeaderBytes)
    return Status::Corruption("tensor value shorter than its header");
  TensorHeaderLayout h;
  std::memcpy(&h, in.data(), sizeof(h));
  if (h.magic != kTensorMagic || h.reserved != 0) {
    return Status::Corruption("tensor value has a bad magic");
  }
  auto dtype = DTypeFromByte(h.dtype);
  if (!dtype) return Status::Corruption("tensor value has an unknown dtype");
  if (h.ndim > kMaxTensorDims) return Status::Corruption("tensor value has too many dims");
  auto numel = ShapeNumel(std::span<const int64_t>(h.dims, h.ndim));
  if (!numel.ok())
    return Status::Corruption("tensor value has a bad shape: " + numel.status().message());
  size_t bytes;
  if (__builtin_mul_overflow(numel.value(), DTypeSize(*dtype), &bytes) || bytes != h.data_bytes) {
    return Status::Corruption("tensor value size does not match its shape");
  }
  out->dtype = *dtype;
  out->ndim = h.ndim;
  std::memcpy(out->shape, h.dims, sizeof(h.dims));
  out->data_bytes = bytes;
  out->data = {};
  return Status::Ok();
}

Status ParseTensor(ByteSpan in, TensorBytes* out) {
  EASYSYNC_RETURN_IF_ERROR(ParseTensorHeader(in, out));
  if (in.size() - kTensorHeaderBytes != out->data_bytes) {
    return Status::Corruption("tensor value size does not match its shape");
  }
  out->data = in.subspan(kTensorHeaderBytes);
  return Status::Ok();
}

}  // namespace detail

Status ValueTraits<Tensor>::DecodeShared(std::shared_ptr<const void> owner, ByteSpan in,
                                         Tensor* out) {
  detail::TensorBytes tb;
  EASYSYNC_RETURN_IF_ERROR(detail::ParseTensor(in, &tb));
  auto t = Tensor::Borrow(tb.dtype, std::vector<int64_t>(tb.shape, tb.shape + tb.ndim),
                          std::move(owner), tb.data.data());
  if (!t.ok()) return Decode(in, out);  // not 64-byte aligned (the header was checked)
  *out = std::move(t).value();
  return Status::Ok();
}

Status ValueTraits<Tensor>::Decode(ByteSpan in, Tensor* out) {
  detail::TensorBytes tb;
  EASYSYNC_RETURN_IF_ERROR(detail::ParseTensor(in, &tb));
  const std::span<const int64_t> shape(tb.shape, tb.ndim);
  if (out->unique() && out->dtype() == tb.dtype && out->nbytes() == tb.data.size() &&
      std::equal(shape.begin(), shape.end(), out->shape().begin(), out->shape().end())) {
    if (!tb.data.empty()) std::memcpy(out->mutable_data(), tb.data.data(), tb.data.size());
    return Status::Ok();
  }
  *out =
      Tensor::FromData(tb.dtype, std::vector<int64_t>(shape.begin(), shape.end()), tb.data.data());
  return Status::Ok();
}

}  // namespace easysync

namespace msgpack {
MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS) {
  namespace adaptor {
  const msgpack::object& convert<easysync::Value>::operator()(const msgpack::object& o,
                                                              easysync::Value& v) const {
    switch (o.type) {
      case msgpack::type::NIL:
        v = easysync::Value();
        break;
      case msgpack::type::BOOLEAN:
        v = easysync::Value(o.via.boolean);
        break;
      case msgpack::type::POSITIVE_INTEGER:
        if (o.via.u64 > static_cast<uint64_t>(INT64_MAX)) throw msgpack::type_error();
        v = easysync::Value(static_cast<int64_t>(o.via.u64));
        break;
      case msgpack::type::NEGATIVE_INTEGER:
        v = easysync::Value(o.via.i64);
        break;
      case msgpack::type::FLOAT32:
      case msgpack::type::FLOAT64:
        v = easysync::Value(o.via.f64);
        break;
      case msgpack::type::STR:
        v = easysync::Value(std::string(o.via.str.ptr, o.via.str.size));
        break;
      case msgpack::type::BIN: {
        const auto* p = reinterpret_cast<const uint8_t*>(o.via.bin.ptr);
        v = easysync::Value(easysync::Bytes(p, p + o.via.bin.size));
        break;
      }
      case msgpack::type::ARRAY: {
        easysync::Value::List list(o.via.array.size);
        for (uint32_t i = 0; i < o.via.array.size; ++i) o.via.array.ptr[i].convert(list[i]);
        v = easysync::Value(std::move(list));
        break;
      }
      case msgpack::type::MAP: {
        easysync::Value::Map map;
        for (uint32_t i = 0; i < o.via.map.size; ++i) {
          const auto& kv = o.via.map.ptr[i];
          if (kv.key.type != msgpack::type::STR) throw msgpack::type_error();
          kv.val.convert(map[std::string(kv.key.via.str.ptr, kv.key.via.str.size)]);
        }
        v = easysync::Value(std::move(map));
        break;
      }
      default:
        throw msgpack::type_error();
    }
    return o;
  }
  }  // namespace adaptor
}
}  // namespace msgpack
