// What the UDP tests share: client options, the objects they sync (a mixed Player, a tensor
// Scan) and a recognisable 4 MiB tensor.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
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

// A writes one 4 MiB tensor to B over UDP, then another; B must show only those two, whole
// (never a mix of their fragments), and end with the second.
struct WholeOrNot {
  bool first_arrived = false, whole = true, second_arrived = false;
};
inline WholeOrNot SendTwoTensors(uint16_t port) {
  auto ca = connect(UdpTestOptions(port));
  auto cb = connect(UdpTestOptions(port));
  Scan a(*ca), b(*cb);
  const Tensor first = Filled(1), second = Filled(2);
  WholeOrNot r;
  a.image = first;
  r.first_arrived = WaitFor([&] { return b.image.get() == first; }, std::chrono::seconds(60));
  if (!r.first_arrived) return r;
  a.image = second;
  r.second_arrived = WaitFor(
      [&] {
        const Tensor t = b.image.get();
        r.whole = r.whole && (t == first || t == second);
        return t == second;
      },
      std::chrono::seconds(60));
  std::fprintf(stderr, "b: %s\n", cb->stats().ToString().c_str());
  return r;
}

// Watches a growing double on its own thread until destroyed: every value it shows must be
// newer than the one before (values grow with versions in these tests, so a value going
// back would be a version going back).
class MonotonicWatch {
 public:
  explicit MonotonicWatch(Synced<double>& x) : x_(x), thread_([this] { Run(); }) {}
  ~MonotonicWatch() { Stop(); }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  int backwards() const { return backwards_.load(); }
  int seen() const { return seen_.load(); }

 private:
  void Run() {
    double last = 0;
    uint64_t last_version = 0;
    while (!stop_.load()) {
      x_.wait_for_change(std::chrono::milliseconds(5));
      const double v = x_.get();
      const uint64_t version = x_.version();
      if (v < last || version < last_version) {
        std::fprintf(stderr, "went back: %g (v%llu) after %g (v%llu)\n", v,
                     static_cast<unsigned long long>(version), last,
                     static_cast<unsigned long long>(last_version));
        backwards_.fetch_add(1);
      }
      if (v != last) seen_.fetch_add(1);
      last = v;
      last_version = version;
    }
  }
  Synced<double>& x_;
  std::atomic<bool> stop_{false};
  std::atomic<int> backwards_{0}, seen_{0};
  std::thread thread_;
};

}  // namespace easysync::testing
