// The best-effort UDP path's datagrams: constants, sealing/opening, replay window, and
// fragmentation/reassembly of values. Pure code: no sockets, no threads, no clock.
//
// The UDP path carries "latest value wins" traffic beside the reliable UCX connection: a
// datagram may be lost, duplicated or reordered, so every value carries its seq (order) and
// every datagram a per-direction counter (replay protection) and a MAC under a key both ends
// derive from the token and the reliable handshake's two nonces.
//
// Datagram (all integers little-endian):
//   header (kHeaderBytes = 20): magic u32, version u8, type u8, flags u8, reserved u8 (0),
//                               client id u32 (!= 0), counter u64 (!= 0)
//   body: REGISTER, REGISTERED: empty
//         DATA (kDataBodyBytes = 40): attr id u32, seq u64, clock u64, writer u32,
//                                     write ns i64, total bytes u32, frag index u16,
//                                     frag count u16, [with kFlagAck: an ACK body], then
//                                     the fragment's payload
//         ACK (kAckBodyBytes = 20): attr id u32, seq u64, version u64 (hub -> writer: the
//                                   version its write `seq` got; else 0)
//   MAC (kMacBytes = 16): keyed BLAKE2b over everything before it.
// Header flags: bit 0 kFlagCodec and bit 1 kFlagAck (DATA only), bit 7 kFlagFromHub (the direction:
// set on every hub -> client datagram, so a datagram reflected back to its sender does not open);
// all other bits 0.
//
// Decoders never trust their input: a bad datagram is Status::Corruption, never a crash, and
// a decoded payload points into the caller's buffer.
//
// Thread-safety: free functions on caller-owned data; ReplayWindow and Reassembler are plain
// values (one owner, or external locking).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "easysync/function_ref.h"
#include "easysync/status.h"
#include "easysync/value_traits.h"
#include "net/protocol.h"

namespace easysync::net::udp {

inline constexpr uint32_t kMagic = 0x55595345;  // "ESYU" in memory order
inline constexpr uint8_t kVersion = 1;
// Value bytes per datagram: a whole datagram stays under 1280 bytes (1324 with IPv6 and UDP
// headers), so it crosses common MTUs (1500-byte Ethernet, most tunnels) without IP
// fragmentation, where the loss of one IP fragment would lose the whole datagram.
inline constexpr size_t kMaxPayload = 1200;
inline constexpr size_t kMacBytes = 16;
inline constexpr size_t kHeaderBytes = 20;
inline constexpr size_t kDataBodyBytes = 40;
inline constexpr size_t kAckBodyBytes = 20;
// 20 + 40 + 1200 + 16 = 1276 bytes: the largest datagram, the size of a receive buffer.
inline constexpr size_t kMaxDatagram =
    kHeaderBytes + kDataBodyBytes + kAckBodyBytes + kMaxPayload + kMacBytes;
inline constexpr size_t kMinDatagram = kHeaderBytes + kMacBytes;
// The largest value the path carries (frag count is a u16: 65535 fragments would be ~75 MiB).
// Larger values belong on the reliable path.
inline constexpr uint64_t kMaxValueBytes = 64ull << 20;
inline constexpr uint8_t kFlagCodec = 1;       // DATA: a codec value (net/wire_value.h)
inline constexpr uint8_t kFlagAck = 2;         // DATA: an ACK rides along (before the payload)
inline constexpr uint8_t kFlagFromHub = 0x80;  // every hub -> client datagram
// The key derivation's label (docs/net_protocol.md, "UDP").
inline constexpr std::string_view kKeyLabel = "easysync-v1 udp key";

enum class Type : uint8_t {
  kRegister = 1,    // client -> hub, empty: "my UDP address is where this came from"
  kRegistered = 2,  // hub -> client, empty: the hub has that address
  kData = 3,        // either way: one fragment of a value
  kAck = 4,         // either way: "I hold this seq of the attribute"
};
enum class Direction : uint8_t { kClientToHub = 0, kHubToClient = 1 };

using Key = std::array<uint8_t, 32>;

// HMAC-SHA256(key = token, kKeyLabel || client nonce || hub nonce): the handshake proofs'
// construction with another label, so the key is independent of the proofs sent on the wire
// (the three labels differ in length, so no two inputs coincide). Both ends know it after AUTH.
Key DeriveKey(std::string_view token, const Nonce& client_nonce, const Nonce& hub_nonce);

// What identifies one value and travels in each of its fragments.
struct DataHeader {
  uint32_t attr_id = 0;
  // The value's identity and order: hub -> client the attribute's version; client -> hub the
  // writer's own increasing sequence number for the attribute.
  uint64_t seq = 0;
  uint64_t clock = 0;
  uint32_t writer = 0;
  int64_t write_ns = 0;
  bool codec = false;  // header flag kFlagCodec
};
// One fragment. Fragment rules: frag_count == FragmentCount(total_bytes), frag_index <
// frag_count, and every fragment but the last carries exactly kMaxPayload bytes, the last the
// rest (a 0-byte value is one fragment with an empty payload).
struct Data {
  DataHeader header;
  uint32_t total_bytes = 0;
  uint16_t frag_index = 0;
  uint16_t frag_count = 1;
  ByteSpan payload;  // Open: points into the datagram
};
struct Ack {
  uint32_t attr_id = 0;
  uint64_t seq = 0;
  // Hub -> writer: the version the hub gave the write `seq` (0 elsewhere).
  uint64_t version = 0;
};
struct Datagram {
  Type type = Type::kRegister;
  Direction direction = Direction::kClientToHub;
  // The client's id on the hub: the sender's on client -> hub, the recipient's on hub -> client.
  uint32_t client_id = 0;
  // Per key and direction, strictly increasing at the sender, from 1 (ReplayWindow).
  uint64_t counter = 0;
  Data data;  // type kData only
  Ack ack;    // type kAck; type kData with piggy_ack
  // A DATA datagram that also carries an ACK (kFlagAck): acknowledgements ride on traffic
  // that goes anyway instead of costing datagrams (and wake-ups) of their own.
  bool piggy_ack = false;
};

// 1 for an empty value, else ceil(total_bytes / kMaxPayload).
constexpr uint64_t FragmentCount(uint64_t total_bytes) {
  return total_bytes == 0 ? 1 : (total_bytes + kMaxPayload - 1) / kMaxPayload;
}
// OK when `d` obeys the fragment rules and total_bytes <= max_value_bytes; else Corruption.
Status CheckFragment(const Data& d, uint64_t max_value_bytes);

// Writes the whole datagram `d` (header, body, MAC) to the front of `out` and returns its size
// (<= kMaxDatagram). Returns 0, writing nothing useful, when out is too small or `d` is one
// Open would refuse (counter or client id 0, REGISTER from the hub, REGISTERED to it, a DATA
// that breaks the fragment rules or is over kMaxValueBytes): a caller bug, never sent.
size_t Seal(const Key& key, const Datagram& d, std::span<std::byte> out);

// Verifies and decodes a received datagram. `from` is the direction the receiver expects (the
// hub opens kClientToHub); a datagram of the other direction is refused, so one cannot be
// reflected to its sender. Checks magic, version, length and client id != 0, then the MAC
// ("bad MAC" in the message), then direction, counter != 0, reserved bits, type, the length
// per type, the fragment rules and total_bytes <= max_value_bytes. Does not
// check the counter against a replay window (the caller's ReplayWindow does) nor the client id
// against the key's owner (the caller picked the key by it).
Result<Datagram> Open(const Key& key, ByteSpan datagram, Direction from, uint64_t max_value_bytes);

// The client id of a datagram, to pick the key to Open it with. Checks only magic, version,
// length and client id != 0: the id is not authenticated until Open succeeds.
Result<uint32_t> PeekClientId(ByteSpan datagram);

// Anti-replay over a sliding window of the last kWindow counters (RFC 6479 / WireGuard style
// ring of bitmap words).
class ReplayWindow {
 public:
  static constexpr uint64_t kWindow = 1024;

  // True the first time `counter` is seen, if it is newer than highest() - kWindow; false for
  // a duplicate, one too old to tell, and 0. Call only after Open succeeded: an unauthenticated
  // counter would move the window.
  bool Accept(uint64_t counter);
  uint64_t highest() const { return highest_; }

 private:
  // One word more than the window: the word of the newest counter is partly in the future, so
  // kWindow / 64 words would let the oldest word of the window be recycled too early.
  static constexpr size_t kWords = kWindow / 64 + 1;
  uint64_t highest_ = 0;
  std::array<uint64_t, kWords> bits_{};
};

// Calls `emit` with each fragment of `value`, in order; their payloads point into `value`.
// InvalidArgument (and no call) when value is over kMaxValueBytes.
Status Fragment(const DataHeader& header, ByteSpan value, FunctionRef<void(const Data&)> emit);

// Puts values back together from fragments that arrive in any order, any number of times, or
// never, and keeps only the latest value of each stream.
//
// A stream is the caller's key for one ordered value stream (e.g. peer and attribute packed
// into 64 bits); within it values are identified and ordered by seq. Add returns a value when
// its last missing fragment arrives and its seq is newer than the last value returned for the
// stream. When a value is returned, the stream's partial values of older seq are dropped
// (incomplete()). The value buffers of partial values stay within max_bytes (plus a few hundred
// bytes of bookkeeping per partial value, each of which holds over kMaxPayload value bytes): to
// make room the oldest partial values, of any stream, are dropped first (incomplete()). A
// single-fragment value is returned at once and holds nothing. Memory per stream seen (its last
// seq) stays until Forget.
class Reassembler {
 public:
  struct Completed {
    uint64_t stream = 0;
    DataHeader header;
    std::vector<std::byte> value;
  };

  explicit Reassembler(size_t max_bytes) : max_bytes_(max_bytes) {}

  std::optional<Completed> Add(uint64_t stream, const Data& fragment);
  // Drops the stream's partial values (not counted) and its last seq: its next value is new.
  void Forget(uint64_t stream);

  // Fragments refused because their seq is not newer than the last value returned for their
  // stream (duplicates of a delivered value, and late values: one per fragment that arrives).
  uint64_t stale() const { return stale_; }
  // Partial values dropped unfinished: superseded, evicted for room, or contradicted by a
  // fragment that disagrees with the others on the value's fields.
  uint64_t incomplete() const { return incomplete_; }
  // Fragments refused as malformed (against the fragment rules, or over kMaxValueBytes), as
  // larger than max_bytes, or as contradicting their partial value.
  uint64_t rejected() const { return rejected_; }
  // The value bytes of partial values held now (<= max_bytes).
  size_t bytes_held() const { return bytes_held_; }
  size_t partial_values() const { return by_age_.size(); }

 private:
  struct Partial {
    Data shape;  // the first fragment's fields (payload unused)
    uint64_t age = 0;
    uint32_t received = 0;
    std::vector<uint64_t> have;  // a bit per fragment
    std::vector<std::byte> value;
  };
  struct Stream {
    bool delivered = false;
    uint64_t last_seq = 0;
    std::map<uint64_t, Partial> partials;  // by seq
  };

  // Drops one partial value (counted as incomplete).
  void Drop(Stream& s, std::map<uint64_t, Partial>::iterator it);
  // Marks `seq` delivered on the stream, dropping its partial values of seq <= `seq`.
  void Deliver(Stream& s, uint64_t seq);
  // Drops the oldest partial values until `bytes` more fit.
  void MakeRoom(size_t bytes);

  size_t max_bytes_;
  size_t bytes_held_ = 0;
  uint64_t next_age_ = 0;
  uint64_t stale_ = 0, incomplete_ = 0, rejected_ = 0;
  std::unordered_map<uint64_t, Stream> streams_;
  struct Where {
    uint64_t stream, seq;
  };
  std::map<uint64_t, Where> by_age_;  // every partial value, oldest first
};

}  // namespace easysync::net::udp
