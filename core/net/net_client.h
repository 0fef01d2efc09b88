// NetClient internals reachable by tests (the public API is easysync/net.h).
#pragma once

#include <memory>

#include "easysync/net.h"
#include "net/udp_wire.h"

namespace easysync::net {

// TryConnect speaking protocol `version` (tests check that a hub rejects other versions).
Result<std::shared_ptr<Client>> TryConnectWithVersion(const NetOptions& options, uint16_t version);

// Tests: the local port of the client's UDP socket (0: none), and its datagram key.
uint16_t UdpPortForTests(Client& client);
udp::Key UdpKeyForTests(Client& client);

// Routes WriteTensor of host tensors through the device-delta path, on the CUDA kernels' host
// twins (how that path is tested without a GPU). No effect on other clients.
void SetDevicePathForHostTensors(Client& client, bool on);
// With that path on: whole values in segments may go in place as they would from a GPU whose
// memory UCX moves (hashed by the host twins, UCX reading host memory), how that path is
// tested without one. Honours NetOptions::device_direct (kAuto: only over RDMA).
void SetInPlaceForHostTensors(Client& client, bool on);
// Whether the client's UCX moves CUDA device memory (its log line's "CUDA memory yes").
bool UcxMovesCudaMemory(Client& client);
// Benches and tests: sets NetOptions::device_direct for later writes, and makes the next
// device write of attr whole (as after another writer's), so that whole values can be timed.
void SetDeviceDirect(Client& client, NetOptions::DeviceDirect mode);
void ForgetDeviceBase(Client& client, AttrId attr);

}  // namespace easysync::net
