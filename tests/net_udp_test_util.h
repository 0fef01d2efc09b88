// What the UDP tests share: client options, the objects they sync (a mixed Player, a tensor
// Scan) and a recognisable 4 MiB tensor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "easysync/easysync.h"
#include "easysync/net.h"
#include "net_test_util.h"

namespace easysync::testing {

inline NetOptions UdpTestOptions(uint16_t port) {
  NetOptions o;
  o.port = port;
  o.token = kTestToken;
  o.ucx_transports = "tcp";  // a dropped peer is seen at once
  return o;
}

// Positions best effort (the object's transport), the inventory reliable.
struct Player : SyncedObject {
  Synced<double> pos_x{this, "pos_x", 0.0};
  Synced<std::vector<std::string>> inventory{this, "inventory", AttrOptions{Transport::kReliable}};
  explicit Player(Client& c) : SyncedObject(c, "Player", "", Transport::kUdp) {}
};

struct Scan : SyncedObject {
  Synced<Tensor> image{this, "image"};
  explicit Scan(Client& c) : SyncedObject(c, "Scan", "", Transport::kUdp) {}
};

// 4 MiB (about 3500 datagrams) whose every element depends on the seed.
inline Tensor Filled(uint32_t seed) {
  Tensor t(DType::kInt32, {1 << 20});
  auto* p = t.mutable_data_as<uint32_t>();  // the bits are what matters
  for (uint32_t i = 0; i < (1u << 20); ++i) p[i] = i * 2654435761u ^ seed;
  return t;
}

}  // namespace easysync::testing
