// TCP sockets found by what they are, and filters on them (see tcp_filter.h).
#include "net/tcp_filter.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>

#include <cstdlib>
#include <cstring>

namespace easysync::net {
namespace {

uint16_t LocalPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port);
  }
  return 0;
}

// Classic BPF, relative to the packet's network (IP) header.
sock_filter Load(uint32_t width, int32_t net_offset) {
  return BPF_STMT(BPF_LD | width | BPF_ABS, static_cast<uint32_t>(SKF_NET_OFF + net_offset));
}
uint32_t Word(const std::array<uint8_t, 16>& b, size_t at) {
  return uint32_t(b[at]) << 24 | uint32_t(b[at + 1]) << 16 | uint32_t(b[at + 2]) << 8 |
         uint32_t(b[at + 3]);
}
constexpr sock_filter kPass = BPF_STMT(BPF_RET | BPF_K, 0xffffffffu);
constexpr sock_filter kDrop = BPF_STMT(BPF_RET | BPF_K, 0);

}  // namespace

std::vector<int> TcpSocketsOnPort(uint16_t port) {
  std::vector<int> fds;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  while (const dirent* e = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == dirfd(dir)) continue;
    int protocol = 0;
    socklen_t len = sizeof(protocol);
    if (getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_PROTOCOL, &protocol, &len) == 0 &&
        protocol == IPPROTO_TCP && LocalPort(static_cast<int>(fd)) == port) {
      fds.push_back(static_cast<int>(fd));
    }
  }
  closedir(dir);
  return fds;
}

bool IsListening(int fd) {
  int on = 0;
  socklen_t len = sizeof(on);
  return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on != 0;
}

int Unread(int fd) {
  if (IsListening(fd)) {
    tcp_info info{};
    socklen_t len = sizeof(info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return 0;
    return static_cast<int>(info.tcpi_unacked);  // a listener's accept queue
  }
  int bytes = 0;
  if (ioctl(fd, SIOCINQ, &bytes) != 0) return 0;
  return bytes;
}

void DropWhatArrives(int fd) { (void)AttachFilter(fd, {kDrop}); }

std::string IpAddress::ToString() const {
  char text[INET6_ADDRSTRLEN] = "?";
  inet_ntop(v6 ? AF_INET6 : AF_INET, bytes.data(), text, sizeof(text));
  return text;
}

std::optional<IpAddress> AddressOf(const sockaddr_storage& addr) {
  IpAddress a;
  if (addr.ss_family == AF_INET) {
    std::memcpy(a.bytes.data(), &reinterpret_cast<const sockaddr_in*>(&addr)->sin_addr, 4);
    return a;
  }
  if (addr.ss_family != AF_INET6) return std::nullopt;
  const auto* in6 = &reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_addr;
  if (IN6_IS_ADDR_V4MAPPED(in6)) {
    std::memcpy(a.bytes.data(), in6->s6_addr + 12, 4);
    return a;
  }
  a.v6 = true;
  std::memcpy(a.bytes.data(), in6->s6_addr, 16);
  return a;
}

std::vector<sock_filter> AllowOnly(const std::vector<IpAddress>& allowed) {
  // IP version from the first byte; IPv4 sources at byte 12, IPv6 at byte 8. Each address is
  // tested in a block that passes the packet on a match and falls through to the next block
  // otherwise (the conditional jumps are 8-bit: no jump crosses more than one block).
  std::vector<sock_filter> v4, v6;
  for (const IpAddress& a : allowed) {
    if (!a.v6) {
      v4.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, Word(a.bytes, 0), 0, 1));
      v4.push_back(kPass);
      continue;
    }
    for (size_t w = 0; w < 4; ++w) {
      v6.push_back(Load(BPF_W, 8 + 4 * static_cast<int32_t>(w)));
      v6.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, Word(a.bytes, 4 * w), 0,
                            static_cast<uint8_t>(2 * (3 - w) + 1)));
    }
    v6.push_back(kPass);
  }
  std::vector<sock_filter> p;
  p.push_back(Load(BPF_B, 0));
  p.push_back(BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 4));
  p.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 4, 0, 1));
  p.push_back(BPF_STMT(BPF_JMP | BPF_JA, static_cast<uint32_t>(v6.size() + 1)));  // to IPv4
  p.insert(p.end(), v6.begin(), v6.end());
  p.push_back(kDrop);
  p.push_back(Load(BPF_W, 12));
  p.insert(p.end(), v4.begin(), v4.end());
  p.push_back(kDrop);
  return p;
}

Status AttachFilter(int fd, const std::vector<sock_filter>& program) {
  sock_fprog fprog{static_cast<unsigned short>(program.size()),
                   const_cast<sock_filter*>(program.data())};
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof(fprog)) != 0) {
    return Status::IoError(std::string("cannot filter a TCP socket: ") + std::strerror(errno));
  }
  return Status::Ok();
}

}  // namespace easysync::net
