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
#include "py_values.h"

namespace easysync::python {
namespace {

// One connection; attributes share it, so close() ends it for all of them.
struct ClientBox {
  std::shared_ptr<Client> client;
  std::string mode;  // "shm" or "net"
  std::string address;
  bool inherited = false;  // this process is a fork() child of the one that connected

  std::shared_ptr<Client> Get() const {
    if (!client) {
      throw py::value_error(inherited ? "this easysync client belongs to the parent process "
                                        "(it was inherited through fork()); connect again in "
                                        "this process"
                                      : "this easysync client is closed");
    }
    return client;
  }
  void Close() {
    std::shared_ptr<Client> c = std::move(client);
    py::gil_scoped_release nogil;  // the callback thread may be waiting for the GIL
    c.reset();
  }
  // In a fork() child: the client's threads did not survive the fork and its locks may be
  // held by them, so it can neither be used nor destroyed. It is left behind, never touched;
  // the parent's connection, segment and hub session are unaffected.
  void Abandon() {
    if (client) new std::shared_ptr<Client>(std::move(client));  // deliberately leaked
    inherited = true;
  }
};

// A call's hold on the client. When close() ran on another thread meanwhile, this may be the
// last reference: the client is then destroyed without the GIL, which its callback thread
// may be waiting for. REQUIRES: the GIL when it goes out of scope.
class ClientRef {
 public:
  explicit ClientRef(std::shared_ptr<Client> c) : c_(std::move(c)) {}
  ClientRef(const ClientRef&) = delete;
  ClientRef& operator=(const ClientRef&) = delete;
  ~ClientRef() {
    if (c_.use_count() == 1) {  // nobody can take a new reference: the box no longer has it
      py::gil_scoped_release nogil;
      c_.reset();
    }
  }
  Client* operator->() const { return c_.get(); }
  Client& operator*() const { return *c_; }

 private:
  std::shared_ptr<Client> c_;
};

// Waits in slices so that Ctrl-C (a Python signal handler) is honoured while waiting long.
bool WaitWithSignals(Client& c, FunctionRef<bool()> ready, Deadline deadline) {
  constexpr auto kSlice = std::chrono::milliseconds(50);
  for (;;) {
    const Deadline slice = std::min(deadline, Clock::now() + kSlice);
    bool done;
    {
      py::gil_scoped_release nogil;
      done = c.WaitUntil(ready, slice);
    }
    if (done) return true;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (Clock::now() >= deadline) return false;
  }
}

Transport ParseTransport(const std::string& t) {
  if (t == "tcp" || t == "reliable" || t == "ucx") return Transport::kReliable;
  if (t == "udp" || t == "best_effort") return Transport::kUdp;
  if (t.empty() || t == "default") return Transport::kDefault;
  throw py::value_error("transport must be 'tcp' (reliable) or 'udp' (best effort), not '" + t +
                        "'");
}

DType ParseDType(const std::string& name) {
  for (DType t : kAllDTypes) {
    if (DTypeName(t) == name) return t;
  }
  std::string all;
  for (DType t : kAllDTypes) {
    if (!all.empty()) all += ", ";
    all += DTypeName(t);
  }
  throw py::type_error("dtype '" + name + "' cannot be synced; supported: " + all);
}

// A tensor's bytes as the package hands them over: CPU or CUDA memory it keeps alive for the
// duration of the call.
struct TensorArg {
  std::string dtype;
  std::vector<int64_t> shape;
  uintptr_t ptr = 0;
  std::string device = "cpu";
  int device_index = 0;
  uintptr_t stream = 0;

  // REQUIRES: *this outlives the view (its shape points into `shape`).
  TensorView View() const {
    TensorView v;
    v.dtype = ParseDType(dtype);
    v.shape = shape;
    if (device == "cuda") {
      v.device = DeviceType::kCUDA;
    } else if (device != "cpu") {
      throw py::value_error("tensors on '" + device + "' cannot be synced (cpu or cuda only)");
    }
    v.device_index = device_index;
    v.data = reinterpret_cast<const void*>(ptr);
    v.stream = reinterpret_cast<void*>(stream);
    return v;
  }
};

// One attribute of one object, with a cache of its newest value as a Python object.
class Attr {
 public:
  Attr(std::shared_ptr<ClientBox> box, AttrId id, ValueKind kind, std::string object,
       std::string name)
      : box_(std::move(box)),
        id_(id),
        kind_(kind),
        object_(std::move(object)),
        name_(std::move(name)) {}

  // The newest value this process can see (a cached object while nothing newer exists).
  py::object Get() {
    Refresh();
    return cached_;
  }
  // The newest version in the cluster (this client's view), without reading it.
  uint64_t Latest() { return box_->Get()->LatestVersion(id_); }
  // The version of the cached value: what this process last read or wrote.
  uint64_t known_version() const { return version_; }

  uint64_t Set(py::handle value) {
    ClientRef c(box_->Get());
    if (kind_ == ValueKind::kTensor)
      throw py::type_error(Label() + " holds tensors; assign a NumPy array or a torch tensor");
    uint64_t version;
    if (kind_ == ValueKind::kMsgpack) {
      msgpack::sbuffer& buf = detail::ThreadMsgpackBuffer();
      PackPython(value, buf);
      version = Publish(*c, buf.data(), buf.size());
    } else {
      std::string& buf = ScratchBuffer();
      EncodeScalar(kind_, value, buf);
      version = Publish(*c, buf.data(), buf.size());
    }
    // An immutable value can serve reads as is; a container the caller may still change is
    // read back from the bus instead.
    if (version > version_) {
      version_ = version;
      const bool immutable = value.is_none() || PyBool_Check(value.ptr()) ||
                             PyLong_Check(value.ptr()) || PyFloat_Check(value.ptr()) ||
                             PyUnicode_Check(value.ptr()) || PyBytes_Check(value.ptr());
      stale_ = !immutable;
      if (immutable) cached_ = py::reinterpret_borrow<py::object>(value);
    }
    return version;
  }

  uint64_t SetTensor(const TensorArg& t) {
    if (kind_ != ValueKind::kTensor)
      throw py::type_error(Label() + " holds " + std::string(ValueKindName(kind_)) +
                           " values, not tensors");
    ClientRef c(box_->Get());
    const TensorView view = t.View();
    Result<uint64_t> r = Status::Internal("unset");
    {
      py::gil_scoped_release nogil;
      r = c->WriteTensor(id_, view);
    }
    const uint64_t version = ValueOrRaise(std::move(r));
    if (version > version_) {
      version_ = version;
      stale_ = true;  // the package keeps the tensor it wrote; the buffer is read on demand
    }
    return version;
  }

  // Decodes a version newer than `have` straight into `dst` (CPU memory the caller keeps
  // alive) when it has dst's dtype and shape: no allocation, one copy. Returns None when there
  // is nothing newer, False when the newer value does not fit dst (read it with Get()), else
  // True. A failed read may leave dst partly written; the bus keeps the value.
  py::object ReadInto(const TensorArg& dst, uint64_t have) {
    if (kind_ != ValueKind::kTensor) throw py::type_error(Label() + " does not hold tensors");
    const TensorView v = dst.View();
    if (v.device != DeviceType::kCPU) throw py::value_error("read_into needs CPU memory");
    ClientRef c(box_->Get());
    if (c->LatestVersion(id_) <= have) return py::none();
    bool fits = true;
    Result<std::optional<UpdateInfo>> r = Status::Internal("unset");
    {
      py::gil_scoped_release nogil;
      r = c->ReadIfNewer(id_, have, [&](ByteSpan b) {
        detail::TensorBytes tb;
        EASYSYNC_RETURN_IF_ERROR(detail::ParseTensor(b, &tb));
        fits = tb.dtype == v.dtype && tb.ndim == v.shape.size() &&
               std::equal(v.shape.begin(), v.shape.end(), tb.shape);
        if (fits && !tb.data.empty())
          std::memcpy(const_cast<void*>(v.data), tb.data.data(), tb.data.size());
        return Status::Ok();
      });
    }
    if (!r.ok()) Raise(r.status());
    if (!r.value()) return py::none();
    if (!fits) return py::bool_(false);
    if (r.value()->version > version_) {
      info_ = *r.value();
      version_ = info_.version;
      stale_ = true;  // cached_ is not this version: Get() reads it again
    }
    c->RecordApplied(*r.value(), /*live=*/true);
    return py::bool_(true);
  }

  bool WaitForChange(double timeout_s) {
    ClientRef c(box_->Get());
    const uint64_t seen = version_;
    const AttrId id = id_;
    return WaitWithSignals(
        *c, [&] { return c->LatestVersion(id) > seen; }, DeadlineIn(timeout_s));
  }

  uint64_t version() {
    Refresh();
    return version_;
  }
  py::dict Info() {
    Refresh();
    if (info_.version != version_) {  // this process wrote version_: read its details back
      stale_ = true;
      Refresh();
    }
    py::dict d;
    d["version"] = info_.version;
    d["clock"] = info_.clock;
    d["writer"] = info_.writer;
    d["write_ns"] = info_.write_ns;
    d["bytes"] = info_.bytes;
    return d;
  }
  std::string kind() const { return std::string(ValueKindName(kind_)); }
  const std::string& name() const { return name_; }
  const std::string& object() const { return object_; }
  AttrId id() const { return id_; }
  const std::shared_ptr<ClientBox>& box() const { return box_; }

  static Deadline DeadlineIn(double timeout_s) {
    if (!(timeout_s >= 0)) throw py::value_error("timeout must be >= 0 seconds");
    const double capped = std::min(timeout_s, 1e9);
    return Clock::now() +
           std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(capped));
  }

 private:
  std::string Label() const { return "attribute " + object_ + "." + name_; }

  static std::string& ScratchBuffer() {
    thread_local std::string buf;
    return buf;
  }

  uint64_t Publish(Client& c, const char* data, size_t size) {
    Result<uint64_t> r = Status::Internal("unset");
    {
      py::gil_scoped_release nogil;
      r = c.Write(id_, size, [&](std::byte* dst) {
        if (size > 0) std::memcpy(dst, data, size);
      });
    }
    return ValueOrRaise(std::move(r));
  }

  void Refresh() {
    ClientRef c(box_->Get());
    if (!stale_ && c->LatestVersion(id_) <= version_) return;
    const uint64_t have = stale_ ? 0 : version_;
    Result<std::optional<UpdateInfo>> r = Status::Internal("unset");
    py::object decoded;
    if (kind_ == ValueKind::kTensor) {
      auto t = std::make_unique<Tensor>();
      {
        py::gil_scoped_release nogil;
        r = c->ReadIfNewer(id_, have,
                           [&](ByteSpan b) { return ValueTraits<Tensor>::Decode(b, t.get()); });
      }
      if (r.ok() && r.value()) decoded = py::cast(std::move(t));
    } else if (kind_ == ValueKind::kMsgpack) {
      r = c->ReadIfNewer(id_, have, [&](ByteSpan b) { return UnpackPython(b, &decoded); });
    } else {
      r = c->ReadIfNewer(id_, have, [&](ByteSpan b) { return DecodeScalar(kind_, b, &decoded); });
    }
    if (!r.ok()) Raise(r.status());
    // Another thread may have refreshed while the GIL was released: keep the newer one.
    if (!r.value() || (r.value()->version <= version_ && !stale_)) return;
    info_ = *r.value();
    c->RecordApplied(info_, /*live=*/have != 0);
    version_ = info_.version;
    cached_ = std::move(decoded);
    stale_ = false;
  }

  std::shared_ptr<ClientBox> box_;
  AttrId id_;
  ValueKind kind_;
  std::string object_, name_;
  py::object cached_ = py::none();
  UpdateInfo info_{};
  uint64_t version_ = 0;
  bool stale_ = false;  // cached_ is not the value of version_: read it again
};

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
                                      bool reconnect) {
  if (port <= 0 || port > 65535) throw py::value_error("port must be in 1..65535");
  if (!(timeout_s > 0)) throw py::value_error("timeout must be > 0 seconds");
  NetOptions o;
  o.host = host;
  o.port = static_cast<uint16_t>(port);
  o.token = token;
  o.ucx_transports = transports;
  o.connect_timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1e3));
  o.request_timeout = o.connect_timeout;
  o.reconnect = reconnect;
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
        py::arg("reconnect") = true);
}
