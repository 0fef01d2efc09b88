// Admission's datagrams and cookies (net/admission.h), and the socket filter that lets only
// admitted addresses reach a listener (net/tcp_filter.h), on real loopback sockets.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "net/admission.h"
#include "net/tcp_filter.h"
#include "tcp_probe.h"

namespace easysync::net {
namespace {

using namespace std::chrono_literals;
using Bytes = std::vector<std::byte>;

admission::Message Sample(admission::Type t) {
  admission::Message m;
  m.type = t;
  for (size_t i = 0; i < m.nonce.size(); ++i) m.nonce[i] = uint8_t(i + 1);
  if (t == admission::Type::kChallenge || t == admission::Type::kProof) m.cookie[0] = 0xc0;
  if (t == admission::Type::kProof) m.proof[31] = 0x9f;
  return m;
}

using testing::Address;

TEST(Admission, EveryMessageRoundTrips) {
  for (auto t : {admission::Type::kKnock, admission::Type::kChallenge, admission::Type::kProof,
                 admission::Type::kAdmitted, admission::Type::kDenied}) {
    const admission::Message m = Sample(t);
    const Bytes wire = admission::Encode(m);
    EXPECT_TRUE(admission::IsAdmission(ByteSpan(wire.data(), wire.size())));
    auto back = admission::Decode(ByteSpan(wire.data(), wire.size()));
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(back->type, t);
    EXPECT_EQ(back->nonce, m.nonce);
    EXPECT_EQ(back->cookie, m.cookie);
    EXPECT_EQ(back->proof, m.proof);
  }
  // The question is as long as its answer: a forged source gets nothing amplified.
  EXPECT_EQ(admission::Encode(Sample(admission::Type::kKnock)).size(),
            admission::Encode(Sample(admission::Type::kChallenge)).size());
}

TEST(Admission, MalformedDatagramsAreRefused) {
  const Bytes good = admission::Encode(Sample(admission::Type::kProof));
  auto decode = [](const Bytes& b) { return admission::Decode(ByteSpan(b.data(), b.size())); };
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_FALSE(decode(Bytes(good.begin(), good.begin() + n)).ok()) << "truncated to " << n;
  }
  Bytes longer = good;
  longer.push_back(std::byte{0});
  EXPECT_FALSE(decode(longer).ok());
  Bytes magic = good;
  magic[0] ^= std::byte{1};
  EXPECT_FALSE(decode(magic).ok());
  EXPECT_FALSE(admission::IsAdmission(ByteSpan(magic.data(), magic.size())));
  Bytes version = good;
  version[4] = std::byte{2};
  EXPECT_FALSE(decode(version).ok());
  Bytes reserved = good;
  reserved[7] = std::byte{1};
  EXPECT_FALSE(decode(reserved).ok());
  for (uint8_t t : {0, 6, 255}) {
    Bytes type = good;
    type[5] = std::byte{t};
    EXPECT_FALSE(decode(type).ok()) << int(t);
  }
  // A PROOF's length with a KNOCK's type.
  Bytes mismatch = good;
  mismatch[5] = std::byte{uint8_t(admission::Type::kKnock)};
  EXPECT_FALSE(decode(mismatch).ok());
}

TEST(Admission, ACookieIsGoodForOneAddressAndNonceForTwoEpochs) {
  const admission::Cookies hub;
  const auto now = std::chrono::steady_clock::now();
  const Nonce nonce = Sample(admission::Type::kKnock).nonce;
  const sockaddr_storage from = Address("10.1.2.3", 40000);
  const Nonce cookie = hub.Make(from, nonce, now);
  EXPECT_TRUE(hub.Valid(from, nonce, cookie, now));
  EXPECT_TRUE(hub.Valid(Address("10.1.2.3", 40001), nonce, cookie, now)) << "the port is not in it";
  EXPECT_TRUE(hub.Valid(from, nonce, cookie, now + 30s)) << "the next epoch still takes it";
  EXPECT_FALSE(hub.Valid(from, nonce, cookie, now + 61s));
  EXPECT_FALSE(hub.Valid(Address("10.1.2.4", 40000), nonce, cookie, now));
  Nonce other = nonce;
  other[0] ^= 1;
  EXPECT_FALSE(hub.Valid(from, other, cookie, now));
  EXPECT_FALSE(admission::Cookies().Valid(from, nonce, cookie, now)) << "a restarted hub";
}

TEST(Admission, TheProofDependsOnTokenNonceAndCookie) {
  const Nonce n = Sample(admission::Type::kKnock).nonce;
  Nonce c{};
  c[3] = 7;
  const Mac p = admission::Prove("token", n, c);
  EXPECT_EQ(p, ComputeProof("token", admission::kProofLabel, n, c));
  EXPECT_NE(p, admission::Prove("tokeN", n, c));
  Nonce c2 = c;
  c2[0] = 1;
  EXPECT_NE(p, admission::Prove("token", n, c2));
  // Not the handshake's client proof over the same nonces.
  EXPECT_NE(p, ComputeProof("token", "easysync-v1 client proof", n, c));
}

// A listener on `family`'s any-address, port chosen by the kernel.
int Listener(int family, uint16_t* port) {
  const int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (family == AF_INET) {
    ss = Address("0.0.0.0");
    len = sizeof(sockaddr_in);
  } else {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
    in6->sin6_family = AF_INET6;
    in6->sin6_addr = in6addr_any;
    len = sizeof(sockaddr_in6);
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, 16) != 0) {
    close(fd);
    return -1;
  }
  len = sizeof(ss);
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  *port = ntohs(family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                  : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return fd;
}

// Whether a connection from `source` reaches `dest`:port.
bool Connects(const sockaddr_storage& source, sockaddr_storage dest, uint16_t port) {
  if (dest.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(&dest)->sin_port = htons(port);
  } else {
    reinterpret_cast<sockaddr_in6*>(&dest)->sin6_port = htons(port);
  }
  return testing::TcpConnects(source, dest, 300ms);
}

IpAddress Ip(const char* text) { return *AddressOf(Address(text)); }

TEST(TcpFilter, AListenerTakesConnectionsOnlyFromTheAddressesAllowed) {
  uint16_t port = 0;
  const int fd = Listener(AF_INET, &port);
  ASSERT_GE(fd, 0);
  const sockaddr_storage one = Address("127.0.0.1"), two = Address("127.0.0.2");
  EXPECT_TRUE(Connects(two, one, port)) << "unfiltered, 127.0.0.2 reaches it";
  ASSERT_TRUE(AttachFilter(fd, AllowOnly({Ip("127.0.0.1")})).ok());
  EXPECT_TRUE(Connects(one, one, port));
  EXPECT_FALSE(Connects(two, one, port)) << "127.0.0.2 was not allowed";
  ASSERT_TRUE(AttachFilter(fd, AllowOnly({Ip("127.0.0.1"), Ip("::1"), Ip("127.0.0.2")})).ok());
  EXPECT_TRUE(Connects(two, one, port));
  ASSERT_TRUE(AttachFilter(fd, AllowOnly({})).ok());
  EXPECT_FALSE(Connects(one, one, port));
  const auto on_port = TcpSocketsOnPort(port);
  EXPECT_NE(std::find(on_port.begin(), on_port.end(), fd), on_port.end());
  close(fd);
}

TEST(TcpFilter, ADualStackListenerTellsIpv4FromIpv6Sources) {
  uint16_t port = 0;
  const int fd = Listener(AF_INET6, &port);
  if (fd < 0) GTEST_SKIP() << "no IPv6 here";
  sockaddr_storage loop6{};
  loop6.ss_family = AF_INET6;
  reinterpret_cast<sockaddr_in6*>(&loop6)->sin6_addr = in6addr_loopback;
  if (!Connects(loop6, loop6, port)) GTEST_SKIP() << "::1 does not connect here";
  const sockaddr_storage one = Address("127.0.0.1"), two = Address("127.0.0.2");
  ASSERT_TRUE(AttachFilter(fd, AllowOnly({Ip("::1"), Ip("127.0.0.2")})).ok());
  EXPECT_TRUE(Connects(loop6, loop6, port));
  EXPECT_TRUE(Connects(two, one, port)) << "an IPv4 source on a dual-stack listener";
  EXPECT_FALSE(Connects(one, one, port));
  ASSERT_TRUE(AttachFilter(fd, AllowOnly({Ip("127.0.0.1")})).ok());
  EXPECT_FALSE(Connects(loop6, loop6, port));
  EXPECT_TRUE(Connects(one, one, port));
  close(fd);
}

TEST(TcpFilter, AProgramForTheMostAddressesFitsTheKernel) {
  std::vector<IpAddress> many;
  for (size_t i = 0; i < kMaxAllowed; ++i) {
    IpAddress a;
    a.v6 = true;
    a.bytes[0] = 0xfd;
    a.bytes[14] = uint8_t(i >> 8);
    a.bytes[15] = uint8_t(i);
    many.push_back(a);
  }
  many.back() = Ip("127.0.0.1");
  uint16_t port = 0;
  const int fd = Listener(AF_INET, &port);
  ASSERT_GE(fd, 0);
  const Status s = AttachFilter(fd, AllowOnly(many));
  ASSERT_TRUE(s.ok()) << s.ToString();
  const sockaddr_storage one = Address("127.0.0.1"), two = Address("127.0.0.2");
  EXPECT_TRUE(Connects(one, one, port)) << "the last address of the longest program";
  EXPECT_FALSE(Connects(two, one, port));
  close(fd);
}

}  // namespace
}  // namespace easysync::net
