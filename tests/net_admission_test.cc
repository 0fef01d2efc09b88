// Admission against a real hub process: only addresses that proved the token over UDP (and
// by default the loopback addresses) reach UCX's connection setup. 127.0.0.2 stands for
// another host: it is a local address, but not one the hub takes without a proof.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>

#include "easysync/net.h"
#include "net/admission.h"
#include "net_test_util.h"
#include "tcp_probe.h"

namespace easysync {
namespace {

using namespace std::chrono_literals;
namespace adm = net::admission;

// Whether a TCP connection from `source` to the hub's port completes.
bool ConnectsFrom(const char* source, uint16_t port) {
  return testing::TcpConnects(testing::Address(source), testing::Address("127.0.0.1", port));
}

// The admission exchange from `source` (what a client does, from an address of the test's
// choosing): the hub's last answer, nullopt if none came.
std::optional<adm::Type> KnockFrom(const char* source, uint16_t port, const std::string& token) {
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  const sockaddr_storage from = testing::Address(source), to = testing::Address("127.0.0.1", port);
  if (fd < 0 || bind(fd, reinterpret_cast<const sockaddr*>(&from), testing::LengthOf(from)) != 0 ||
      ::connect(fd, reinterpret_cast<const sockaddr*>(&to), testing::LengthOf(to)) != 0) {
    if (fd >= 0) close(fd);
    return std::nullopt;
  }
  auto exchange = [fd](const adm::Message& m) -> std::optional<adm::Message> {
    const auto out = adm::Encode(m);
    for (int attempt = 0; attempt < 5; ++attempt) {
      (void)!send(fd, out.data(), out.size(), 0);
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 200) != 1) continue;
      std::byte buf[adm::kMaxDatagram];
      const ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) continue;
      auto in = adm::Decode(ByteSpan(buf, static_cast<size_t>(n)));
      if (in.ok() && in->nonce == m.nonce) return *in;
    }
    return std::nullopt;
  };
  adm::Message knock;
  knock.nonce = net::RandomNonce();
  std::optional<adm::Type> last;
  if (auto challenge = exchange(knock)) {
    last = challenge->type;
    if (challenge->type == adm::Type::kChallenge) {
      adm::Message proof = knock;
      proof.type = adm::Type::kProof;
      proof.cookie = challenge->cookie;
      proof.proof = adm::Prove(token, knock.nonce, challenge->cookie);
      if (auto answer = exchange(proof)) last = answer->type;
    }
  }
  close(fd);
  return last;
}

NetOptions Options(uint16_t port, const char* token = testing::kTestToken) {
  NetOptions o;
  o.port = port;
  o.token = token;
  o.connect_timeout = 5000ms;
  return o;
}

TEST(NetAdmission, OnlyAdmittedAddressesReachTheHub) {
  testing::HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  EXPECT_TRUE(ConnectsFrom("127.0.0.1", hub.port())) << "loopback is admitted by default";
  EXPECT_FALSE(ConnectsFrom("127.0.0.2", hub.port())) << "a stranger reached UCX";
  EXPECT_EQ(KnockFrom("127.0.0.2", hub.port(), "not-the-token"), adm::Type::kDenied);
  EXPECT_FALSE(ConnectsFrom("127.0.0.2", hub.port())) << "a wrong token admitted it";
  EXPECT_EQ(KnockFrom("127.0.0.2", hub.port(), testing::kTestToken), adm::Type::kAdmitted);
  EXPECT_TRUE(ConnectsFrom("127.0.0.2", hub.port())) << "admitted, yet not let in";
  // Nothing else changed for clients.
  auto c = TryConnect(Options(hub.port()));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  c->reset();
  EXPECT_TRUE(hub.Running());
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetAdmission, AClientProvesItselfToAStrictHub) {
  testing::HubProcess hub({"--admission", "strict"});
  ASSERT_NE(hub.port(), 0);
  EXPECT_FALSE(ConnectsFrom("127.0.0.1", hub.port())) << "strict admits no address unasked";
  auto bad = TryConnect(Options(hub.port(), "not-the-token"));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kPermissionDenied) << bad.status().ToString();
  EXPECT_NE(bad.status().message().find("token"), std::string::npos) << bad.status().ToString();
  EXPECT_FALSE(ConnectsFrom("127.0.0.1", hub.port()));
  auto good = TryConnect(Options(hub.port()));
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  EXPECT_GT((*good)->id(), 0u);
  EXPECT_TRUE(ConnectsFrom("127.0.0.1", hub.port())) << "the client's address is admitted now";
  good->reset();
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetAdmission, AKnockAtAnotherOfTheHubsAddressesIsAnswered) {
  // A knock at 127.0.0.2 of a hub on all addresses is answered, and admits the address the
  // knock left from (127.0.0.1).
  testing::HubProcess hub({"--admission", "strict", "--bind", "0.0.0.0"});
  ASSERT_NE(hub.port(), 0);
  EXPECT_FALSE(ConnectsFrom("127.0.0.1", hub.port()));
  const Status s = adm::Knock("127.0.0.2", hub.port(), testing::kTestToken, 2000ms);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(ConnectsFrom("127.0.0.1", hub.port()));
  EXPECT_EQ(adm::Knock("127.0.0.2", hub.port(), "not-the-token", 2000ms).code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetAdmission, AClientReconnectsToARestartedStrictHub) {
  // The new hub admits nobody yet: the client's reconnect proves itself again.
  testing::HubProcess hub({"--admission", "strict"});
  ASSERT_NE(hub.port(), 0);
  const uint16_t port = hub.port();
  NetOptions o = Options(port);
  o.reconnect_backoff_min = 50ms;
  o.reconnect_backoff_max = 200ms;
  auto c = TryConnect(o);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto a = (*c)->Declare("Admission", "x", ValueKind::kInt64, nullptr);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(hub.Stop(), 0);
  testing::HubProcess again({"--admission", "strict", "--port", std::to_string(port)});
  ASSERT_EQ(again.port(), port);
  EXPECT_TRUE(testing::WaitFor([&] { return (*c)->stats().reconnects > 0; }, 20s))
      << "the client did not get back in";
  // And the new hub serves it: a write gets its version from there.
  const int64_t v = 7;
  auto w = (*c)->Write(*a, sizeof(v), [&](std::byte* p) { std::memcpy(p, &v, sizeof(v)); });
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_TRUE(ConnectsFrom("127.0.0.1", port));
  c->reset();
  EXPECT_EQ(again.Stop(), 0);
}

TEST(NetAdmission, WithAdmissionOffAnyAddressConnects) {
  testing::HubProcess hub({"--admission", "off"});
  ASSERT_NE(hub.port(), 0);
  EXPECT_TRUE(ConnectsFrom("127.0.0.2", hub.port()));
  // It still answers a knock, so clients work against either.
  EXPECT_EQ(KnockFrom("127.0.0.2", hub.port(), testing::kTestToken), adm::Type::kAdmitted);
  EXPECT_EQ(KnockFrom("127.0.0.2", hub.port(), "not-the-token"), adm::Type::kDenied);
  EXPECT_EQ(hub.Stop(), 0);
}

}  // namespace
}  // namespace easysync
