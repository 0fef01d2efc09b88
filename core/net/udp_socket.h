// A non-blocking UDP socket for the best-effort path (UCX has no IP-UDP transport).
//
// Fault injection for tests: with EASYSYNC_UDP_FAULTS="loss=0.2,dup=0.1,reorder=0.2,seed=7"
// in the environment, each socket drops, duplicates and holds back (to send after the next
// one) that share of the datagrams it sends. Nothing else reads that variable.
//
// Thread-safety: one thread at a time (the UCX progress thread).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "easysync/status.h"
#include "easysync/value_traits.h"

namespace easysync::net {

struct UdpAddress {
  sockaddr_storage addr{};
  socklen_t len = 0;
  // The local address a received datagram was sent to (a socket made by Bind records it):
  // an answer sent to this address goes from there, so a host with several addresses (or
  // bound to all of them) answers from the one it was asked at, which is the only one a
  // client's connected socket takes datagrams from. Not part of the comparison.
  struct Local {
    int level = 0;    // IPPROTO_IP (an IPv4 destination, IPv4-mapped too) or IPPROTO_IPV6
    in6_addr addr{};  // IPv4: the first 4 bytes
    unsigned ifindex = 0;
  };
  std::optional<Local> local;
  bool operator==(const UdpAddress& o) const;
  std::string ToString() const;
};

class UdpSocket {
 public:
  // A socket bound to bind:port (the hub: the same port number as its UCX listener). Its
  // Receive records where each datagram was sent (UdpAddress::local), and Send answers from
  // there.
  static Result<UdpSocket> Bind(const std::string& bind, uint16_t port);
  // A socket that sends to and receives from host:port only (a client).
  static Result<UdpSocket> Connect(const std::string& host, uint16_t port);
  // A socket for datagrams to host:port (*to, for Send) that takes answers from any address:
  // a server bound to all its addresses that does not answer from the one asked (a hub
  // before Bind recorded it) answers from the one the kernel picks. ICMP errors still show
  // (POLLERR, SO_ERROR), as on a connected one.
  static Result<UdpSocket> Open(const std::string& host, uint16_t port, UdpAddress* to);
  UdpSocket(UdpSocket&& o) noexcept;
  UdpSocket& operator=(UdpSocket&& o) noexcept;
  UdpSocket(const UdpSocket&) = delete;
  UdpSocket& operator=(const UdpSocket&) = delete;
  ~UdpSocket();

  int fd() const { return fd_; }
  uint16_t local_port() const;
  // Sends one datagram, best effort: a full socket buffer or an unreachable peer drops it.
  void Send(ByteSpan datagram, const UdpAddress* to = nullptr);
  // One datagram into buf; nullopt when none is waiting. A datagram longer than buf is
  // reported with its truncated size as 0 bytes (dropped).
  std::optional<size_t> Receive(std::span<std::byte> buf, UdpAddress* from);

 private:
  explicit UdpSocket(int fd);
  void SendNow(ByteSpan datagram, const UdpAddress* to);

  int fd_ = -1;
  // Test-only faults (see above).
  struct Faults {
    double loss = 0, dup = 0, reorder = 0;
    std::mt19937_64 rng;
  };
  std::optional<Faults> faults_;
  std::vector<std::byte> held_;  // a datagram held back to be sent after the next one
  std::optional<UdpAddress> held_to_;
};

}  // namespace easysync::net
