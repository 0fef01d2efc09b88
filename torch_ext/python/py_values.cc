#include "py_values.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

namespace easysync::python {
namespace {

py::object& ErrorType() {
  static py::object* type = nullptr;
  if (type == nullptr) type = new py::object();  // lives as long as the interpreter
  return *type;
}

// Containers nested in one another, the root included: the decoder's limit
// (UnpackUntrusted), so that nothing is written that no reader could read.
constexpr int kMaxDepth = 64;

std::string TypeName(py::handle v) { return py::str(py::type::of(v).attr("__qualname__")); }

[[noreturn]] void Unsupported(py::handle v) {
  throw py::type_error("cannot sync a value of type '" + TypeName(v) +
                       "': supported are None, bool, int, float, str, bytes, list, tuple and "
                       "dict (nested), NumPy arrays and torch tensors");
}

void CheckDepth(int depth) {
  if (depth >= kMaxDepth) {
    throw py::value_error("value has containers nested more than " + std::to_string(kMaxDepth) +
                          " deep");
  }
}

// A dict key a reader can rebuild as a dict key: hashable once decoded (not a list or dict).
void CheckKey(py::handle k, int depth) {
  PyObject* o = k.ptr();
  if (o == Py_None || PyBool_Check(o) || PyLong_Check(o) || PyFloat_Check(o) ||
      PyUnicode_Check(o) || PyBytes_Check(o)) {
    return;
  }
  if (PyTuple_Check(o)) {
    CheckDepth(depth);
    for (py::handle item : py::reinterpret_borrow<py::tuple>(k)) CheckKey(item, depth + 1);
    return;
  }
  throw py::type_error("cannot sync a dict key of type '" + TypeName(k) +
                       "': keys must be str, int, float, bool, bytes, None or tuples of them");
}

template <class Packer>
void Pack(py::handle v, Packer& p, int depth) {
  PyObject* o = v.ptr();
  if (o == Py_None) {
    p.pack_nil();
  } else if (PyBool_Check(o)) {
    if (o == Py_True) {
      p.pack_true();
    } else {
      p.pack_false();
    }
  } else if (PyLong_Check(o)) {
    int overflow = 0;
    const long long x = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow == 0) {
      p.pack_int64(x);
    } else if (overflow > 0) {
      const unsigned long long u = PyLong_AsUnsignedLongLong(o);
      if (PyErr_Occurred()) {
        PyErr_Clear();
        throw py::type_error("int does not fit 64 bits and cannot be synced");
      }
      p.pack_uint64(u);
    } else {
      throw py::type_error("int does not fit 64 bits and cannot be synced");
    }
  } else if (PyFloat_Check(o)) {
    detail::PackFloat64(p, PyFloat_AS_DOUBLE(o));
  } else if (PyUnicode_Check(o)) {
    Py_ssize_t n = 0;
    const char* s = PyUnicode_AsUTF8AndSize(o, &n);
    if (s == nullptr) throw py::error_already_set();
    if (static_cast<uint64_t>(n) > std::numeric_limits<uint32_t>::max())
      throw py::value_error("str value over 4 GiB");
    p.pack_str(static_cast<uint32_t>(n));
    p.pack_str_body(s, static_cast<uint32_t>(n));
  } else if (PyBytes_Check(o) || PyByteArray_Check(o) || PyMemoryView_Check(o)) {
    py::buffer_info info = py::reinterpret_borrow<py::buffer>(v).request();
    if (info.size * info.itemsize > std::numeric_limits<uint32_t>::max())
      throw py::value_error("bytes value over 4 GiB");
    const auto n = static_cast<uint32_t>(info.size * info.itemsize);
    p.pack_bin(n);
    p.pack_bin_body(static_cast<const char*>(info.ptr), n);
  } else if (PyList_Check(o) || PyTuple_Check(o)) {
    CheckDepth(depth);
    py::sequence seq = py::reinterpret_borrow<py::sequence>(v);
    // A tuple (a named tuple too) comes back a tuple: marked (detail::IsTuple).
    const bool tuple = PyTuple_Check(o);
    if (seq.size() >= std::numeric_limits<uint32_t>::max()) {
      throw py::value_error("a list or tuple of over 4 billion items cannot be synced");
    }
    p.pack_array(static_cast<uint32_t>(seq.size() + (tuple ? 1 : 0)));
    if (tuple) detail::PackTupleMarker(p);
    for (py::handle item : seq) Pack(item, p, depth + 1);
  } else if (PyDict_Check(o)) {
    CheckDepth(depth);
    py::dict d = py::reinterpret_borrow<py::dict>(v);
    p.pack_map(static_cast<uint32_t>(d.size()));
    for (auto [k, item] : d) {
      CheckKey(k, depth + 1);
      Pack(k, p, depth + 1);
      Pack(item, p, depth + 1);
    }
  } else if (PyIndex_Check(o) && !PyObject_CheckBuffer(o)) {  // NumPy integer scalars
    Pack(py::reinterpret_steal<py::object>(PyNumber_Index(o)), p, depth);
  } else if (py::hasattr(v, "__float__") && !PyObject_CheckBuffer(o) &&
             !py::hasattr(v, "shape")) {  // NumPy float scalars (not arrays or tensors)
    detail::PackFloat64(p, v.cast<double>());
  } else {
    Unsupported(v);
  }
}

py::object Unpack(const msgpack::object& o) {
  switch (o.type) {
    case msgpack::type::NIL:
      return py::none();
    case msgpack::type::BOOLEAN:
      return py::bool_(o.via.boolean);
    case msgpack::type::POSITIVE_INTEGER:
      return py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(o.via.u64));
    case msgpack::type::NEGATIVE_INTEGER:
      return py::reinterpret_steal<py::object>(PyLong_FromLongLong(o.via.i64));
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64:
      return py::float_(o.via.f64);
    case msgpack::type::STR: {
      PyObject* s = PyUnicode_DecodeUTF8(o.via.str.ptr, o.via.str.size, "surrogateescape");
      if (s == nullptr) throw py::error_already_set();
      return py::reinterpret_steal<py::object>(s);
    }
    case msgpack::type::BIN:
      return py::bytes(o.via.bin.ptr, o.via.bin.size);
    case msgpack::type::ARRAY: {
      if (detail::IsTuple(o)) {
        py::tuple t(o.via.array.size - 1);
        for (uint32_t i = 1; i < o.via.array.size; ++i) t[i - 1] = Unpack(o.via.array.ptr[i]);
        return t;
      }
      py::list l(o.via.array.size);
      for (uint32_t i = 0; i < o.via.array.size; ++i) l[i] = Unpack(o.via.array.ptr[i]);
      return l;
    }
    case msgpack::type::MAP: {
      py::dict d;
      for (uint32_t i = 0; i < o.via.map.size; ++i) {
        d[Unpack(o.via.map.ptr[i].key)] = Unpack(o.via.map.ptr[i].val);
      }
      return d;
    }
    default:
      throw py::type_error("msgpack extension types are not supported");
  }
}

}  // namespace

void InitErrors(py::module_& m) {
  py::object builtins = py::module_::import("builtins");
  PyObject* type =
      PyErr_NewExceptionWithDoc("easysync.Error", "An EasySync operation failed (see the message).",
                                PyExc_RuntimeError, nullptr);
  if (type == nullptr) throw py::error_already_set();
  ErrorType() = py::reinterpret_steal<py::object>(type);
  m.attr("Error") = ErrorType();
}

void Raise(const Status& status) {
  PyObject* type = ErrorType().ptr();
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
      type = PyExc_ValueError;
      break;
    case StatusCode::kTypeMismatch:
      type = PyExc_TypeError;
      break;
    case StatusCode::kPermissionDenied:
      type = PyExc_PermissionError;
      break;
    case StatusCode::kUnavailable:
      type = PyExc_ConnectionError;
      break;
    case StatusCode::kTimeout:
      type = PyExc_TimeoutError;
      break;
    case StatusCode::kNotFound:
      type = PyExc_LookupError;
      break;
    case StatusCode::kIoError:
      type = PyExc_OSError;
      break;
    default:
      break;
  }
  PyErr_SetString(type, status.message().c_str());
  throw py::error_already_set();
}

void PackPython(py::handle value, msgpack::sbuffer& buf) {
  buf.clear();
  msgpack::packer<msgpack::sbuffer> p(buf);
  Pack(value, p, 0);
}

Status UnpackPython(ByteSpan bytes, py::object* out) {
  msgpack::object_handle oh;
  EASYSYNC_RETURN_IF_ERROR(detail::UnpackUntrusted(bytes, &oh, /*keep_tuples=*/true));
  try {
    *out = Unpack(oh.get());
  } catch (py::error_already_set& e) {  // e.g. an unhashable map key from a foreign writer
    return Status::Corruption(std::string("msgpack value does not convert: ") + e.what());
  } catch (const std::exception& e) {
    return Status::Corruption(std::string("msgpack value does not convert: ") + e.what());
  }
  return Status::Ok();
}

std::optional<ValueKind> ScalarKind(py::handle v) {
  PyObject* o = v.ptr();
  if (PyBool_Check(o)) return ValueKind::kBool;
  if (PyLong_Check(o)) return ValueKind::kInt64;
  if (PyFloat_Check(o)) return ValueKind::kFloat64;
  if (PyUnicode_Check(o)) return ValueKind::kString;
  if (PyBytes_Check(o) || PyByteArray_Check(o)) return ValueKind::kBytes;
  return std::nullopt;
}

namespace {
template <class T>
void PutScalar(T x, std::string& buf) {
  buf.assign(reinterpret_cast<const char*>(&x), sizeof(T));
}
template <class T>
void PutInt(py::handle v, std::string& buf) {
  if (PyFloat_Check(v.ptr()) || !PyIndex_Check(v.ptr()))
    throw py::type_error("this attribute holds integers; got '" + TypeName(v) + "'");
  py::int_ i = py::reinterpret_steal<py::int_>(PyNumber_Index(v.ptr()));
  if constexpr (std::is_signed_v<T>) {
    int overflow = 0;
    const long long x = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
    if (overflow != 0 || x < std::numeric_limits<T>::min() || x > std::numeric_limits<T>::max())
      throw py::value_error("integer out of range for this attribute's kind");
    PutScalar(static_cast<T>(x), buf);
  } else {
    const unsigned long long x = PyLong_AsUnsignedLongLong(i.ptr());
    if (PyErr_Occurred() || x > std::numeric_limits<T>::max()) {
      PyErr_Clear();
      throw py::value_error("integer out of range for this attribute's kind");
    }
    PutScalar(static_cast<T>(x), buf);
  }
}
template <class T>
py::object GetScalar(ByteSpan b) {
  T x;
  std::memcpy(&x, b.data(), sizeof(T));
  return py::cast(x);
}
}  // namespace

void EncodeScalar(ValueKind kind, py::handle v, std::string& buf) {
  switch (kind) {
    case ValueKind::kBool:
      if (!PyBool_Check(v.ptr()))
        throw py::type_error("this attribute holds bools; got '" + TypeName(v) + "'");
      PutScalar<uint8_t>(v.ptr() == Py_True ? 1 : 0, buf);
      return;
    case ValueKind::kInt8:
      return PutInt<int8_t>(v, buf);
    case ValueKind::kInt16:
      return PutInt<int16_t>(v, buf);
    case ValueKind::kInt32:
      return PutInt<int32_t>(v, buf);
    case ValueKind::kInt64:
      return PutInt<int64_t>(v, buf);
    case ValueKind::kUInt8:
      return PutInt<uint8_t>(v, buf);
    case ValueKind::kUInt16:
      return PutInt<uint16_t>(v, buf);
    case ValueKind::kUInt32:
      return PutInt<uint32_t>(v, buf);
    case ValueKind::kUInt64:
      return PutInt<uint64_t>(v, buf);
    case ValueKind::kFloat32:
    case ValueKind::kFloat64: {
      if (!PyFloat_Check(v.ptr()) && !PyLong_Check(v.ptr()))
        throw py::type_error("this attribute holds floats; got '" + TypeName(v) + "'");
      const double d = v.cast<double>();
      if (kind == ValueKind::kFloat32) {
        PutScalar(static_cast<float>(d), buf);
      } else {
        PutScalar(d, buf);
      }
      return;
    }
    case ValueKind::kString: {
      if (!PyUnicode_Check(v.ptr()))
        throw py::type_error("this attribute holds strings; got '" + TypeName(v) + "'");
      Py_ssize_t n = 0;
      const char* s = PyUnicode_AsUTF8AndSize(v.ptr(), &n);
      if (s == nullptr) throw py::error_already_set();
      buf.assign(s, static_cast<size_t>(n));
      return;
    }
    case ValueKind::kBytes: {
      if (!PyBytes_Check(v.ptr()) && !PyByteArray_Check(v.ptr()))
        throw py::type_error("this attribute holds bytes; got '" + TypeName(v) + "'");
      py::buffer_info info = py::reinterpret_borrow<py::buffer>(v).request();
      buf.assign(static_cast<const char*>(info.ptr), static_cast<size_t>(info.size));
      return;
    }
    default:
      throw py::type_error("not a scalar kind: " + std::string(ValueKindName(kind)));
  }
}

Status DecodeScalar(ValueKind kind, ByteSpan b, py::object* out) {
  auto want = [&](size_t n) -> Status {
    if (b.size() != n) return Status::Corruption("scalar value has the wrong size");
    return Status::Ok();
  };
  switch (kind) {
    case ValueKind::kBool: {
      EASYSYNC_RETURN_IF_ERROR(want(1));
      const auto x = static_cast<uint8_t>(b[0]);
      if (x > 1) return Status::Corruption("bool value is neither 0 nor 1");
      *out = py::bool_(x != 0);
      return Status::Ok();
    }
#define EASYSYNC_SCALAR(K, T)                  \
  case ValueKind::K:                           \
    EASYSYNC_RETURN_IF_ERROR(want(sizeof(T))); \
    *out = GetScalar<T>(b);                    \
    return Status::Ok();
      EASYSYNC_SCALAR(kInt8, int8_t)
      EASYSYNC_SCALAR(kInt16, int16_t)
      EASYSYNC_SCALAR(kInt32, int32_t)
      EASYSYNC_SCALAR(kInt64, int64_t)
      EASYSYNC_SCALAR(kUInt8, uint8_t)
      EASYSYNC_SCALAR(kUInt16, uint16_t)
      EASYSYNC_SCALAR(kUInt32, uint32_t)
      EASYSYNC_SCALAR(kUInt64, uint64_t)
      EASYSYNC_SCALAR(kFloat32, float)
      EASYSYNC_SCALAR(kFloat64, double)
#undef EASYSYNC_SCALAR
    case ValueKind::kString: {
      PyObject* s = PyUnicode_DecodeUTF8(reinterpret_cast<const char*>(b.data()),
                                         static_cast<Py_ssize_t>(b.size()), "surrogateescape");
      if (s == nullptr) {
        PyErr_Clear();
        return Status::Corruption("string value does not decode");
      }
      *out = py::reinterpret_steal<py::object>(s);
      return Status::Ok();
    }
    case ValueKind::kBytes:
      *out = py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
      return Status::Ok();
    default:
      return Status::InvalidArgument("not a scalar kind: " + std::string(ValueKindName(kind)));
  }
}

}  // namespace easysync::python
