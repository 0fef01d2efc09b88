// Whether a TCP connection completes: from a source address of the test's choosing (another
// loopback address stands for another host), without sending anything.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>

namespace easysync::testing {

// An IPv4 or IPv6 address from text, with a port.
inline sockaddr_storage Address(const char* ip, uint16_t port = 0) {
  sockaddr_storage ss{};
  auto* in = reinterpret_cast<sockaddr_in*>(&ss);
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, ip, &in->sin_addr) == 1) {
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
  } else if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
  }
  return ss;
}

inline socklen_t LengthOf(const sockaddr_storage& ss) {
  return ss.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
}

// Whether a connection from `source` to `dest` completes within `wait` (a dropped SYN does not).
inline bool TcpConnects(const sockaddr_storage& source, const sockaddr_storage& dest,
                        std::chrono::milliseconds wait = std::chrono::milliseconds(500)) {
  const int fd = socket(dest.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  int error = 1;
  if (bind(fd, reinterpret_cast<const sockaddr*>(&source), LengthOf(source)) == 0) {
    (void)::connect(fd, reinterpret_cast<const sockaddr*>(&dest), LengthOf(dest));
    pollfd p{fd, POLLOUT, 0};
    if (poll(&p, 1, static_cast<int>(wait.count())) == 1) {
      socklen_t len = sizeof(error);
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len);
    }
  }
  close(fd);
  return error == 0;
}

}  // namespace easysync::testing
