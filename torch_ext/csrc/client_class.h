// torch.classes.easysync.Client: a cluster connection usable from Python and TorchScript.
//
//   c = torch.classes.easysync.Client("shm", "my_cluster")       # or ("net", host, port, token)
//   c.write_tensor("Model", "weights", w)                       # -> version
//   w2 = c.read_tensor("Model", "weights")                      # Optional[Tensor], on the CPU
//   c.write_int("Model", "step", 7); c.read_int("Model", "step")
//
// Attributes are addressed by (object, attribute) and declared on first use with the kind
// of the method: tensor, int (int64), float (float64) or str, the kinds of C++
// Synced<torch::Tensor / easysync::Tensor>, Synced<int64_t>, Synced<double> and
// Synced<std::string>, so each side reads what the other writes. Using one attribute with
// two kinds is an error. version() and wait_for_change() need the attribute declared first
// (by a read or a write through this instance), since only that fixes its kind.
//
// Thread-safety: every method may be called from any thread; close() while another call
// runs lets that call finish. Errors: c10::Error (RuntimeError in Python) with the
// easysync Status's message.
#pragma once

#include <torch/custom_class.h>
#include <torch/library.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "easysync/client.h"

namespace easysync::torch_ext {

class TorchClient : public torch::CustomClassHolder {
 public:
  // mode "shm": join the shared-memory cluster named `address` (port and token unused);
  // mode "net": connect to the hub at address:port with `token` (empty: $EASYSYNC_TOKEN);
  // mode "shared": the connection shared under the ticket `address` (easysync::ShareClient;
  // from Python, easysync.Client.torch()).
  TorchClient(std::string mode, std::string address, int64_t port, std::string token);
  // Wraps an existing connection (C++ callers).
  explicit TorchClient(std::shared_ptr<Client> client);

  // Writes publish and return the new version. A CUDA tensor is written from the device on
  // the current stream (network mode sends only the changed blocks), a CPU one from memory.
  int64_t WriteTensor(std::string object, std::string attribute, const at::Tensor& value);
  int64_t WriteInt(std::string object, std::string attribute, int64_t value);
  int64_t WriteFloat(std::string object, std::string attribute, double value);
  int64_t WriteStr(std::string object, std::string attribute, std::string value);

  // The newest value, or nullopt while the attribute has none. Tensors come back as new
  // contiguous CPU tensors the caller owns.
  std::optional<at::Tensor> ReadTensor(std::string object, std::string attribute);
  std::optional<int64_t> ReadInt(std::string object, std::string attribute);
  std::optional<double> ReadFloat(std::string object, std::string attribute);
  std::optional<std::string> ReadStr(std::string object, std::string attribute);

  // The newest version of a declared attribute (0: no value yet). Never blocks.
  int64_t Version(std::string object, std::string attribute);
  // Waits up to timeout_s seconds for a version newer than the last one this instance read,
  // wrote or waited for; true when there is one.
  bool WaitForChange(std::string object, std::string attribute, double timeout_s);

  // Every field of easysync::Stats.
  c10::Dict<std::string, double> StatsDict();
  // The cluster's id for this client.
  int64_t Id();
  // Drops the connection (the last holder's close disconnects); later calls raise.
  void Close();

 private:
  struct Attr {
    AttrId id;
    ValueKind kind;
    uint64_t applied = 0;  // newest version this instance read or wrote (counts applies)
    uint64_t seen = 0;     // ... read, wrote or waited for (what wait_for_change waits past)
  };
  std::shared_ptr<Client> Live();
  // Declares the attribute with `kind` on first use; checks the kind on later ones.
  std::pair<std::shared_ptr<Client>, AttrId> Attribute(const std::string& object,
                                                       const std::string& attribute,
                                                       ValueKind kind);
  // An attribute this instance declared before (any kind).
  std::pair<std::shared_ptr<Client>, AttrId> Declared(const std::string& object,
                                                      const std::string& attribute);
  // Raises the attribute's seen version (and its applied one, for a read or a write) to
  // `version`; returns the one before.
  uint64_t Saw(const std::string& object, const std::string& attribute, uint64_t version,
               bool applied);
  template <class T>
  int64_t WriteValue(const std::string& object, const std::string& attribute, const T& value);
  template <class T>
  std::optional<T> ReadValue(const std::string& object, const std::string& attribute);

  std::mutex mu_;  // guards client_ and attrs_
  std::shared_ptr<Client> client_;
  std::map<std::pair<std::string, std::string>, Attr> attrs_;
};

// Adds the class to the extension's library (called from its TORCH_LIBRARY block).
void RegisterClientClass(torch::Library& m);

}  // namespace easysync::torch_ext
