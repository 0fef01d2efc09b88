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

}  // namespace easysync::net
