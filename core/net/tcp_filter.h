// The TCP sockets of this process, found by what they are (UCX does not hand out its
// sockets), and socket filters on them (classic BPF, SO_ATTACH_FILTER): how UcxWorker
// silences a listener before UCX frees it, and how the hub takes connections only from
// admitted addresses (net/admission.h).
//
// A filter on a listening socket decides which SYNs it sees (a dropped SYN is retried by the
// peer's kernel, a second later); a connection it accepts inherits the filter.
//
// Thread-safety: free functions over the process's file descriptors.
#pragma once

#include <linux/filter.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "easysync/status.h"

namespace easysync::net {

// The TCP sockets bound to local port `port`: a listener there and the connections it
// accepted (a connection this process opened to that port has an ephemeral local port).
std::vector<int> TcpSocketsOnPort(uint16_t port);
bool IsListening(int fd);
// Bytes received on fd that nobody has read yet; for a listener, connections not yet
// accepted.
int Unread(int fd);
// From now on the kernel drops every packet that reaches fd. What already sits in its queues
// stays there to be read.
void DropWhatArrives(int fd);

// A source address, without port; an IPv4-mapped IPv6 address is its IPv4 address.
struct IpAddress {
  bool v6 = false;
  std::array<uint8_t, 16> bytes{};  // v4: the first 4
  bool operator==(const IpAddress&) const = default;
  std::string ToString() const;
};
std::optional<IpAddress> AddressOf(const sockaddr_storage& addr);

// The most addresses AllowOnly takes (the program stays within the kernel's 4096
// instructions whatever their families).
inline constexpr size_t kMaxAllowed = 400;
// A program that passes the packets (IPv4 or IPv6) whose source address is in `allowed` and
// drops all others. REQUIRES: allowed.size() <= kMaxAllowed.
std::vector<sock_filter> AllowOnly(const std::vector<IpAddress>& allowed);
// Attaches `program` to fd, replacing the filter it had.
Status AttachFilter(int fd, const std::vector<sock_filter>& program);

}  // namespace easysync::net
