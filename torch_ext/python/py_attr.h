// The binding's objects: a connection (ClientBox), a call's hold on it (ClientRef), a
// tensor handed over by address (TensorArg), and one attribute with its cached value (Attr).
// REQUIRES: the GIL, for everything here unless a comment says otherwise.
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "easysync/client.h"
#include "py_values.h"

namespace easysync::python {

namespace py = pybind11;

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
inline bool WaitWithSignals(Client& c, FunctionRef<bool()> ready, Deadline deadline) {
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

inline Transport ParseTransport(const std::string& t) {
  if (t == "tcp" || t == "reliable" || t == "ucx") return Transport::kReliable;
  if (t == "udp" || t == "best_effort") return Transport::kUdp;
  if (t.empty() || t == "default") return Transport::kDefault;
  throw py::value_error("transport must be 'tcp' (reliable) or 'udp' (best effort), not '" + t +
                        "'");
}

inline DType ParseDType(const std::string& name) {
  if (const auto t = DTypeFromName(name)) return *t;
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
    // The newest version's details (what version() names), without reading its value.
    ClientRef c(box_->Get());
    UpdateInfo info = info_;
    if (c->LatestVersion(id_) > info_.version || info_.version != version_) {
      auto r = c->ReadInfoIfNewer(id_, 0);
      if (!r.ok()) Raise(r.status());
      if (r.value()) info = *r.value();
    }
    py::dict d;
    d["version"] = info.version;
    d["clock"] = info.clock;
    d["writer"] = info.writer;
    d["write_ns"] = info.write_ns;
    d["bytes"] = info.bytes;
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

}  // namespace easysync::python
