// Two processes share a score and an inventory through shared memory, no server:
//   quickstart write my_cluster   (in one terminal)
//   quickstart read my_cluster    (in another)
#include <easysync/easysync.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

struct State : easysync::SyncedObject {
  easysync::Synced<int64_t> score{this, "score", 0};
  easysync::Synced<std::vector<std::string>> inventory{this, "inventory",
                                                       std::vector<std::string>{}};
  explicit State(easysync::Client& c) : SyncedObject(c, "State") {}
};

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s write|read CLUSTER\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  try {
    auto client = easysync::shm_connect(argv[2]);
    State state(*client);
    if (mode == "write") {
      state.score = state.score + 1;
      auto inv = state.inventory.get();
      inv.push_back("item" + std::to_string(inv.size()));
      state.inventory = inv;
      std::printf("wrote score=%lld items=%zu\n", static_cast<long long>(state.score.get()),
                  inv.size());
    } else {
      std::printf("score=%lld items=%zu\n", static_cast<long long>(state.score.get()),
                  state.inventory.get().size());
    }
  } catch (const easysync::Error& e) {
    std::fprintf(stderr, "quickstart: %s\n", e.what());
    return 1;
  }
  return 0;
}
