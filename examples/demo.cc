// The demo: a writer updates a score, a status string, a nested inventory and a 64 MiB
// float32 tensor for a few seconds; a reader in another process prints what it sees.
//   demo reader CLUSTER &  demo writer CLUSTER [SECONDS]
#include <easysync/easysync.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

using easysync::Synced;
using easysync::Tensor;
using easysync::Value;

struct World : easysync::SyncedObject {
  Synced<int64_t> score{this, "score", 0};
  Synced<std::string> status{this, "status", std::string("starting")};
  Synced<Value> inventory{this, "inventory", Value(Value::List{})};
  Synced<Tensor> weights{this, "weights"};
  Synced<int64_t> tick{this, "tick", 0};  // written last in each round
  Synced<bool> done{this, "done", false};
  explicit World(easysync::Client& c) : SyncedObject(c, "World") {}
};

constexpr int64_t kElements = 16 << 20;  // 64 MiB of float32

int Writer(easysync::Client& client, double seconds) {
  World w(client);
  Tensor weights(easysync::DType::kFloat32, {kElements});
  const char* items[] = {"sword", "shield", "potion", "map", "key"};
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int64_t tick = w.tick.get();
  while (std::chrono::steady_clock::now() < end) {
    ++tick;
    w.score = w.score.get() + 10;
    w.status = "round " + std::to_string(tick);
    Value::List inv = w.inventory.get().as<Value::List>();
    inv.push_back(Value(Value::Map{{"item", items[tick % 5]}, {"round", tick}}));
    if (inv.size() > 4) inv.erase(inv.begin());
    w.inventory = Value(inv);
    // A training step touches a few weights: first, last and a stride in between.
    float* p = weights.mutable_data_as<float>();
    for (int64_t i = 0; i < kElements; i += kElements / 8) p[i] = static_cast<float>(tick);
    p[kElements - 1] = static_cast<float>(tick);
    w.weights = weights;
    w.tick = tick;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  w.done = true;
  std::printf("[writer] %lld rounds; stats: %s\n", static_cast<long long>(tick),
              client.stats().ToString().c_str());
  return 0;
}

int Reader(easysync::Client& client) {
  World w(client);
  int64_t seen = -1;
  for (;;) {
    // Wake on a new round or on the end, whichever comes first.
    const uint64_t tick_v = w.tick.version(), done_v = w.done.version();
    auto changed = [&] {
      return client.LatestVersion(w.tick.attr()) > tick_v ||
             client.LatestVersion(w.done.attr()) > done_v;
    };
    if (!client.WaitUntil(changed, easysync::Clock::now() + std::chrono::seconds(20))) {
      std::fprintf(stderr, "[reader] no update for 20 s\n");
      return 1;
    }
    if (w.done.get()) break;
    const int64_t tick = w.tick.get();
    if (tick == seen) continue;
    seen = tick;
    const Tensor t = w.weights.get();
    const float* p = t.data_as<float>();
    const Value::List inv = w.inventory.get().as<Value::List>();
    std::string names;
    for (const Value& v : inv)
      names += (names.empty() ? "" : ",") + v.as<Value::Map>().at("item").as<std::string>();
    std::printf(
        "[reader] tick=%lld score=%lld status='%s' inventory=[%s] weights: %zu MiB, "
        "w[0]=%.0f w[last]=%.0f  latency=%.3f ms\n",
        static_cast<long long>(tick), static_cast<long long>(w.score.get()), w.status.get().c_str(),
        names.c_str(), t.nbytes() >> 20, t.numel() ? p[0] : 0.f, t.numel() ? p[t.numel() - 1] : 0.f,
        client.stats().latency_last_ms);
    std::fflush(stdout);
  }
  const auto s = client.stats();
  std::printf(
      "[reader] done. stats: latency_ms=%.3f bytes_recv=%llu packets_recv=%llu "
      "updates_applied=%llu\n",
      s.latency_ms, static_cast<unsigned long long>(s.bytes_recv),
      static_cast<unsigned long long>(s.packets_recv),
      static_cast<unsigned long long>(s.updates_applied));
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s writer|reader CLUSTER [SECONDS]\n", argv[0]);
    return 2;
  }
  try {
    auto client = easysync::shm_connect(argv[2]);
    const std::string role = argv[1];
    if (role == "writer") return Writer(*client, argc > 3 ? std::stod(argv[3]) : 4.0);
    if (role == "reader") return Reader(*client);
    std::fprintf(stderr, "unknown role '%s'\n", role.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "demo: %s\n", e.what());
    return 1;
  }
}
