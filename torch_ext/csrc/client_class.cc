#include "client_class.h"

#include <c10/core/Stream.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>

#include "easysync/device_codec.h"
#include "easysync/net.h"
#include "easysync/torch.h"

namespace easysync::torch_ext {
namespace {

constexpr const char* kClass = "easysync.Client";

void Check(const Status& s, const char* method) {
  TORCH_CHECK(s.ok(), kClass, ".", method, ": ", s.ToString());
}

template <class T>
T OrThrow(Result<T>&& r, const char* method) {
  Check(r.status(), method);
  return std::move(r).value();
}

std::shared_ptr<Client> Connect(const std::string& mode, const std::string& address, int64_t port,
                                const std::string& token) {
  if (mode == "shm") return OrThrow(TryShmConnect(address), "__init__");
  if (mode == "shared") {  // a connection the Python package shares (easysync.Client.torch())
    char* end = nullptr;
    const uint64_t ticket = std::strtoull(address.c_str(), &end, 10);
    TORCH_CHECK(!address.empty() && *end == '\0', kClass,
                ": mode \"shared\" takes a ticket number, got \"", address, "\"");
    return OrThrow(TakeSharedClient(ticket), "__init__");
  }
  TORCH_CHECK(mode == "net", kClass, ": mode must be \"shm\", \"net\" or \"shared\", got \"", mode,
              "\"");
  TORCH_CHECK(port > 0 && port <= 65535, kClass, ": port must be in [1, 65535], got ", port);
  NetOptions options;
  options.host = address;
  options.port = static_cast<uint16_t>(port);
  options.token = token;
  return OrThrow(TryConnect(options), "__init__");
}

// False in a build without the CUDA kernels (the core's copy of the codec is built like
// ours): then torch copies a CUDA tensor to the host instead of Client::WriteTensor.
bool CoreReadsDeviceMemory() {
  static const bool available = codec::MakeCudaDeltaBackend(nullptr).ok();
  return available;
}

}  // namespace

TorchClient::TorchClient(std::string mode, std::string address, int64_t port, std::string token)
    : client_(Connect(mode, address, port, token)) {}

TorchClient::TorchClient(std::shared_ptr<Client> client) : client_(std::move(client)) {
  TORCH_CHECK(client_ != nullptr, kClass, ": null client");
}

std::shared_ptr<Client> TorchClient::Live() {
  std::lock_guard<std::mutex> lock(mu_);
  TORCH_CHECK(client_ != nullptr, kClass, ": the client is closed");
  return client_;
}

std::pair<std::shared_ptr<Client>, AttrId> TorchClient::Attribute(const std::string& object,
                                                                  const std::string& attribute,
                                                                  ValueKind kind) {
  std::lock_guard<std::mutex> lock(mu_);
  TORCH_CHECK(client_ != nullptr, kClass, ": the client is closed");
  const auto key = std::make_pair(object, attribute);
  if (auto it = attrs_.find(key); it != attrs_.end()) {
    TORCH_CHECK(it->second.kind == kind, kClass, ": ", object, ".", attribute, " holds ",
                ValueKindName(it->second.kind), " values, not ", ValueKindName(kind));
    return {client_, it->second.id};
  }
  // Declared under the lock: two threads' first uses must not both declare.
  const AttrId id = OrThrow(client_->Declare(object, attribute, kind, nullptr), "declare");
  attrs_.emplace(key, Attr{id, kind});
  return {client_, id};
}

std::pair<std::shared_ptr<Client>, AttrId> TorchClient::Declared(const std::string& object,
                                                                 const std::string& attribute) {
  std::lock_guard<std::mutex> lock(mu_);
  TORCH_CHECK(client_ != nullptr, kClass, ": the client is closed");
  auto it = attrs_.find(std::make_pair(object, attribute));
  TORCH_CHECK(it != attrs_.end(), kClass, ": ", object, ".", attribute,
              " has not been used through this client yet; read or write it first, which "
              "declares it with its kind");
  return {client_, it->second.id};
}

uint64_t TorchClient::Saw(const std::string& object, const std::string& attribute, uint64_t version,
                          bool applied) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = attrs_.find(std::make_pair(object, attribute));
  if (it == attrs_.end()) return version;  // closed meanwhile
  Attr& a = it->second;
  const uint64_t before = applied ? a.applied : a.seen;
  if (applied) a.applied = std::max(a.applied, version);
  a.seen = std::max(a.seen, version);
  return before;
}

template <class T>
int64_t TorchClient::WriteValue(const std::string& object, const std::string& attribute,
                                const T& value) {
  const auto [client, id] = Attribute(object, attribute, ValueTraits<T>::kKind);
  Client& c = *client;
  const AttrId attr = id;
  const uint64_t version = ValueTraits<T>::WithEncoding(value, [&](size_t size, auto&& encode) {
    return OrThrow(c.Write(attr, size, encode), "write");
  });
  Saw(object, attribute, version, /*applied=*/true);
  return static_cast<int64_t>(version);
}

template <class T>
std::optional<T> TorchClient::ReadValue(const std::string& object, const std::string& attribute) {
  const auto [client, id] = Attribute(object, attribute, ValueTraits<T>::kKind);
  T value{};
  const auto info = OrThrow(
      client->ReadIfNewer(
          id, 0, [&value](ByteSpan bytes) { return ValueTraits<T>::Decode(bytes, &value); }),
      "read");
  if (!info) return std::nullopt;
  // Counted once per new version, as a Synced<T> proxy counts it.
  if (Saw(object, attribute, info->version, /*applied=*/true) < info->version) {
    client->RecordApplied(*info, /*live=*/true);
  }
  return value;
}

int64_t TorchClient::WriteTensor(std::string object, std::string attribute,
                                 const at::Tensor& value) {
  const auto dtype = TorchTensorDType(value);
  Check(dtype.status(), "write_tensor");
  TORCH_CHECK(static_cast<size_t>(value.dim()) <= kMaxTensorDims, kClass,
              ".write_tensor: a tensor attribute has at most ", kMaxTensorDims, " dims, got ",
              value.dim());
  if (!value.is_cuda() || !CoreReadsDeviceMemory()) return WriteValue(object, attribute, value);
  const auto [client, id] = Attribute(object, attribute, ValueKind::kTensor);
  // Contiguous on the device, on the current stream; Client::WriteTensor copies or diffs it
  // on that same stream, so work queued before this call is ordered before the read.
  const at::Tensor dense = value.contiguous();
  const c10::Stream stream =
      c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA).getStream(dense.device());
  TensorView view;
  view.dtype = dtype.value();
  view.shape = {dense.sizes().data(), dense.sizes().size()};
  view.device = DeviceType::kCUDA;
  view.device_index = dense.device().index();
  view.data = dense.const_data_ptr();
  view.stream = stream.native_handle();
  const uint64_t version = OrThrow(client->WriteTensor(id, view), "write_tensor");
  Saw(object, attribute, version, /*applied=*/true);
  return static_cast<int64_t>(version);
}

int64_t TorchClient::WriteInt(std::string object, std::string attribute, int64_t value) {
  return WriteValue(object, attribute, value);
}

int64_t TorchClient::WriteFloat(std::string object, std::string attribute, double value) {
  return WriteValue(object, attribute, value);
}

int64_t TorchClient::WriteStr(std::string object, std::string attribute, std::string value) {
  return WriteValue(object, attribute, value);
}

std::optional<at::Tensor> TorchClient::ReadTensor(std::string object, std::string attribute) {
  return ReadValue<at::Tensor>(object, attribute);
}

std::optional<int64_t> TorchClient::ReadInt(std::string object, std::string attribute) {
  return ReadValue<int64_t>(object, attribute);
}

std::optional<double> TorchClient::ReadFloat(std::string object, std::string attribute) {
  return ReadValue<double>(object, attribute);
}

std::optional<std::string> TorchClient::ReadStr(std::string object, std::string attribute) {
  return ReadValue<std::string>(object, attribute);
}

int64_t TorchClient::Version(std::string object, std::string attribute) {
  const auto [client, id] = Declared(object, attribute);
  return static_cast<int64_t>(client->LatestVersion(id));
}

bool TorchClient::WaitForChange(std::string object, std::string attribute, double timeout_s) {
  TORCH_CHECK(std::isfinite(timeout_s) && timeout_s >= 0, kClass,
              ".wait_for_change: timeout_s must be a finite number >= 0, got ", timeout_s);
  const auto [client, id] = Declared(object, attribute);
  const uint64_t seen = Saw(object, attribute, 0, /*applied=*/false);
  const auto timeout = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(std::min(timeout_s, 1e9)));
  Client& c = *client;
  const AttrId attr = id;
  uint64_t latest = 0;
  const bool changed = c.WaitUntil(
      [&] {
        latest = c.LatestVersion(attr);
        return latest > seen;
      },
      Clock::now() + timeout);
  if (changed) Saw(object, attribute, latest, /*applied=*/false);
  return changed;
}

c10::Dict<std::string, double> TorchClient::StatsDict() {
  c10::Dict<std::string, double> out;
  for (const auto& [name, value] : Live()->stats().AsMap()) out.insert(name, value);
  return out;
}

int64_t TorchClient::Id() { return Live()->id(); }

void TorchClient::Close() {
  std::shared_ptr<Client> last;
  {
    std::lock_guard<std::mutex> lock(mu_);
    last = std::move(client_);
    attrs_.clear();
  }
  // Disconnects here, outside the lock, unless a call in flight still holds the client.
  last.reset();
}

void RegisterClientClass(torch::Library& m) {
  using torch::arg;
  m.class_<TorchClient>("Client")
      .def(torch::init<std::string, std::string, int64_t, std::string>(),
           "Connects: mode \"shm\" (address = cluster name) or \"net\" (hub address, port, "
           "token)",
           {arg("mode"), arg("address"), arg("port") = int64_t{5000}, arg("token") = ""})
      .def("write_tensor", &TorchClient::WriteTensor, "Publishes a tensor; returns its version",
           {arg("object"), arg("attribute"), arg("value")})
      .def("write_int", &TorchClient::WriteInt, "Publishes an int64; returns its version",
           {arg("object"), arg("attribute"), arg("value")})
      .def("write_float", &TorchClient::WriteFloat, "Publishes a float64; returns its version",
           {arg("object"), arg("attribute"), arg("value")})
      .def("write_str", &TorchClient::WriteStr, "Publishes a string; returns its version",
           {arg("object"), arg("attribute"), arg("value")})
      .def("read_tensor", &TorchClient::ReadTensor, "The newest tensor (CPU), or None",
           {arg("object"), arg("attribute")})
      .def("read_int", &TorchClient::ReadInt, "The newest int64, or None",
           {arg("object"), arg("attribute")})
      .def("read_float", &TorchClient::ReadFloat, "The newest float64, or None",
           {arg("object"), arg("attribute")})
      .def("read_str", &TorchClient::ReadStr, "The newest string, or None",
           {arg("object"), arg("attribute")})
      .def("version", &TorchClient::Version, "The newest version (0: none yet)",
           {arg("object"), arg("attribute")})
      .def("wait_for_change", &TorchClient::WaitForChange,
           "Waits for a version newer than the last one seen; False on timeout",
           {arg("object"), arg("attribute"), arg("timeout_s")})
      .def("stats", &TorchClient::StatsDict, "Every easysync::Stats field by name")
      .def("close", &TorchClient::Close, "Disconnects; later calls raise")
      .def("id", &TorchClient::Id, "This client's id in the cluster");
}

}  // namespace easysync::torch_ext
