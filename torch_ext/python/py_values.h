// Python values <-> attribute bytes, and Status -> Python exceptions.
//
// Plain Python values (None, bool, int, float, str, bytes, list, tuple, dict, and NumPy
// scalars) travel as msgpack (ValueKind::kMsgpack), the same bytes easysync::Value uses in
// C++. An attribute a C++ program declared with a fixed kind (Synced<int64_t>,
// Synced<std::string>, ...) is written and read in that kind.
// REQUIRES: the GIL, for every function here.
#pragma once

#include <pybind11/pybind11.h>

#include <msgpack.hpp>

#include "easysync/status.h"
#include "easysync/value_traits.h"

namespace easysync::python {

namespace py = pybind11;

// Raises the Python exception that fits the status: ValueError (invalid argument),
// TypeError (type mismatch), PermissionError, ConnectionError (unavailable), TimeoutError,
// LookupError (not found), OSError (I/O), else easysync.Error.
[[noreturn]] void Raise(const Status& status);
template <class T>
T ValueOrRaise(Result<T> r) {
  if (!r.ok()) Raise(r.status());
  return std::move(r).value();
}
inline void OkOrRaise(const Status& s) {
  if (!s.ok()) Raise(s);
}
// easysync.Error (a RuntimeError), created once by the module.
void InitErrors(py::module_& m);

// Packs a plain Python value as msgpack into `buf` (cleared first). TypeError for what
// msgpack cannot carry (the message names the type and what is supported).
void PackPython(py::handle value, msgpack::sbuffer& buf);
// Decodes msgpack from an attribute into Python objects.
Status UnpackPython(ByteSpan bytes, py::object* out);

// The natural fixed kind of a plain Python scalar (bool, int, float, str, bytes), used to
// meet an attribute a C++ program declared with that kind. nullopt for anything else.
std::optional<ValueKind> ScalarKind(py::handle value);
// Encodes a Python value in a fixed scalar kind into `buf`. TypeError/OverflowError when it
// does not fit.
void EncodeScalar(ValueKind kind, py::handle value, std::string& buf);
// Decodes a fixed scalar kind.
Status DecodeScalar(ValueKind kind, ByteSpan bytes, py::object* out);

}  // namespace easysync::python
