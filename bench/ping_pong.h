// The EasySync side of the latency suites: A writes `ping`, B echoes it as `pong`, through
// whatever transport the two clients use (a shared segment, or a hub).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "easysync/synced.h"

namespace easysync::bench {

class PingPong : public SyncedObject {
 public:
  // How long either side waits for the other before it gives up.
  static constexpr auto kPeerTimeout = std::chrono::seconds(10);

  PingPong(Client& c, const std::string& object) : SyncedObject(c, object) {}

  // B: signals it is ready, then echoes every ping until a negative one; an exit code.
  int Echo() {
    pong_.set(0);
    for (;;) {
      if (!ping_.wait_for_change(kPeerTimeout)) return 1;
      const int64_t v = ping_.get();
      if (v < 0) return 0;
      pong_.set(v);
    }
  }
  // A: waits until B is ready.
  bool WaitReady() {
    while (pong_.version() == 0) {
      if (!pong_.wait_for_change(kPeerTimeout)) return false;
    }
    return true;
  }
  // A: one round trip; true when B echoed i.
  bool Round(int64_t i) {
    ping_.set(i);
    return pong_.wait_for_change(kPeerTimeout) && pong_.get() == i;
  }
  // A: tells B to exit.
  void Finish() { ping_.set(-1); }

 private:
  Synced<int64_t> ping_{this, "ping"};
  Synced<int64_t> pong_{this, "pong"};
};

}  // namespace easysync::bench
