// easysync._core: the core's Python bindings (pybind11). The package (torch_ext/easysync/)
// builds the decorator API on it; it needs neither torch nor NumPy. Tensors cross as
// (dtype, shape, pointer) when written, so a CUDA tensor reaches Client::WriteTensor without
// a host copy, and as a TensorBuffer (an owned CPU buffer with the buffer protocol) when
// read, which the package wraps as a NumPy array or a torch tensor without a copy.
//
// The GIL is released around everything that may wait or copy much: connecting, closing,
// writes (a reliable network write waits for the hub), tensor reads and waiting.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "easysync/client.h"
#include "easysync/net.h"
#include "py_attr.h"
#include "py_values.h"

namespace easysync::python {
namespace {

// Declares object.name. kind "auto": a plain value as msgpack, or, when the cluster already
// has the attribute in a fixed scalar kind (a C++ Synced<int64_t>, ...), in that kind.
// kind "tensor": `initial` is None or a TensorArg of CPU memory.
std::unique_ptr<Attr> Declare(const std::shared_ptr<ClientBox>& box, const std::string& object,
                              const std::string& name, const std::string& kind, py::object initial,
                              bool has_initial, const std::string& transport) {
  ClientRef c(box->Get());
  const Transport tr = ParseTransport(transport);
  // Declares with an initial value of `size` bytes that `encode` writes (none when size is
  // SIZE_MAX).
  auto declare_with = [&](ValueKind k, size_t size, FunctionRef<void(std::byte*)> encode) {
    Result<AttrId> r = Status::Internal("unset");
    Client::Initial init{size, encode};
    py::gil_scoped_release nogil;
    r = c->Declare(object, name, k, size == SIZE_MAX ? nullptr : &init, tr);
    return r;
  };
  auto declare = [&](ValueKind k, const std::string* bytes) {
    auto copy = [&](std::byte* dst) {
      if (!bytes->empty()) std::memcpy(dst, bytes->data(), bytes->size());
    };
    return declare_with(k, bytes == nullptr ? SIZE_MAX : bytes->size(), copy);
  };
  auto made = [&](ValueKind k, Result<AttrId> r) {
    return std::make_unique<Attr>(box, ValueOrRaise(std::move(r)), k, object, name);
  };
  if (kind == "tensor") {
    if (!has_initial) return made(ValueKind::kTensor, declare(ValueKind::kTensor, nullptr));
    const auto& arg = initial.cast<const TensorArg&>();
    const TensorView v = arg.View();  // views arg.shape
    if (v.device != DeviceType::kCPU)
      throw py::value_error("an initial tensor must be in CPU memory");
    auto encode = [&](std::byte* dst) {  // straight from the caller's memory
      detail::EncodeTensorHeader(v.dtype, v.shape, dst);
      if (v.nbytes() > 0) std::memcpy(dst + detail::kTensorHeaderBytes, v.data, v.nbytes());
    };
    return made(
        ValueKind::kTensor,
        declare_with(ValueKind::kTensor, detail::EncodedTensorSize(v.dtype, v.nbytes()), encode));
  }
  if (kind != "auto") throw py::value_error("kind must be 'auto' or 'tensor'");
  std::string packed;
  if (has_initial) {
    msgpack::sbuffer& buf = detail::ThreadMsgpackBuffer();
    PackPython(initial, buf);
    packed.assign(buf.data(), buf.size());
  }
  Result<AttrId> r = declare(ValueKind::kMsgpack, has_initial ? &packed : nullptr);
  if (r.ok() || r.status().code() != StatusCode::kTypeMismatch) return made(ValueKind::kMsgpack, r);
  // Declared elsewhere with a fixed kind: meet it there when the value is that kind's scalar.
  const std::optional<ValueKind> scalar =
      has_initial ? ScalarKind(initial) : std::optional<ValueKind>();
  std::vector<ValueKind> candidates;
  if (scalar) {
    candidates.push_back(*scalar);
    if (*scalar == ValueKind::kInt64) {
      for (ValueKind k : {ValueKind::kFloat64, ValueKind::kInt32, ValueKind::kUInt64,
                          ValueKind::kFloat32, ValueKind::kInt16, ValueKind::kInt8,
                          ValueKind::kUInt32, ValueKind::kUInt16, ValueKind::kUInt8}) {
        candidates.push_back(k);
      }
    } else if (*scalar == ValueKind::kFloat64) {
      candidates.push_back(ValueKind::kFloat32);
    }
  }
  for (ValueKind k : candidates) {
    std::string bytes;
    EncodeScalar(k, initial, bytes);
    Result<AttrId> rk = declare(k, &bytes);
    if (rk.ok() || rk.status().code() != StatusCode::kTypeMismatch) return made(k, rk);
  }
  Raise(r.status());
}

py::dict StatsDict(const Client& c) {
  py::dict d;
  for (const auto& [k, v] : c.stats().AsMap()) {
    const bool real = k.ends_with("_ms") || k == "compression_ratio";
    if (real) {
      d[py::str(k)] = v;
    } else {
      d[py::str(k)] = static_cast<uint64_t>(v);
    }
  }
  return d;
}

std::shared_ptr<ClientBox> ShmConnect(const std::string& name, const std::string& wait_mode,
                                      double spin_us, uint32_t max_attributes, uint64_t arena_bytes,
                                      double attach_timeout_s) {
  ShmOptions o;
  if (wait_mode == "poll") {
    o.wait_mode = WaitMode::kPoll;
  } else if (wait_mode != "futex") {
    throw py::value_error("wait_mode must be 'futex' or 'poll'");
  }
  if (spin_us < 0) throw py::value_error("spin_us must be >= 0");
  o.spin = std::chrono::nanoseconds(static_cast<int64_t>(spin_us * 1e3));
  o.max_attributes = max_attributes;
  o.arena_bytes = arena_bytes;
  o.attach_timeout = std::chrono::milliseconds(static_cast<int64_t>(attach_timeout_s * 1e3));
  Result<std::shared_ptr<Client>> r = Status::Internal("unset");
  {
    py::gil_scoped_release nogil;
    r = TryShmConnect(name, o);
  }
  auto box = std::make_shared<ClientBox>();
  box->client = ValueOrRaise(std::move(r));
  box->mode = "shm";
  box->address = name;
  return box;
}

std::shared_ptr<ClientBox> NetConnect(const std::string& host, int port, const std::string& token,
                                      const std::string& transports, double timeout_s,
                                      bool reconnect, double spin_us, int encode_threads,
                                      int decode_threads, const std::string& device_direct) {
  if (port <= 0 || port > 65535) throw py::value_error("port must be in 1..65535");
  if (!(timeout_s > 0)) throw py::value_error("timeout must be > 0 seconds");
  // Negative: the default (see NetOptions).
  if (!(spin_us < 1e6)) throw py::value_error("spin_us must be below 1e6");
  NetOptions o;
  o.host = host;
  o.port = static_cast<uint16_t>(port);
  o.token = token;
  o.ucx_transports = transports;
  o.connect_timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1e3));
  o.request_timeout = o.connect_timeout;
  o.reconnect = reconnect;
  if (spin_us >= 0) o.spin = std::chrono::nanoseconds(static_cast<int64_t>(spin_us * 1e3));
  o.encode_threads = encode_threads;
  o.decode_threads = decode_threads;
  if (device_direct == "auto") {
    o.device_direct = NetOptions::DeviceDirect::kAuto;
  } else if (device_direct == "always") {
    o.device_direct = NetOptions::DeviceDirect::kAlways;
  } else if (device_direct == "never") {
    o.device_direct = NetOptions::DeviceDirect::kNever;
  } else {
    throw py::value_error("device_direct must be 'auto', 'always' or 'never', not '" +
                          device_direct + "'");
  }
  Result<std::shared_ptr<Client>> r = Status::Internal("unset");
  {
    py::gil_scoped_release nogil;
    r = TryConnect(o);
  }
  auto box = std::make_shared<ClientBox>();
  box->client = ValueOrRaise(std::move(r));
  box->mode = "net";
  box->address = host + ":" + std::to_string(port);
  return box;
}

// Keeps an on_change callback registered until close() (or garbage collection).
struct PySubscription {
  std::shared_ptr<ClientBox> box;  // the client outlives the subscription
  Subscription sub;
  // REQUIRES: the GIL.
  void Close() {
    std::shared_ptr<Client> keep = box->client;
    if (!keep) {
      // Closed: the client's watches went with it. Inherited through fork(): its lock must
      // not be touched. Either way the handle is left behind, never used.
      new Subscription(std::move(sub));
      return;
    }
    py::gil_scoped_release nogil;  // a running callback holds the client's lock and wants the GIL
    sub.reset();
    keep.reset();
  }
  ~PySubscription() { Close(); }  // pybind11 destroys it with the GIL held
};

}  // namespace
}  // namespace easysync::python

namespace ep = easysync::python;
namespace py = pybind11;
using easysync::Tensor;

PYBIND11_MODULE(_core, m) {
  m.doc() = "EasySync core bindings (see the easysync package for the decorator API)";
  ep::InitErrors(m);

  std::vector<std::string> dtypes;
  for (easysync::DType t : easysync::kAllDTypes) dtypes.emplace_back(easysync::DTypeName(t));
  m.attr("DTYPES") = dtypes;

  py::class_<ep::TensorArg>(m, "TensorArg")
      .def(py::init<std::string, std::vector<int64_t>, uintptr_t, std::string, int, uintptr_t>(),
           py::arg("dtype"), py::arg("shape"), py::arg("ptr"), py::arg("device") = "cpu",
           py::arg("device_index") = 0, py::arg("stream") = 0);

  py::class_<Tensor>(m, "TensorBuffer", py::buffer_protocol())
      .def_property_readonly(
          "dtype", [](const Tensor& t) { return std::string(easysync::DTypeName(t.dtype())); })
      .def_property_readonly("shape", [](const Tensor& t) { return t.shape(); })
      .def_property_readonly("nbytes", &Tensor::nbytes)
      .def_buffer([](Tensor& t) {
        // Bytes, 1-D: NumPy has no bfloat16 or float8; the package views them with a dtype.
        return py::buffer_info(t.mutable_data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(t.nbytes())}, {py::ssize_t{1}},
                               /*readonly=*/false);
      });

  py::class_<ep::ClientBox, std::shared_ptr<ep::ClientBox>>(m, "Client")
      .def_property_readonly("id", [](const ep::ClientBox& b) { return b.Get()->id(); })
      .def_property_readonly("cluster", [](const ep::ClientBox& b) { return b.Get()->cluster(); })
      .def_readonly("mode", &ep::ClientBox::mode)
      .def_readonly("address", &ep::ClientBox::address)
      .def_property_readonly("closed", [](const ep::ClientBox& b) { return !b.client; })
      .def("stats", [](const ep::ClientBox& b) { return ep::StatsDict(*b.Get()); })
      .def("close", &ep::ClientBox::Close)
      .def("abandon", &ep::ClientBox::Abandon)
      .def("share", [](const ep::ClientBox& b) { return easysync::ShareClient(b.Get()); })
      .def(
          "declare",
          [](const std::shared_ptr<ep::ClientBox>& box, const std::string& object,
             const std::string& name, const std::string& kind, py::object initial, bool has_initial,
             const std::string& transport) {
            return ep::Declare(box, object, name, kind, std::move(initial), has_initial, transport);
          },
          py::arg("object"), py::arg("name"), py::arg("kind") = "auto",
          py::arg("initial") = py::none(), py::arg("has_initial") = false,
          py::arg("transport") = "default")
      .def(
          "wait_any",
          [](const ep::ClientBox& b, const std::vector<ep::Attr*>& attrs, double timeout_s) {
            ep::ClientRef c(b.Get());
            std::vector<std::pair<easysync::AttrId, uint64_t>> seen;
            for (ep::Attr* a : attrs) seen.emplace_back(a->id(), a->known_version());
            const auto deadline = ep::Attr::DeadlineIn(timeout_s);
            return ep::WaitWithSignals(
                *c,
                [&] {
                  for (const auto& [id, v] : seen)
                    if (c->LatestVersion(id) > v) return true;
                  return false;
                },
                deadline);
          },
          py::arg("attrs"), py::arg("timeout"));

  py::class_<ep::Attr>(m, "Attr")
      .def("get", &ep::Attr::Get)
      .def("set", &ep::Attr::Set)
      .def("set_tensor", &ep::Attr::SetTensor)
      .def("read_into", &ep::Attr::ReadInto, py::arg("dst"), py::arg("have"))
      .def("latest", &ep::Attr::Latest)
      .def_property_readonly("known_version", &ep::Attr::known_version)
      .def("wait_for_change", &ep::Attr::WaitForChange, py::arg("timeout"))
      .def_property_readonly("version", &ep::Attr::version)
      .def_property_readonly("info", &ep::Attr::Info)
      .def_property_readonly("kind", &ep::Attr::kind)
      .def_property_readonly("name", &ep::Attr::name)
      .def_property_readonly("object", &ep::Attr::object)
      .def("on_change", [](ep::Attr& a, py::function fn) {
        auto sub = std::make_unique<ep::PySubscription>();
        sub->box = a.box();
        // The callback's Python object is released with the GIL held (it may be the last ref).
        std::shared_ptr<py::function> holder(new py::function(std::move(fn)), [](py::function* f) {
          py::gil_scoped_acquire gil;
          delete f;
        });
        sub->sub = a.box()->Get()->OnChange(a.id(), [holder] {
          if (!Py_IsInitialized()) return;
          py::gil_scoped_acquire gil;
          try {
            (*holder)();
          } catch (py::error_already_set& e) {
            e.discard_as_unraisable("easysync on_change callback");
          }
        });
        return sub;
      });

  py::class_<ep::PySubscription>(m, "Subscription").def("close", &ep::PySubscription::Close);

  m.def("shm_connect", &ep::ShmConnect, py::arg("name"), py::arg("wait_mode") = "futex",
        py::arg("spin_us") = 50.0, py::arg("max_attributes") = 4096,
        py::arg("arena_bytes") = 16ull << 20, py::arg("attach_timeout") = 5.0);
  m.def("connect", &ep::NetConnect, py::arg("host") = "127.0.0.1", py::arg("port") = 5000,
        py::arg("token") = "", py::arg("transports") = "", py::arg("timeout") = 10.0,
        py::arg("reconnect") = true, py::arg("spin_us") = -1.0, py::arg("encode_threads") = -1,
        py::arg("decode_threads") = -1, py::arg("device_direct") = "auto");
}
