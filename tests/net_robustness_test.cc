// Network mode under stress: a 1 GiB tensor through the hub, a client killed with SIGKILL in
// the middle of sending a large value, and the goodbyes of a client that closes and of a hub
// that stops. A real easysync-hub process, real client processes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "easysync/easysync.h"
#include "easysync/net.h"
#include "net_test_util.h"

namespace easysync {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using testing::Gate;
using testing::HubProcess;
using testing::kTestToken;
using testing::Spawn;
using testing::WaitChild;
using testing::WaitFor;

NetOptions Options(uint16_t port, uint64_t max_message_bytes = 256ull << 20) {
  NetOptions o;
  o.port = port;
  o.token = kTestToken;
  o.max_message_bytes = max_message_bytes;
  // Large values: leave room for the UCX transfers on a loaded machine (under ASan on a
  // 2-core machine beside the 256 MiB test, a DECLARE once waited more than 60 s).
  o.request_timeout = milliseconds(180000);
  // The hub answers no PING while a message waits for a 1 GiB value it is still decoding
  // (a DECLARE, another write of it): seconds under the sanitizers, more than the default
  // keep-alive timeout.
  o.keepalive_timeout = milliseconds(120000);
  return o;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string LogPath(const std::string& purpose) {
  return (std::filesystem::temp_directory_path() /
          ("easysync_hub_" + std::to_string(getpid()) + "_" + purpose + ".log"))
      .string();
}

// The bits of element i of the big tensor: a recognisable pattern every kStride elements and
// at the last one, zero elsewhere (the Tensor constructor zero-fills).
constexpr size_t kStride = 4099;  // prime: the marks do not line up with pages or chunks
uint32_t Mark(size_t i, uint32_t seed) { return static_cast<uint32_t>(i * 2654435761u) ^ seed; }
uint32_t Expected(size_t i, size_t n, uint32_t seed) {
  return (i % kStride == 0 || i == n - 1) ? Mark(i, seed) : 0u;
}

Tensor BigTensor(size_t n, uint32_t seed) {
  Tensor t(DType::kFloat32, {static_cast<int64_t>(n)});
  auto* bits = reinterpret_cast<uint32_t*>(t.mutable_data());
  for (size_t i = 0; i < n; i += kStride) bits[i] = Mark(i, seed);
  bits[n - 1] = Mark(n - 1, seed);
  return t;
}

// 0 when t is exactly BigTensor(n, seed), else the first mismatching index + 1 (or n + 1 for
// a wrong shape or dtype).
size_t Mismatch(const Tensor& t, size_t n, uint32_t seed) {
  if (t.dtype() != DType::kFloat32 || t.numel() != n || t.shape().size() != 1) return n + 1;
  const auto* bits = reinterpret_cast<const uint32_t*>(t.data());
  for (size_t i = 0; i < n; ++i) {
    if (bits[i] != Expected(i, n, seed)) return i + 1;
  }
  return 0;
}

struct Big : SyncedObject {
  Synced<Tensor> t{this, "t"};
  Synced<int64_t> x{this, "x"};
  explicit Big(Client& c) : SyncedObject(c, "Big") {}
};

// Whether the file at path comes to contain text within timeout (read every 10 ms).
bool FileComesToHave(const std::string& path, const std::string& text, milliseconds timeout) {
  return WaitFor([&] { return ReadFile(path).find(text) != std::string::npos; }, timeout,
                 milliseconds(10));
}

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(NetRobustness, OneGibTensorCrossesTheHubBitExact) {
  // 1 GiB of float32, under the sanitizers too (about 11 s there, measured on 2 CPUs). Peak
  // memory: A, the hub and B each hold about two copies (2.2 GB peak RSS, measured).
  constexpr size_t kElements = size_t{1} << 28;
  constexpr uint32_t kSeed = 0x5eed1234;
  // The hub relays the tensor as the codec frame it came in (mostly zeros: it compresses), but
  // a late joiner's snapshot is the raw value: the limit must hold it plus a few headers.
  constexpr uint64_t kLimit = kElements * 4 + (64u << 20);
  HubProcess hub({"--max-message-bytes", std::to_string(kLimit)});
  ASSERT_NE(hub.port(), 0) << "the hub did not start";
  const uint16_t port = hub.port();
  Gate written;  // A -> B: the value is at the hub
  Gate done;     // B -> A: B holds it; A may leave
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t a = Spawn([&] {
    auto c = connect(Options(port, kLimit));
    Big s(*c);
    Tensor t = BigTensor(kElements, kSeed);
    const auto w0 = std::chrono::steady_clock::now();
    const uint64_t v = s.t.set(t);
    std::fprintf(stderr, "A: wrote %zu MiB as version %llu in %.2f s\n", t.nbytes() >> 20,
                 static_cast<unsigned long long>(v), Since(w0));
    written.Open();
    return v == 1 && done.Wait(seconds(120)) ? 0 : 1;
  });
  const pid_t b = Spawn([&] {
    if (!written.Wait(seconds(120))) return 2;
    const auto r0 = std::chrono::steady_clock::now();
    auto c = connect(Options(port, kLimit));
    Big s(*c);  // a late joiner: DECLARED carries the whole value
    if (!c->WaitUntil([&] { return s.t.version() >= 1; }, Clock::now() + seconds(60))) return 3;
    const Tensor t = s.t.get();
    std::fprintf(stderr, "B: received %zu MiB in %.2f s\n", t.nbytes() >> 20, Since(r0));
    const size_t bad = Mismatch(t, kElements, kSeed);
    if (bad != 0) std::fprintf(stderr, "B: first mismatch at element %zu\n", bad - 1);
    done.Open();
    return bad == 0 && s.t.version() == 1 ? 0 : 4;
  });
  EXPECT_EQ(WaitChild(b, seconds(240)), 0);
  EXPECT_EQ(WaitChild(a, seconds(60)), 0);
  EXPECT_EQ(hub.Stop(), 0);
  std::fprintf(stderr, "total %.2f s\n", Since(t0));
}

TEST(NetRobustness, ClientKilledMidTransferLeavesTheHubServing) {
  constexpr size_t kElements = size_t{1} << 24;  // 64 MiB of float32
  const std::string log = LogPath("killed");
  HubProcess hub({}, log);
  ASSERT_NE(hub.port(), 0) << "the hub did not start";
  const uint16_t port = hub.port();
  int id_pipe[2];
  ASSERT_EQ(pipe(id_pipe), 0);
  Gate seen;  // W -> test: W holds one of K's versions
  Gate go;    // test -> C: K is dead, write
  // K: writes a 64 MiB tensor in a loop until it is killed (a deadline if it is not).
  const pid_t k = Spawn([&] {
    auto c = connect(Options(port));
    Big s(*c);
    const uint32_t id = c->id();
    if (write(id_pipe[1], &id, sizeof(id)) != sizeof(id)) return 2;
    Tensor t = BigTensor(kElements, 1);
    const auto deadline = std::chrono::steady_clock::now() + seconds(120);
    for (uint32_t i = 1; std::chrono::steady_clock::now() < deadline; ++i) {
      reinterpret_cast<uint32_t*>(t.mutable_data())[1] = i;  // each version differs
      s.t = t;
    }
    return 3;  // never killed
  });
  // W: sees a version of K's tensor, then C's writes after K died.
  const pid_t w = Spawn([&] {
    auto c = connect(Options(port));
    Big s(*c);
    if (!c->WaitUntil([&] { return s.t.version() >= 1; }, Clock::now() + seconds(60))) return 2;
    const Tensor got = s.t.get();
    if (got.numel() != kElements || reinterpret_cast<const uint32_t*>(got.data())[0] != Mark(0, 1))
      return 3;
    seen.Open();
    if (!c->WaitUntil([&] { return s.x.get() == 5; }, Clock::now() + seconds(90))) return 4;
    const Tensor small = BigTensor(1000, 7);
    if (!c->WaitUntil([&] { return s.t.get() == small; }, Clock::now() + seconds(30))) return 5;
    return 0;
  });
  // C: connects after K died and writes both attributes K and W share.
  const pid_t cpid = Spawn([&] {
    if (!go.Wait(seconds(120))) return 2;
    auto c = connect(Options(port));
    Big s(*c);
    s.t = BigTensor(1000, 7);
    for (int64_t i = 1; i <= 5; ++i) s.x = i;
    return 0;
  });
  close(id_pipe[1]);
  uint32_t k_id = 0;
  pollfd p{id_pipe[0], POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 30000), 1) << "K did not connect";
  ASSERT_EQ(read(id_pipe[0], &k_id, sizeof(k_id)), static_cast<ssize_t>(sizeof(k_id)));
  close(id_pipe[0]);
  ASSERT_TRUE(seen.Wait(seconds(60))) << "W never saw K's tensor";
  // K is now (almost always) in the middle of its next 64 MiB write: kill it there.
  std::this_thread::sleep_for(milliseconds(20));
  ASSERT_EQ(kill(k, SIGKILL), 0);
  EXPECT_EQ(WaitChild(k, seconds(10)), 128 + SIGKILL);
  // The hub notices and forgets K (one log line), and keeps running.
  const std::string needle = "client " + std::to_string(k_id) + " (";
  const bool logged = WaitFor(
      [&] {
        const std::string text = ReadFile(log);
        for (size_t at = text.find(needle); at != std::string::npos;
             at = text.find(needle, at + 1)) {
          const size_t eol = text.find('\n', at);
          if (text.substr(at, eol - at).find("disconnected") != std::string::npos) return true;
        }
        return false;
      },
      seconds(30));
  EXPECT_TRUE(logged) << "no disconnect line for client " << k_id << " in the hub's log:\n"
                      << ReadFile(log);
  EXPECT_TRUE(hub.Running());
  // Still serving: C's writes reach W, on the very attribute K was writing.
  go.Open();
  EXPECT_EQ(WaitChild(cpid, seconds(60)), 0);
  EXPECT_EQ(WaitChild(w, seconds(90)), 0);
  EXPECT_TRUE(hub.Running());
  // A clean exit (under the sanitizers also: no leak of K's state, no memory error).
  EXPECT_EQ(hub.Stop(), 0) << ReadFile(log);
  if (HasFailure()) std::fprintf(stderr, "hub log:\n%s", ReadFile(log).c_str());
  std::remove(log.c_str());
}

// A client that closes tells the hub, which logs a close (not a lost peer: that is what a
// killed client gets, above); a hub that stops tells its clients, which log why they
// reconnect.
TEST(NetLifecycle, AClientThatClosesAndAHubThatStopsSayGoodbye) {
  const std::string log = LogPath("goodbye");
  const std::string client_log = LogPath("goodbye_client");
  HubProcess hub({}, log);
  ASSERT_NE(hub.port(), 0);
  const uint16_t port = hub.port();
  Gate connected;
  // B stays connected while the hub stops, its stderr in client_log. Forked before this
  // process starts UCX.
  const pid_t b = Spawn([&] {
    const int fd = open(client_log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || dup2(fd, STDERR_FILENO) < 0) return 2;
    auto c = connect(Options(port));
    connected.Open();
    return FileComesToHave(client_log, "the hub is shutting down; reconnecting", seconds(90)) ? 0
                                                                                              : 3;
  });
  ASSERT_TRUE(connected.Wait(seconds(60)));
  uint32_t a_id = 0;
  {
    auto a = connect(Options(port));
    Big s(*a);
    s.x = 7;
    a_id = a->id();
  }
  const std::string closed =
      "client " + std::to_string(a_id) + " (127.0.0.1:";  // then the port, then the reason
  EXPECT_TRUE(FileComesToHave(log, "disconnected: it closed its connection", seconds(30)))
      << ReadFile(log);
  {
    const std::string text = ReadFile(log);
    size_t lines = 0;
    for (size_t at = text.find(closed); at != std::string::npos; at = text.find(closed, at + 1)) {
      const std::string line = text.substr(at, text.find('\n', at) - at);
      if (line.find("disconnected") == std::string::npos) continue;
      ++lines;
      EXPECT_NE(line.find("it closed its connection"), std::string::npos) << line;
    }
    EXPECT_EQ(lines, 1u) << text;
  }
  EXPECT_EQ(hub.Stop(), 0) << ReadFile(log);
  EXPECT_EQ(WaitChild(b, seconds(120)), 0) << "B's log:\n" << ReadFile(client_log);
  std::remove(log.c_str());
  std::remove(client_log.c_str());
}

// A second hub on a port another one listens on refuses to start, and says why in words (UCX
// itself calls it "Device is busy").
TEST(NetLifecycle, AHubOnATakenPortSaysTheAddressIsInUse) {
  HubProcess first;
  ASSERT_NE(first.port(), 0);
  const std::string log = LogPath("taken_port");
  HubProcess second({"--port", std::to_string(first.port())}, log);  // the last --port wins
  EXPECT_EQ(second.port(), 0);
  EXPECT_EQ(second.Stop(), 1);
  const std::string text = ReadFile(log);
  EXPECT_NE(text.find("cannot listen on 127.0.0.1:" + std::to_string(first.port()) +
                      ": the address is in use"),
            std::string::npos)
      << text;
  EXPECT_TRUE(first.Running());
  EXPECT_EQ(first.Stop(), 0);
  std::remove(log.c_str());
}

}  // namespace
}  // namespace easysync
