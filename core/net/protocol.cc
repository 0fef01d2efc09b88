// Wire encoding of docs/net_protocol.md. Every decoder consumes its payload exactly.
#include "net/protocol.h"

#include <sodium.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>

namespace easysync::net {

namespace {

constexpr std::align_val_t kFrameAlign{64};
// Large frames (tensor values, their segments' buffers) start on a 2 MiB boundary and ask for
// transparent huge pages (where the system leaves that to madvise, as Debian and Ubuntu do):
// a 256 MiB value then takes 128 page faults instead of 65536, and the passes over it (the
// writer's copy, a receiver's decode) miss the TLB far less.
constexpr size_t kHugePageBytes = size_t{2} << 20;
constexpr size_t kHugeMinBytes = 2 * kHugePageBytes;

std::align_val_t AlignmentFor(size_t bytes) {
  return bytes >= kHugeMinBytes ? std::align_val_t{kHugePageBytes} : kFrameAlign;
}

void* NewFrameBytes(size_t bytes) {
  void* p = ::operator new(bytes, AlignmentFor(bytes));
#if defined(MADV_HUGEPAGE)
  if (bytes >= kHugeMinBytes) {
    // Advice only: where it is refused (no THP), the pages are ordinary ones.
    (void)madvise(p, bytes / kHugePageBytes * kHugePageBytes, MADV_HUGEPAGE);
  }
#endif
  return p;
}
constexpr auto kFrameCacheKeep = std::chrono::seconds(10);

struct FrameCache {
  struct Block {
    void* p;
    size_t bytes;
    std::chrono::steady_clock::time_point freed;
  };
  std::mutex mu;
  std::vector<Block> blocks;  // oldest first
  size_t bytes = 0;

  // Drops blocks unused for kFrameCacheKeep, and the oldest until `room` more bytes fit.
  // REQUIRES: mu held. Returns what to free (outside the lock).
  void Evict(size_t room, std::vector<Block>* out) {
    const auto now = std::chrono::steady_clock::now();
    while (!blocks.empty() &&
           (now - blocks.front().freed > kFrameCacheKeep || blocks.size() >= kFrameCacheBlocks ||
            bytes + room > kFrameCacheBytes)) {
      out->push_back(blocks.front());
      bytes -= blocks.front().bytes;
      blocks.erase(blocks.begin());
    }
  }
};

FrameCache& Cache() {
  static auto* cache = new FrameCache;  // never destroyed: frames may be freed at exit
  return *cache;
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kRecycle = false;  // every block fresh: the sanitizer sees every misuse
#else
constexpr bool kRecycle = true;
#endif

}  // namespace

void* AllocateFrameBytes(size_t bytes) {
  if (kRecycle && bytes >= kFrameCacheMinBytes) {
    FrameCache& c = Cache();
    std::lock_guard<std::mutex> lock(c.mu);
    for (size_t i = c.blocks.size(); i-- > 0;) {  // the most recently freed first
      if (c.blocks[i].bytes == bytes) {
        void* p = c.blocks[i].p;
        c.bytes -= bytes;
        c.blocks.erase(c.blocks.begin() + static_cast<ptrdiff_t>(i));
        return p;
      }
    }
  }
  return NewFrameBytes(bytes);
}

void FreeFrameBytes(void* p, size_t bytes) {
  if (p == nullptr) return;
  if (kRecycle && bytes >= kFrameCacheMinBytes && bytes <= kFrameCacheBytes) {
    std::vector<FrameCache::Block> evicted;
    {
      FrameCache& c = Cache();
      std::lock_guard<std::mutex> lock(c.mu);
      c.Evict(bytes, &evicted);
      c.blocks.push_back({p, bytes, std::chrono::steady_clock::now()});
      c.bytes += bytes;
    }
    for (const auto& b : evicted) ::operator delete(b.p, b.bytes, AlignmentFor(b.bytes));
    return;
  }
  ::operator delete(p, bytes, AlignmentFor(bytes));
}

size_t FrameCacheBlocksForTests() {
  FrameCache& c = Cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.blocks.size();
}

namespace {

class Writer {
 public:
  // Room for at most reserve_bytes of the payload (a frame's head, whose value is sent from
  // elsewhere: UcxWorker::SendSplit).
  Writer(MsgType type, size_t payload_bytes, uint8_t flags = 0, size_t reserve_bytes = SIZE_MAX) {
    out_.reserve(kHeaderBytes + std::min(payload_bytes, reserve_bytes));
    U32(kMagic);
    U16(kProtocolVersion);
    U8(static_cast<uint8_t>(type));
    U8(flags);
    U32(static_cast<uint32_t>(payload_bytes));
    U32(0);
  }
  void U8(uint8_t v) { out_.push_back(std::byte(v)); }
  void U16(uint16_t v) { Le(v, 2); }
  void U32(uint32_t v) { Le(v, 4); }
  void U64(uint64_t v) { Le(v, 8); }
  void Raw(const void* p, size_t n) {
    const auto* b = static_cast<const std::byte*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  Frame Take() { return std::move(out_); }
  Frame& frame() { return out_; }

 private:
  void Le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(std::byte((v >> (8 * i)) & 0xff));
  }
  Frame out_;
};

class Reader {
 public:
  explicit Reader(ByteSpan in) : in_(in) {}
  bool U8(uint8_t* v) { return Le(v, 1); }
  bool U16(uint16_t* v) { return Le(v, 2); }
  bool U32(uint32_t* v) { return Le(v, 4); }
  bool U64(uint64_t* v) { return Le(v, 8); }
  bool I64(int64_t* v) {
    uint64_t u;
    if (!U64(&u)) return false;
    *v = static_cast<int64_t>(u);
    return true;
  }
  bool Raw(void* p, size_t n) {
    if (in_.size() - pos_ < n) return false;
    if (n != 0) std::memcpy(p, in_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  bool Str(size_t n, std::string* s) {
    if (in_.size() - pos_ < n) return false;
    s->assign(reinterpret_cast<const char*>(in_.data() + pos_), n);
    pos_ += n;
    return true;
  }
  ByteSpan Rest() {
    ByteSpan r = in_.subspan(pos_);
    pos_ = in_.size();
    return r;
  }
  bool done() const { return pos_ == in_.size(); }

 private:
  template <class T>
  bool Le(T* v, size_t n) {
    if (in_.size() - pos_ < n) return false;
    uint64_t x = 0;
    for (size_t i = 0; i < n; ++i) x |= uint64_t(uint8_t(in_[pos_ + i])) << (8 * i);
    *v = static_cast<T>(x);
    pos_ += n;
    return true;
  }
  ByteSpan in_;
  size_t pos_ = 0;
};

Status Bad(std::string_view what, std::string_view why) {
  return Status::Corruption(std::string(what) + " message: " + std::string(why));
}
Status Truncated(std::string_view what) { return Bad(what, "truncated"); }
Status Finish(Reader& r, std::string_view what) {
  return r.done() ? Status::Ok() : Bad(what, "trailing bytes");
}
bool ValidName(const std::string& s) {
  return !s.empty() && s.size() <= kMaxNameBytes && s.find('\0') == std::string::npos;
}

}  // namespace

std::string_view MsgTypeName(MsgType t) {
  switch (t) {
    case MsgType::kHello:
      return "HELLO";
    case MsgType::kChallenge:
      return "CHALLENGE";
    case MsgType::kAuth:
      return "AUTH";
    case MsgType::kWelcome:
      return "WELCOME";
    case MsgType::kError:
      return "ERROR";
    case MsgType::kDeclare:
      return "DECLARE";
    case MsgType::kDeclared:
      return "DECLARED";
    case MsgType::kWrite:
      return "WRITE";
    case MsgType::kWritten:
      return "WRITTEN";
    case MsgType::kUpdate:
      return "UPDATE";
    case MsgType::kResync:
      return "RESYNC";
    case MsgType::kPing:
      return "PING";
    case MsgType::kPong:
      return "PONG";
  }
  return "UNKNOWN";
}

Status ErrorToStatus(ErrorCode code, std::string_view text) {
  std::string msg = "hub: " + std::string(text);
  switch (code) {
    case ErrorCode::kAuthFailed:
      return Status::PermissionDenied(msg);
    case ErrorCode::kVersionMismatch:
      return Status::InvalidArgument(msg);
    case ErrorCode::kTooLarge:
      return Status::ResourceExhausted(msg);
    case ErrorCode::kTypeMismatch:
      return Status::TypeMismatch(msg);
    case ErrorCode::kInvalidArgument:
      return Status::InvalidArgument(msg);
    case ErrorCode::kNotFound:
      return Status::NotFound(msg);
    case ErrorCode::kShuttingDown:
      return Status::Unavailable(msg);
    case ErrorCode::kHubFull:
      return Status::ResourceExhausted(msg);
    case ErrorCode::kStaleBase:
    case ErrorCode::kMalformed:
    case ErrorCode::kUnexpected:
      break;
  }
  return Status::Corruption(msg);
}

Result<Header> DecodeHeader(ByteSpan frame, uint64_t max_frame_bytes) {
  if (frame.size() < kHeaderBytes) return Status::Corruption("frame shorter than its header");
  if (frame.size() > max_frame_bytes) {
    return Status::ResourceExhausted("frame of " + std::to_string(frame.size()) +
                                     " bytes is over the limit of " +
                                     std::to_string(max_frame_bytes));
  }
  Reader r(frame.first(kHeaderBytes));
  uint32_t magic = 0, payload = 0, reserved = 0;
  uint8_t type = 0;
  Header h;
  (void)(r.U32(&magic) && r.U16(&h.version) && r.U8(&type) && r.U8(&h.flags) && r.U32(&payload) &&
         r.U32(&reserved));
  if (magic != kMagic) return Status::Corruption("frame has a bad magic number");
  if (type == 0 || type > kMaxMsgType) {
    return Status::Corruption("frame has unknown message type " + std::to_string(type));
  }
  const bool may_flag = type == static_cast<uint8_t>(MsgType::kWrite) ||
                        type == static_cast<uint8_t>(MsgType::kUpdate);
  if ((h.flags & ~(may_flag ? kFlagCodec | kFlagSegment : 0)) != 0 || reserved != 0) {
    return Status::Corruption("frame has reserved bits set");
  }
  if ((h.flags & kFlagSegment) != 0 && (h.flags & kFlagCodec) == 0) {
    return Status::Corruption("frame is a segment but not a codec value");
  }
  if (payload != frame.size() - kHeaderBytes) {
    return Status::Corruption("frame says its payload has " + std::to_string(payload) +
                              " bytes but carries " + std::to_string(frame.size() - kHeaderBytes));
  }
  h.type = static_cast<MsgType>(type);
  h.payload_bytes = payload;
  return h;
}

Frame Encode(const Hello& m) {
  Writer w(MsgType::kHello, 36);
  w.U16(m.version);
  w.U16(0);
  w.Raw(m.nonce.data(), kNonceBytes);
  return w.Take();
}
Frame Encode(const Challenge& m) {
  Writer w(MsgType::kChallenge, kNonceBytes);
  w.Raw(m.nonce.data(), kNonceBytes);
  return w.Take();
}
Frame Encode(const Auth& m) {
  Writer w(MsgType::kAuth, kMacBytes);
  w.Raw(m.mac.data(), kMacBytes);
  return w.Take();
}
Frame Encode(const Welcome& m) {
  Writer w(MsgType::kWelcome, 56);
  w.U32(m.client_id);
  w.U32(0);
  w.U64(static_cast<uint64_t>(m.hub_time_ns));
  w.Raw(m.mac.data(), kMacBytes);
  w.U64(m.max_message_bytes);
  return w.Take();
}
Frame Encode(const ErrorMsg& m) {
  const size_t n = std::min(m.text.size(), kMaxErrorText);
  Writer w(MsgType::kError, 10 + n);
  w.U16(static_cast<uint16_t>(m.code));
  w.U8(m.fatal ? 1 : 0);
  w.U8(0);
  w.U32(m.request_id);
  w.U16(static_cast<uint16_t>(n));
  w.Raw(m.text.data(), n);
  return w.Take();
}
Frame Encode(const Declare& m) {
  const bool resume = m.has_initial && m.resume;
  const size_t n = 10 + (resume ? 16 : 0) + m.object.size() + m.attribute.size() + m.initial.size();
  Writer w(MsgType::kDeclare, n);
  w.U32(m.request_id);
  w.U8(static_cast<uint8_t>(m.kind));
  w.U8((m.has_initial ? kDeclareHasInitial : 0) | (resume ? kDeclareResume : 0) |
       (m.udp ? kDeclareUdp : 0));
  w.U16(static_cast<uint16_t>(m.object.size()));
  w.U16(static_cast<uint16_t>(m.attribute.size()));
  w.Raw(m.object.data(), m.object.size());
  w.Raw(m.attribute.data(), m.attribute.size());
  if (resume) {
    w.U64(m.version);
    w.U64(m.clock);
  }
  w.Raw(m.initial.data(), m.initial.size());
  return w.Take();
}
Frame Encode(const Declared& m) {
  Writer w(MsgType::kDeclared, kDeclaredValueOffset - kHeaderBytes + m.value.size());
  w.U32(m.request_id);
  w.U32(m.attr_id);
  w.U32(m.writer);
  w.U64(m.version);
  w.U64(m.clock);
  w.U64(static_cast<uint64_t>(m.write_ns));
  w.Raw(m.value.data(), m.value.size());
  return w.Take();
}
Frame Encode(const Written& m) {
  Writer w(MsgType::kWritten, 24);
  w.U32(m.request_id);
  w.U32(m.attr_id);
  w.U64(m.version);
  w.U64(m.clock);
  return w.Take();
}
Frame EncodeUpdateHead(const Update& m, size_t value_size, size_t head_bytes) {
  Writer w(MsgType::kUpdate, kUpdateValueOffset - kHeaderBytes + value_size,
           static_cast<uint8_t>((m.codec ? kFlagCodec : 0) | (m.segment ? kFlagSegment : 0)),
           kUpdateValueOffset - kHeaderBytes + head_bytes);
  w.U32(m.attr_id);
  w.U32(m.writer);
  w.U64(m.version);
  w.U64(m.clock);
  w.U64(static_cast<uint64_t>(m.write_ns));
  w.Raw(m.value.data(), head_bytes);
  return w.Take();
}
Frame Encode(const Update& m) { return EncodeUpdateHead(m, m.value.size(), m.value.size()); }
Frame EncodeWrite(const Write& m, size_t value_size, FunctionRef<void(std::byte*)> fill) {
  return EncodeWriteHead(m, value_size, value_size, fill);
}
Frame EncodeWriteHead(const Write& m, size_t value_size, size_t head_bytes,
                      FunctionRef<void(std::byte*)> fill) {
  Writer w(MsgType::kWrite, kWriteValueOffset - kHeaderBytes + value_size,
           static_cast<uint8_t>((m.codec ? kFlagCodec : 0) | (m.segment ? kFlagSegment : 0)),
           kWriteValueOffset - kHeaderBytes + head_bytes);
  w.U32(m.request_id);
  w.U32(m.attr_id);
  w.U64(m.clock);
  w.U64(static_cast<uint64_t>(m.write_ns));
  Frame f = w.Take();
  f.resize(kWriteValueOffset + head_bytes);
  fill(f.data() + kWriteValueOffset);
  return f;
}
Frame Encode(const Write& m) {
  return EncodeWrite(m, m.value.size(), [&](std::byte* p) {
    if (!m.value.empty()) std::memcpy(p, m.value.data(), m.value.size());
  });
}

Frame Encode(const Resync& m) {
  Writer w(MsgType::kResync, 4);
  w.U32(m.attr_id);
  return w.Take();
}
Frame Encode(const Ping& m) {
  Writer w(MsgType::kPing, 8);
  w.U64(static_cast<uint64_t>(m.client_ns));
  return w.Take();
}
Frame Encode(const Pong& m) {
  Writer w(MsgType::kPong, 16);
  w.U64(static_cast<uint64_t>(m.client_ns));
  w.U64(static_cast<uint64_t>(m.hub_ns));
  return w.Take();
}

void ShrinkFrame(Frame* frame, size_t size) {
  frame->resize(size);
  const uint32_t payload = static_cast<uint32_t>(size - kHeaderBytes);
  for (int i = 0; i < 4; ++i) (*frame)[8 + i] = std::byte((payload >> (8 * i)) & 0xff);
}

Result<Hello> DecodeHello(ByteSpan payload) {
  Reader r(payload);
  Hello m;
  uint16_t reserved = 0;
  if (!r.U16(&m.version) || !r.U16(&reserved) || !r.Raw(m.nonce.data(), kNonceBytes)) {
    return Truncated("HELLO");
  }
  if (reserved != 0) return Bad("HELLO", "reserved bits set");
  EASYSYNC_RETURN_IF_ERROR(Finish(r, "HELLO"));
  return m;
}
Result<Challenge> DecodeChallenge(ByteSpan payload) {
  Reader r(payload);
  Challenge m;
  if (!r.Raw(m.nonce.data(), kNonceBytes)) return Truncated("CHALLENGE");
  EASYSYNC_RETURN_IF_ERROR(Finish(r, "CHALLENGE"));
  return m;
}
Result<Auth> DecodeAuth(ByteSpan payload) {
  Reader r(payload);
  Auth m;
  if (!r.Raw(m.mac.data(), kMacBytes)) return Truncated("AUTH");
  EASYSYNC_RETURN_IF_ERROR(Finish(r, "AUTH"));
  return m;
}
Result<Welcome> DecodeWelcome(ByteSpan payload) {
  Reader r(payload);
  Welcome m;
  uint32_t reserved = 0;
  if (!r.U32(&m.client_id) || !r.U32(&reserved) || !r.I64(&m.hub_time_ns) ||
      !r.Raw(m.mac.data(), kMacBytes) || !r.U64(&m.max_message_bytes)) {
    return Truncated("WELCOME");
  }
  if (reserved != 0) return Bad("WELCOME", "reserved bits set");
  if (m.client_id == 0) return Bad("WELCOME", "client id 0");
  if (m.max_message_bytes < 1024) return Bad("WELCOME", "a message limit under 1024 bytes");
  EASYSYNC_RETURN_IF_ERROR(Finish(r, "WELCOME"));
  return m;
}
Result<ErrorMsg> DecodeError(ByteSpan payload) {
  Reader r(payload);
  ErrorMsg m;
  uint16_t code = 0, n = 0;
  uint8_t fatal = 0, reserved = 0;
  if (!r.U16(&code) || !r.U8(&fatal) || !r.U8(&reserved) || !r.U32(&m.request_id) || !r.U16(&n) ||
      !r.Str(n, &m.text)) {
    return Truncated("ERROR");
  }
  if (fatal > 1 || reserved != 0) return Bad("ERROR", "reserved bits set");
  if (n > kMaxErrorText) return Bad("ERROR", "text too long");
  m.code = static_cast<ErrorCode>(code);
  m.fatal = fatal == 1;
  EASYSYNC_RETURN_IF_ERROR(Finish(r, "ERROR"));
  return m;
}
Result<Declare> DecodeDeclare(ByteSpan payload) {
  Reader r(payload);
  Declare m;
  uint8_t kind = 0, flags = 0;
  uint16_t on = 0, an = 0;
  if (!r.U32(&m.request_id) || !r.U8(&kind) || !r.U8(&flags) || !r.U16(&on) || !r.U16(&an) ||
      !r.Str(on, &m.object) || !r.Str(an, &m.attribute)) {
    return Truncated("DECLARE");
  }
  if (kind == 0 || kind > kMaxValueKind) return Bad("DECLARE", "unknown value kind");
  if ((flags & ~(kDeclareHasInitial | kDeclareResume | kDeclareUdp)) != 0) {
    return Bad("DECLARE", "reserved bits set");
  }
  if ((flags & (kDeclareHasInitial | kDeclareResume)) == kDeclareResume) {
    return Bad("DECLARE", "resuming without a value");
  }
  m.udp = (flags & kDeclareUdp) != 0;
  if (!ValidName(m.object) || !ValidName(m.attribute)) {
    return Bad("DECLARE", "names must have 1 to 255 bytes and no NUL");
  }
  m.kind = static_cast<ValueKind>(kind);
  m.has_initial = (flags & kDeclareHasInitial) != 0;
  m.resume = (flags & kDeclareResume) != 0;
  if (m.resume) {
    if (!r.U64(&m.version) || !r.U64(&m.clock)) return Truncated("DECLARE");
    if (m.version == 0) return Bad("DECLARE", "resuming at version 0");
  }
  m.initial = r.Rest();
  if (!m.has_initial && !m.initial.empty()) return Bad("DECLARE", "a value without the flag");
  return m;
}
Result<Declared> DecodeDeclared(ByteSpan payload) {
  Reader r(payload);
  Declared m;
  if (!r.U32(&m.request_id) || !r.U32(&m.attr_id) || !r.U32(&m.writer) || !r.U64(&m.version) ||
      !r.U64(&m.clock) || !r.I64(&m.write_ns)) {
    return Truncated("DECLARED");
  }
  m.value = r.Rest();
  if (m.version == 0 && !m.value.empty()) return Bad("DECLARED", "a value at version 0");
  return m;
}
Result<Write> DecodeWrite(ByteSpan payload) {
  Reader r(payload);
  Write m;
  if (!r.U32(&m.request_id) || !r.U32(&m.attr_id) || !r.U64(&m.clock) || !r.I64(&m.write_ns)) {
    return Truncated("WRITE");
  }
  m.value = r.Rest();
  return m;
}
Result<Written> DecodeWritten(ByteSpan payload) {
  Reader r(payload);
  Written m;
  if (!r.U32(&m.request_id) || !r.U32(&m.attr_id) || !r.U64(&m.version) || !r.U64(&m.clock)) {
    return Truncated("WRITTEN");
  }
  if (m.version == 0) return Bad("WRITTEN", "version 0");
  EASYSYNC_RETURN_IF_ERROR(Finish(r, "WRITTEN"));
  return m;
}
Result<Update> DecodeUpdate(ByteSpan payload) {
  Reader r(payload);
  Update m;
  if (!r.U32(&m.attr_id) || !r.U32(&m.writer) || !r.U64(&m.version) || !r.U64(&m.clock) ||
      !r.I64(&m.write_ns)) {
    return Truncated("UPDATE");
  }
  if (m.version == 0) return Bad("UPDATE", "version 0");
  m.value = r.Rest();
  return m;
}

Result<Resync> DecodeResync(ByteSpan payload) {
  Reader r(payload);
  Resync m;
  if (!r.U32(&m.attr_id)) return Truncated("RESYNC");
  EASYSYNC_RETURN_IF_ERROR(Finish(r, "RESYNC"));
  return m;
}
Result<Ping> DecodePing(ByteSpan payload) {
  Reader r(payload);
  Ping m;
  if (!r.I64(&m.client_ns)) return Truncated("PING");
  EASYSYNC_RETURN_IF_ERROR(Finish(r, "PING"));
  return m;
}
Result<Pong> DecodePong(ByteSpan payload) {
  Reader r(payload);
  Pong m;
  if (!r.I64(&m.client_ns) || !r.I64(&m.hub_ns)) return Truncated("PONG");
  EASYSYNC_RETURN_IF_ERROR(Finish(r, "PONG"));
  return m;
}

Mac ComputeProof(std::string_view token, std::string_view label, const Nonce& client,
                 const Nonce& hub) {
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, reinterpret_cast<const unsigned char*>(token.data()),
                              token.size());
  crypto_auth_hmacsha256_update(&st, reinterpret_cast<const unsigned char*>(label.data()),
                                label.size());
  crypto_auth_hmacsha256_update(&st, client.data(), client.size());
  crypto_auth_hmacsha256_update(&st, hub.data(), hub.size());
  Mac mac{};
  crypto_auth_hmacsha256_final(&st, mac.data());
  sodium_memzero(&st, sizeof(st));
  return mac;
}

bool ProofMatches(const Mac& a, const Mac& b) {
  return sodium_memcmp(a.data(), b.data(), kMacBytes) == 0;
}

Nonce RandomNonce() {
  static const bool ready = sodium_init() >= 0;
  (void)ready;
  Nonce n{};
  randombytes_buf(n.data(), n.size());
  return n;
}

}  // namespace easysync::net
