// The network wire protocol: every constant of it, and bounds-checked encoders/decoders.
//
// Normative description: docs/net_protocol.md. A frame is one UCX active message: a 16-byte
// header (magic, protocol version, type, flags, payload length, reserved) and a payload whose
// layout depends on the type. All integers are little-endian.
//
// Decoders never trust their input: every length is checked against what is left of the
// frame, trailing bytes are rejected, and a bad frame is Status::Corruption, never a crash.
// Decoded ByteSpans point into the caller's frame.
//
// Thread-safety: free functions on caller-owned data.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "easysync/function_ref.h"
#include "easysync/status.h"
#include "easysync/value_traits.h"

namespace easysync::net {

inline constexpr uint32_t kMagic = 0x4E595345;  // "ESYN" in memory order
inline constexpr uint16_t kProtocolVersion = 4;
inline constexpr size_t kHeaderBytes = 16;
inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kMacBytes = 32;  // HMAC-SHA256
inline constexpr size_t kMaxNameBytes = 255;
inline constexpr size_t kMaxErrorText = 1024;
// 1 GiB of value plus room for the headers: a value of a round size still fits.
inline constexpr uint64_t kDefaultMaxMessageBytes = (1ull << 30) + (1ull << 20);
// The one active-message id every frame travels on.
inline constexpr unsigned kAmId = 17;
// Direction labels of the challenge-response MACs (see docs/net_protocol.md, "Handshake").
inline constexpr std::string_view kClientProofLabel = "easysync-v1 client proof";
inline constexpr std::string_view kHubProofLabel = "easysync-v1 hub proof";

enum class MsgType : uint8_t {
  kHello = 1,      // client -> hub: protocol version, client nonce
  kChallenge = 2,  // hub -> client: hub nonce
  kAuth = 3,       // client -> hub: client proof
  kWelcome = 4,    // hub -> client: client id, hub time, hub proof
  kError = 5,      // either way: code, fatal flag, request id, text
  kDeclare = 6,    // client -> hub: object, attribute, kind, optional initial value
  kDeclared = 7,   // hub -> client: attribute id and its snapshot
  kWrite = 8,      // client -> hub: a new value
  kWritten = 9,    // hub -> client: the version and clock the hub assigned to a write
  kUpdate = 10,    // hub -> client: a value another client wrote
  kResync = 11,    // client -> hub: send me the whole current value of an attribute
  kPing = 12,      // client -> hub: keep-alive and clock sample
  kPong = 13,      // hub -> client: the PING's time echoed, with the hub's time
};
inline constexpr uint8_t kMaxMsgType = 13;
// A closing client and a stopping hub say goodbye: a fatal ERROR kShuttingDown. They wait this
// long at most for it (and what was sent before it) to leave: a stalled peer holds them no
// longer.
inline constexpr std::chrono::milliseconds kGoodbyeLimit{500};
// Header flag of WRITE and UPDATE: the value is a codec value (tensor header + codec frame,
// net/wire_value.h), not the raw value.
inline constexpr uint8_t kFlagCodec = 1;
// With kFlagCodec: the value is one segment of a tensor write (wire_value.h, "Segments").
inline constexpr uint8_t kFlagSegment = 2;
// DECLARE flags.
inline constexpr uint8_t kDeclareHasInitial = 1;
// With kDeclareHasInitial: the value is one the client already held at a version and clock
// of this cluster (a client resuming after a reconnect), not a first value.
inline constexpr uint8_t kDeclareResume = 2;
// The client wants this attribute's updates as UDP datagrams (best effort, latest wins).
inline constexpr uint8_t kDeclareUdp = 4;
std::string_view MsgTypeName(MsgType t);

enum class ErrorCode : uint16_t {
  kMalformed = 1,        // a frame that does not decode
  kVersionMismatch = 2,  // the peer speaks another protocol version
  kAuthFailed = 3,       // wrong token
  kTooLarge = 4,         // over the hub's --max-message-bytes
  kUnexpected = 5,       // a valid message in the wrong state (e.g. DECLARE before AUTH)
  kTypeMismatch = 6,     // attribute known with another kind (not fatal)
  kInvalidArgument = 7,  // a bad name (not fatal)
  kNotFound = 8,         // an attribute id this peer did not declare (not fatal)
  kShuttingDown = 9,
  kStaleBase = 10,  // a delta WRITE whose base is not the hub's current value: send it whole
  kHubFull = 11,    // over the hub's bound on attributes or value bytes (not fatal)
};
// The Status a client reports for an error the hub sent.
Status ErrorToStatus(ErrorCode code, std::string_view text);

using Nonce = std::array<uint8_t, kNonceBytes>;
using Mac = std::array<uint8_t, kMacBytes>;

struct Header {
  uint16_t version = kProtocolVersion;
  MsgType type = MsgType::kError;
  uint8_t flags = 0;  // reserved: 0
  uint32_t payload_bytes = 0;
};
struct Hello {
  uint16_t version = kProtocolVersion;
  Nonce nonce{};
};
struct Challenge {
  Nonce nonce{};
};
struct Auth {
  Mac mac{};
};
struct Welcome {
  uint32_t client_id = 0;
  int64_t hub_time_ns = 0;
  Mac mac{};
  uint64_t max_message_bytes = 0;  // the largest message the hub accepts (>= 1024)
};
struct ErrorMsg {
  ErrorCode code = ErrorCode::kMalformed;
  bool fatal = true;
  uint32_t request_id = 0;  // 0: about the connection
  std::string text;
};
struct Declare {
  uint32_t request_id = 0;
  ValueKind kind = ValueKind::kBool;
  bool has_initial = false;
  std::string object, attribute;
  ByteSpan initial;
  bool resume = false;              // REQUIRES has_initial; version and clock are sent
  uint64_t version = 0, clock = 0;  // of the initial value, when resuming
  bool udp = false;                 // kDeclareUdp
};
struct Declared {
  uint32_t request_id = 0;
  uint32_t attr_id = 0;
  uint64_t version = 0, clock = 0;  // version 0: no value yet
  uint32_t writer = 0;
  int64_t write_ns = 0;  // hub clock domain
  ByteSpan value;
};
struct Write {
  uint32_t request_id = 0;
  uint32_t attr_id = 0;
  uint64_t clock = 0;    // the writer's Lamport clock
  int64_t write_ns = 0;  // hub clock domain (the writer's estimate)
  ByteSpan value;
  bool codec = false;    // header flag kFlagCodec
  bool segment = false;  // header flag kFlagSegment
};
struct Written {
  uint32_t request_id = 0;
  uint32_t attr_id = 0;
  uint64_t version = 0, clock = 0;
};
struct Update {
  uint32_t attr_id = 0;
  uint64_t version = 0, clock = 0;
  uint32_t writer = 0;
  int64_t write_ns = 0;
  ByteSpan value;
  bool codec = false;    // header flag kFlagCodec
  bool segment = false;  // header flag kFlagSegment
};

struct Resync {
  uint32_t attr_id = 0;
};
struct Ping {
  int64_t client_ns = 0;  // the client's clock
};
struct Pong {
  int64_t client_ns = 0;  // echoed
  int64_t hub_ns = 0;     // the hub's clock when it answered
};

// Frame memory: 64-byte aligned, and large blocks recycled. A fresh 256 MiB buffer costs
// about 100 ms of page faults at first touch on a VM, several times the copy into it; a
// message or value of the size just freed (the next write of the same tensor, its next
// relay, its next receive) takes the freed block back instead. Bounded: at most
// kFrameCacheBlocks blocks and kFrameCacheBytes in all, each kept at most 10 s after its
// last use. Thread-safe.
inline constexpr size_t kFrameCacheMinBytes = size_t{8} << 20;
inline constexpr size_t kFrameCacheBlocks = 8;
inline constexpr size_t kFrameCacheBytes = size_t{1} << 30;
void* AllocateFrameBytes(size_t bytes);
void FreeFrameBytes(void* p, size_t bytes);
// Tests: how many blocks the cache holds now.
size_t FrameCacheBlocksForTests();

// Whole messages, and the values replicas keep: 64-byte aligned, so a tensor value inside
// one (at a multiple of 64 bytes from the start) can be handed out as a Tensor without a copy.
// Growing a Frame (Frame(n), resize(n)) leaves the new bytes as they are, not zeroed: every
// such frame is written before it is read (a decode's output, a receive, an encode cut to
// what it wrote), and zeroing a large value first would cost a pass over it (and, on fresh
// memory, take every page fault at once).
template <class T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <class U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}  // NOLINT: rebinding
  T* allocate(size_t n) { return static_cast<T*>(AllocateFrameBytes(n * sizeof(T))); }
  void deallocate(T* p, size_t n) { FreeFrameBytes(p, n * sizeof(T)); }
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;  // default-initialized: a byte is left as it is
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  friend bool operator==(const CacheLineAllocator&, const CacheLineAllocator&) { return true; }
};
using Frame = std::vector<std::byte, CacheLineAllocator<std::byte>>;

// Checks magic, reserved fields (flags: only kFlagCodec, on WRITE and UPDATE) and that the payload
// length matches the frame exactly, and that the frame is at most max_frame_bytes. The version is
// returned, not checked: ERROR frames of any version decode (their layout never changes).
Result<Header> DecodeHeader(ByteSpan frame, uint64_t max_frame_bytes);
// The payload of a frame whose header decoded.
inline ByteSpan Payload(ByteSpan frame) { return frame.subspan(kHeaderBytes); }

Frame Encode(const Hello& m);
Frame Encode(const Challenge& m);
Frame Encode(const Auth& m);
Frame Encode(const Welcome& m);
Frame Encode(const ErrorMsg& m);
Frame Encode(const Declare& m);
Frame Encode(const Declared& m);
Frame Encode(const Written& m);
Frame Encode(const Update& m);
Frame Encode(const Write& m);
Frame Encode(const Resync& m);
Frame Encode(const Ping& m);
Frame Encode(const Pong& m);
// Cuts a frame (made with room to spare) to `size` bytes and fixes its payload length.
// REQUIRES: kHeaderBytes <= size <= frame->size().
void ShrinkFrame(Frame* frame, size_t size);
// A WRITE whose value (value_size bytes) `fill` writes straight into the frame; m.value is
// ignored.
Frame EncodeWrite(const Write& m, size_t value_size, FunctionRef<void(std::byte*)> fill);
// The first kWriteValueOffset + head_bytes bytes of such a WRITE (fill writes the value's first
// head_bytes): the head of a frame whose value ends elsewhere (UcxWorker::SendSplit).
// REQUIRES: head_bytes <= value_size.
Frame EncodeWriteHead(const Write& m, size_t value_size, size_t head_bytes,
                      FunctionRef<void(std::byte*)> fill);
// The first kUpdateValueOffset + head_bytes bytes of the UPDATE m with a value of value_size
// bytes (m.value's first head_bytes go in): the head of a frame whose value is sent from
// elsewhere (UcxWorker::SendSplit). REQUIRES: head_bytes <= m.value.size(), value_size.
Frame EncodeUpdateHead(const Update& m, size_t value_size, size_t head_bytes);
// Where the value starts in a WRITE, UPDATE or DECLARED frame.
inline constexpr size_t kWriteValueOffset = kHeaderBytes + 24;
inline constexpr size_t kUpdateValueOffset = kHeaderBytes + 32;
inline constexpr size_t kDeclaredValueOffset = kHeaderBytes + 36;

Result<Hello> DecodeHello(ByteSpan payload);
Result<Challenge> DecodeChallenge(ByteSpan payload);
Result<Auth> DecodeAuth(ByteSpan payload);
Result<Welcome> DecodeWelcome(ByteSpan payload);
Result<ErrorMsg> DecodeError(ByteSpan payload);
Result<Declare> DecodeDeclare(ByteSpan payload);
Result<Declared> DecodeDeclared(ByteSpan payload);
Result<Write> DecodeWrite(ByteSpan payload);
Result<Written> DecodeWritten(ByteSpan payload);
Result<Update> DecodeUpdate(ByteSpan payload);
Result<Resync> DecodeResync(ByteSpan payload);
Result<Ping> DecodePing(ByteSpan payload);
Result<Pong> DecodePong(ByteSpan payload);

// HMAC-SHA256 keyed by the token over label || client nonce || hub nonce.
Mac ComputeProof(std::string_view token, std::string_view label, const Nonce& client,
                 const Nonce& hub);
// Constant-time comparison.
bool ProofMatches(const Mac& a, const Mac& b);
Nonce RandomNonce();

}  // namespace easysync::net
