// Network mode: clients of one easysync-hub share a counter. Each client adds 1 a few times a
// second and prints the increments it sees from the others:
//   easysync-hub --token secret &
//   EASYSYNC_TOKEN=secret net_counter --name a &  EASYSYNC_TOKEN=secret net_counter --name b
// The hub's address and token come from --host, --port, --token, or else from the environment:
// EASYSYNC_HUB_HOST (default 127.0.0.1), EASYSYNC_HUB_PORT (default 5000), EASYSYNC_TOKEN.
#include <easysync/easysync.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>

using easysync::Synced;

struct Counter : easysync::SyncedObject {
  Synced<int64_t> count{this, "count", 0};
  Synced<std::string> last_writer{this, "last_writer", std::string()};
  explicit Counter(easysync::Client& c) : SyncedObject(c, "Counter") {}
};

// The hub may still be starting (as in docker compose): retry while it is not there.
std::shared_ptr<easysync::Client> ConnectWithRetry(const easysync::NetOptions& options) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (;;) {
    auto client = easysync::TryConnect(options);
    if (client.ok()) return *client;
    const auto code = client.status().code();
    const bool retry =
        code == easysync::StatusCode::kUnavailable || code == easysync::StatusCode::kTimeout;
    if (!retry || std::chrono::steady_clock::now() > deadline)
      throw easysync::Error(client.status());
    std::fprintf(stderr, "net_counter: hub %s:%u not ready (%s), retrying\n", options.host.c_str(),
                 options.port, client.status().ToString().c_str());
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

int main(int argc, char** argv) {
  easysync::NetOptions options;  // an empty token: the library reads EASYSYNC_TOKEN
  if (const char* host = std::getenv("EASYSYNC_HUB_HOST")) options.host = host;
  const char* port_env = std::getenv("EASYSYNC_HUB_PORT");
  std::string port = port_env ? port_env : "5000";
  std::string name = "pid" + std::to_string(getpid()), rounds_flag = "20";
  const std::map<std::string, std::string*> flags = {{"--host", &options.host},
                                                     {"--port", &port},
                                                     {"--token", &options.token},
                                                     {"--name", &name},
                                                     {"--rounds", &rounds_flag}};
  bool usage = argc % 2 == 0;  // flags come in pairs
  for (int i = 1; i + 1 < argc; i += 2) {
    const auto flag = flags.find(argv[i]);
    if (flag == flags.end()) {
      usage = true;
    } else {
      *flag->second = argv[i + 1];
    }
  }
  const int rounds = std::atoi(rounds_flag.c_str());
  const long port_number = std::strtol(port.c_str(), nullptr, 10);
  if (usage || port_number <= 0 || port_number > 65535 || rounds < 1) {
    std::fprintf(stderr, "usage: %s [--host H] [--port P] [--token T] [--name NAME] [--rounds N]\n",
                 argv[0]);
    return 2;
  }
  options.port = static_cast<uint16_t>(port_number);
  try {
    auto client = ConnectWithRetry(options);
    Counter counter(*client);
    std::printf("[%s] connected to %s:%u as client %u, count=%lld\n", name.c_str(),
                options.host.c_str(), options.port, client->id(),
                static_cast<long long>(counter.count.get()));
    // Each client starts at a random point of the 250 ms period: clients started together would
    // otherwise increment at the same instants, and collide (below) far more often.
    constexpr auto kPeriod = std::chrono::milliseconds(250);
    auto next_write =
        std::chrono::steady_clock::now() + kPeriod * (std::random_device{}() % 100) / 100;
    for (int round = 1; round <= rounds;) {
      // Sleep until the next increment is due, waking at once for each change another
      // client makes (wait_for_change reads it into the proxy). count and last_writer are two
      // writes, not one transaction: the name printed is the newest, not necessarily the
      // writer of this count.
      const auto now = std::chrono::steady_clock::now();
      if (now < next_write) {
        if (counter.count.wait_for_change(next_write - now) &&
            counter.count.info().writer != client->id()) {
          std::printf("[%s] sees count=%lld, last_writer=%s\n", name.c_str(),
                      static_cast<long long>(counter.count.get()),
                      counter.last_writer.get().c_str());
        }
        continue;
      }
      // A read, then a write: when two clients increment at the same instant both write the
      // same number and one increment is lost (the last writer wins). Fine for a demo.
      counter.last_writer = name;
      const int64_t count = counter.count.get() + 1;
      counter.count = count;
      std::printf("[%s] round %d: count=%lld\n", name.c_str(), round++,
                  static_cast<long long>(count));
      std::fflush(stdout);
      next_write += kPeriod;
    }
    std::printf("[%s] done. count=%lld stats: %s\n", name.c_str(),
                static_cast<long long>(counter.count.get()), client->stats().ToString().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "net_counter: %s\n", e.what());
    return 1;
  }
  return 0;
}
