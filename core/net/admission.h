// Admission: a client proves it knows the token over UDP before its TCP connection reaches
// UCX, whose connection setup parses what a peer sends before EasySync's handshake does (and
// UCX 1.13 aborts on some malformed connection requests). The hub's listener takes
// connections only from the addresses admitted this way (net/tcp_filter.h).
//
// Datagrams, on the hub's UDP port (all integers little-endian; docs/net_protocol.md,
// "Admission"):
//   header (kHeaderBytes = 40): magic u32 ("ESYK"), version u8, type u8, reserved u16 (0),
//                               client nonce [32]
//   KNOCK     (client -> hub): 32 zero bytes (so the answer is no larger than the question)
//   CHALLENGE (hub -> client): cookie [32]
//   PROOF     (client -> hub): cookie [32], proof [32]
//   ADMITTED, DENIED (hub -> client): nothing more
// The cookie is the hub's keyed hash of the client's address, its nonce and the current
// 30-second epoch: the hub keeps no state per knock, and a cookie is good for one address for
// 30 to 60 seconds. The proof is HMAC-SHA256(key = token, kProofLabel || client nonce ||
// cookie), the handshake's construction (net/protocol.h) under a label of its own.
//
// Decode never trusts its input: a bad datagram is Status::Corruption, never a crash.
// Thread-safety: free functions; Cookies is immutable after construction.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "easysync/status.h"
#include "easysync/value_traits.h"
#include "net/protocol.h"

namespace easysync::net::admission {

inline constexpr uint32_t kMagic = 0x4B595345;  // "ESYK" in memory order
inline constexpr uint8_t kVersion = 1;
inline constexpr size_t kHeaderBytes = 40;
inline constexpr size_t kMaxDatagram = kHeaderBytes + 64;
inline constexpr std::string_view kProofLabel = "easysync-v1 admission proof";

enum class Type : uint8_t {
  kKnock = 1,
  kChallenge = 2,
  kProof = 3,
  kAdmitted = 4,
  kDenied = 5,
};

struct Message {
  Type type = Type::kKnock;
  Nonce nonce{};   // the client's, echoed by the hub
  Nonce cookie{};  // CHALLENGE, PROOF
  Mac proof{};     // PROOF
};

// Whether `datagram` starts with this format's magic number (the hub's UDP port also carries
// the best-effort path's datagrams, net/udp_wire.h, whose magic differs).
bool IsAdmission(ByteSpan datagram);
std::vector<std::byte> Encode(const Message& m);
// Checks magic, version, reserved bits, type and the exact length per type.
Result<Message> Decode(ByteSpan datagram);

Mac Prove(std::string_view token, const Nonce& nonce, const Nonce& cookie);

// The hub's cookies, under a secret drawn at construction: a restarted hub finds the cookies
// of the one before invalid and answers such a PROOF with a new CHALLENGE.
class Cookies {
 public:
  Cookies();
  // For `from` (the knock's source address) and `nonce`, in the epoch of `now`.
  Nonce Make(const sockaddr_storage& from, const Nonce& nonce,
             std::chrono::steady_clock::time_point now) const;
  // Whether `cookie` is one Make gave `from` and `nonce` in this epoch or the one before.
  bool Valid(const sockaddr_storage& from, const Nonce& nonce, const Nonce& cookie,
             std::chrono::steady_clock::time_point now) const;

 private:
  Nonce MakeIn(const sockaddr_storage& from, const Nonce& nonce, int64_t epoch) const;
  std::array<uint8_t, 32> secret_{};
};

// The client's side, blocking: KNOCK to host:port over UDP, PROOF for the CHALLENGE, until
// ADMITTED or DENIED, each step sent again if no answer came (after 50 ms, doubling), for
// at most `limit`. Ok when admitted; PermissionDenied when the hub refused the proof (the
// token); Unavailable when no answer came in time (no hub there, UDP blocked, or a hub of
// another version), naming host and port.
Status Knock(const std::string& host, uint16_t port, std::string_view token,
             std::chrono::milliseconds limit);

}  // namespace easysync::net::admission
