// UDP sockets (see udp_socket.h).
#include "net/udp_socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace easysync::net {
namespace {

Result<UdpAddress> Resolve(const std::string& host, uint16_t port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    return Status::InvalidArgument("cannot resolve " + host + ": " + gai_strerror(rc));
  }
  UdpAddress a;
  std::memcpy(&a.addr, res->ai_addr, res->ai_addrlen);
  a.len = res->ai_addrlen;
  freeaddrinfo(res);
  return a;
}

// Test-only faults from EASYSYNC_UDP_FAULTS ("loss=0.2,dup=0.1,reorder=0.2,seed=7").
std::optional<std::tuple<double, double, double, uint64_t>> FaultsFromEnv() {
  const char* env = std::getenv("EASYSYNC_UDP_FAULTS");
  if (env == nullptr || *env == '\0') return std::nullopt;
  double loss = 0, dup = 0, reorder = 0;
  uint64_t seed = 1;
  std::string s(env);
  size_t at = 0;
  while (at < s.size()) {
    const size_t end = std::min(s.find(',', at), s.size());
    const std::string item = s.substr(at, end - at);
    const size_t eq = item.find('=');
    if (eq != std::string::npos) {
      const std::string key = item.substr(0, eq);
      const double v = std::strtod(item.c_str() + eq + 1, nullptr);
      if (key == "loss") loss = v;
      if (key == "dup") dup = v;
      if (key == "reorder") reorder = v;
      if (key == "seed") seed = static_cast<uint64_t>(v);
    }
    at = end + 1;
  }
  return std::make_tuple(loss, dup, reorder, seed);
}

}  // namespace

bool UdpAddress::operator==(const UdpAddress& o) const {
  return len == o.len && std::memcmp(&addr, &o.addr, len) == 0;
}

std::string UdpAddress::ToString() const {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (addr.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    port = ntohs(a->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    port = ntohs(a->sin6_port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

UdpSocket::UdpSocket(int fd) : fd_(fd) {
  if (auto f = FaultsFromEnv()) {
    faults_.emplace();
    std::tie(faults_->loss, faults_->dup, faults_->reorder, std::ignore) = *f;
    // Each socket its own stream of faults, reproducible from the seed.
    faults_->rng.seed(std::get<3>(*f) ^ static_cast<uint64_t>(getpid()) * 7919 ^
                      static_cast<uint64_t>(fd));
  }
}

UdpSocket::UdpSocket(UdpSocket&& o) noexcept
    : fd_(o.fd_), faults_(std::move(o.faults_)), held_(std::move(o.held_)), held_to_(o.held_to_) {
  o.fd_ = -1;
}

UdpSocket& UdpSocket::operator=(UdpSocket&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
    faults_ = std::move(o.faults_);
    held_ = std::move(o.held_);
    held_to_ = o.held_to_;
  }
  return *this;
}

UdpSocket::~UdpSocket() {
  if (fd_ >= 0) close(fd_);
}

Result<UdpSocket> UdpSocket::Bind(const std::string& bind, uint16_t port) {
  EASYSYNC_ASSIGN_OR_RETURN(UdpAddress a, Resolve(bind, port, true));
  const int fd = socket(a.addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno("socket(UDP)", errno);
  UdpSocket s(fd);
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&a.addr), a.len) != 0) {
    return Status::Unavailable("cannot bind UDP " + bind + ":" + std::to_string(port) + ": " +
                               std::strerror(errno));
  }
  // Where each datagram was sent: IPv4 ones (IPv4-mapped on a dual-stack socket too) report
  // IP_PKTINFO, IPv6 ones IPV6_PKTINFO.
  if (setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one)) != 0 &&
      a.addr.ss_family == AF_INET) {
    return Status::FromErrno("setsockopt(IP_PKTINFO)", errno);
  }
  if (a.addr.ss_family == AF_INET6 &&
      setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one)) != 0) {
    return Status::FromErrno("setsockopt(IPV6_RECVPKTINFO)", errno);
  }
  return s;
}

Result<UdpSocket> UdpSocket::Connect(const std::string& host, uint16_t port) {
  EASYSYNC_ASSIGN_OR_RETURN(UdpAddress a, Resolve(host, port, false));
  const int fd = socket(a.addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno("socket(UDP)", errno);
  UdpSocket s(fd);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&a.addr), a.len) != 0) {
    return Status::Unavailable("cannot reach UDP " + host + ":" + std::to_string(port) + ": " +
                               std::strerror(errno));
  }
  return s;
}

Result<UdpSocket> UdpSocket::Open(const std::string& host, uint16_t port, UdpAddress* to) {
  EASYSYNC_ASSIGN_OR_RETURN(*to, Resolve(host, port, false));
  const int fd = socket(to->addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno("socket(UDP)", errno);
  UdpSocket s(fd);
  const int one = 1;
  if (to->addr.ss_family == AF_INET6) {
    setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &one, sizeof(one));
  } else {
    setsockopt(fd, IPPROTO_IP, IP_RECVERR, &one, sizeof(one));
  }
  return s;
}

uint16_t UdpSocket::local_port() const {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  return ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port)
                                  : ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
}

void UdpSocket::SendNow(ByteSpan d, const UdpAddress* to) {
  // Best effort by design: EAGAIN (a full buffer), ECONNREFUSED (no one there yet) and the
  // like drop the datagram; the protocol resends what matters.
  if (to != nullptr && to->local) {
    // From the address the peer sent to (see UdpAddress::local).
    iovec iov{const_cast<std::byte*>(d.data()), d.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(in6_pktinfo))] = {};
    msghdr msg{};
    msg.msg_name = const_cast<sockaddr_storage*>(&to->addr);
    msg.msg_namelen = to->len;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    cmsghdr* c = reinterpret_cast<cmsghdr*>(control);
    const auto put = [&](int type, const auto& info) {
      c->cmsg_level = to->local->level;
      c->cmsg_type = type;
      c->cmsg_len = CMSG_LEN(sizeof(info));
      std::memcpy(CMSG_DATA(c), &info, sizeof(info));
      msg.msg_controllen = CMSG_SPACE(sizeof(info));
    };
    if (to->local->level == IPPROTO_IP) {
      in_pktinfo info{};
      std::memcpy(&info.ipi_spec_dst, &to->local->addr, sizeof(info.ipi_spec_dst));
      put(IP_PKTINFO, info);
    } else {
      in6_pktinfo info{};
      info.ipi6_addr = to->local->addr;
      info.ipi6_ifindex = to->local->ifindex;
      put(IPV6_PKTINFO, info);
    }
    (void)!sendmsg(fd_, &msg, MSG_NOSIGNAL);
  } else if (to != nullptr) {
    (void)!sendto(fd_, d.data(), d.size(), MSG_NOSIGNAL,
                  reinterpret_cast<const sockaddr*>(&to->addr), to->len);
  } else {
    (void)!send(fd_, d.data(), d.size(), MSG_NOSIGNAL);
  }
}

void UdpSocket::Send(ByteSpan d, const UdpAddress* to) {
  if (!faults_) return SendNow(d, to);
  std::uniform_real_distribution<double> u(0, 1);
  if (u(faults_->rng) < faults_->loss) return;
  const bool hold = held_.empty() && u(faults_->rng) < faults_->reorder;
  if (hold) {
    held_.assign(d.begin(), d.end());
    held_to_ = to != nullptr ? std::optional<UdpAddress>(*to) : std::nullopt;
    return;
  }
  SendNow(d, to);
  if (u(faults_->rng) < faults_->dup) SendNow(d, to);
  if (!held_.empty()) {
    SendNow(held_, held_to_ ? &*held_to_ : nullptr);
    held_.clear();
  }
}

std::optional<size_t> UdpSocket::Receive(std::span<std::byte> buf, UdpAddress* from) {
  UdpAddress a;
  iovec iov{buf.data(), buf.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(in6_pktinfo)) + CMSG_SPACE(sizeof(in_pktinfo))];
  msghdr msg{};
  msg.msg_name = &a.addr;
  msg.msg_namelen = sizeof(a.addr);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  const ssize_t n = recvmsg(fd_, &msg, MSG_TRUNC);
  if (n < 0) return std::nullopt;  // EAGAIN: none waiting (or an ICMP error: nothing to read)
  a.len = msg.msg_namelen;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
      in_pktinfo info;
      std::memcpy(&info, CMSG_DATA(c), sizeof(info));
      a.local.emplace();
      a.local->level = IPPROTO_IP;
      std::memcpy(&a.local->addr, &info.ipi_addr, sizeof(info.ipi_addr));
    } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO &&
               !(a.local && a.local->level == IPPROTO_IP)) {
      // (An IPv4 datagram on a dual-stack socket reports both; IP_PKTINFO is the one to
      // answer with.)
      in6_pktinfo info;
      std::memcpy(&info, CMSG_DATA(c), sizeof(info));
      a.local.emplace();
      a.local->level = IPPROTO_IPV6;
      a.local->addr = info.ipi6_addr;
      a.local->ifindex = info.ipi6_ifindex;
    }
  }
  if (from != nullptr) *from = a;
  return static_cast<size_t>(n) > buf.size() ? size_t{0} : static_cast<size_t>(n);
}

}  // namespace easysync::net
