// The UDP path's datagrams (net/udp_wire.h). The MAC is checked before the body is parsed,
// so only an authenticated peer's bytes reach the body rules.
#include "net/udp_wire.h"

#include <sodium.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace easysync::net::udp {
namespace {

constexpr size_t kAckDatagram = kHeaderBytes + kAckBodyBytes + kMacBytes;

void InitSodium() {
  // sodium_init picks the fastest BLAKE2b for this CPU; it is thread-safe and idempotent.
  static const bool ready = sodium_init() >= 0;
  (void)ready;
}

// Stores into a buffer the caller sized beforehand.
class Writer {
 public:
  explicit Writer(std::byte* out) : out_(out) {}
  void U8(uint8_t v) { out_[pos_++] = std::byte(v); }
  void U16(uint16_t v) { Le(v, 2); }
  void U32(uint32_t v) { Le(v, 4); }
  void U64(uint64_t v) { Le(v, 8); }
  void Raw(ByteSpan b) {
    if (!b.empty()) std::memcpy(out_ + pos_, b.data(), b.size());
    pos_ += b.size();
  }
  size_t pos() const { return pos_; }

 private:
  void Le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_[pos_++] = std::byte((v >> (8 * i)) & 0xff);
  }
  std::byte* out_;
  size_t pos_ = 0;
};

// Reads fields whose presence the caller checked from the datagram's length.
class Reader {
 public:
  explicit Reader(ByteSpan in) : in_(in) {}
  uint8_t U8() { return uint8_t(in_[pos_++]); }
  uint16_t U16() { return static_cast<uint16_t>(Le(2)); }
  uint32_t U32() { return static_cast<uint32_t>(Le(4)); }
  uint64_t U64() { return Le(8); }
  int64_t I64() { return static_cast<int64_t>(Le(8)); }
  ByteSpan Raw(size_t n) {
    ByteSpan r = in_.subspan(pos_, n);
    pos_ += n;
    return r;
  }

 private:
  uint64_t Le(size_t n) {
    uint64_t x = 0;
    for (size_t i = 0; i < n; ++i) x |= uint64_t(uint8_t(in_[pos_ + i])) << (8 * i);
    pos_ += n;
    return x;
  }
  ByteSpan in_;
  size_t pos_ = 0;
};

std::array<uint8_t, kMacBytes> ComputeMac(const Key& key, ByteSpan authenticated) {
  InitSodium();
  std::array<uint8_t, kMacBytes> mac{};
  crypto_generichash(mac.data(), mac.size(),
                     reinterpret_cast<const unsigned char*>(authenticated.data()),
                     authenticated.size(), key.data(), key.size());
  return mac;
}

Status Bad(std::string_view why) { return Status::Corruption("UDP datagram: " + std::string(why)); }

// The envelope checks PeekClientId and Open share.
struct Envelope {
  uint8_t type = 0, flags = 0, reserved = 0;
  uint32_t client_id = 0;
  uint64_t counter = 0;
};
Result<Envelope> ReadEnvelope(ByteSpan datagram) {
  if (datagram.size() < kMinDatagram) return Bad("shorter than a header and a MAC");
  if (datagram.size() > kMaxDatagram) return Bad("longer than the largest datagram");
  Reader r(datagram);
  if (r.U32() != kMagic) return Bad("bad magic number");
  if (r.U8() != kVersion) return Bad("unknown version");
  Envelope e;
  e.type = r.U8();
  e.flags = r.U8();
  e.reserved = r.U8();
  e.client_id = r.U32();
  e.counter = r.U64();
  if (e.client_id == 0) return Bad("client id 0");
  return e;
}

// Everything Seal must refuse to write, so that it never sends what Open refuses.
bool Sealable(const Datagram& d) {
  if (d.client_id == 0 || d.counter == 0) return false;
  switch (d.type) {
    case Type::kRegister:
      return d.direction == Direction::kClientToHub;
    case Type::kRegistered:
      return d.direction == Direction::kHubToClient;
    case Type::kData:
      return CheckFragment(d.data, kMaxValueBytes).ok();
    case Type::kAck:
      return true;
  }
  return false;
}

}  // namespace

Key DeriveKey(std::string_view token, const Nonce& client_nonce, const Nonce& hub_nonce) {
  return ComputeProof(token, kKeyLabel, client_nonce, hub_nonce);
}

Status CheckFragment(const Data& d, uint64_t max_value_bytes) {
  if (d.total_bytes > max_value_bytes) {
    return Bad("a value of " + std::to_string(d.total_bytes) + " bytes is over the limit of " +
               std::to_string(max_value_bytes));
  }
  if (d.frag_count != FragmentCount(d.total_bytes)) return Bad("fragment count does not fit");
  if (d.frag_index >= d.frag_count) return Bad("fragment index out of range");
  const size_t offset = size_t{d.frag_index} * kMaxPayload;
  const size_t expect = std::min<size_t>(kMaxPayload, d.total_bytes - offset);
  if (d.payload.size() != expect) return Bad("fragment payload of the wrong size");
  return Status::Ok();
}

size_t Seal(const Key& key, const Datagram& d, std::span<std::byte> out) {
  if (!Sealable(d)) return 0;
  size_t body = 0;
  if (d.type == Type::kData) {
    body = kDataBodyBytes + (d.piggy_ack ? kAckBodyBytes : 0) + d.data.payload.size();
  }
  if (d.type == Type::kAck) body = kAckBodyBytes;
  const size_t size = kHeaderBytes + body + kMacBytes;
  if (out.size() < size) return 0;

  Writer w(out.data());
  w.U32(kMagic);
  w.U8(kVersion);
  w.U8(static_cast<uint8_t>(d.type));
  uint8_t flags = d.direction == Direction::kHubToClient ? kFlagFromHub : 0;
  if (d.type == Type::kData && d.data.header.codec) flags |= kFlagCodec;
  if (d.type == Type::kData && d.piggy_ack) flags |= kFlagAck;
  w.U8(flags);
  w.U8(0);
  w.U32(d.client_id);
  w.U64(d.counter);
  if (d.type == Type::kData) {
    const Data& m = d.data;
    w.U32(m.header.attr_id);
    w.U64(m.header.seq);
    w.U64(m.header.clock);
    w.U32(m.header.writer);
    w.U64(static_cast<uint64_t>(m.header.write_ns));
    w.U32(m.total_bytes);
    w.U16(m.frag_index);
    w.U16(m.frag_count);
    if (d.piggy_ack) {
      w.U32(d.ack.attr_id);
      w.U64(d.ack.seq);
      w.U64(d.ack.version);
    }
    w.Raw(m.payload);
  } else if (d.type == Type::kAck) {
    w.U32(d.ack.attr_id);
    w.U64(d.ack.seq);
    w.U64(d.ack.version);
  }
  const auto mac = ComputeMac(key, ByteSpan(out.data(), w.pos()));
  w.Raw(std::as_bytes(std::span(mac)));
  return w.pos();
}

Result<uint32_t> PeekClientId(ByteSpan datagram) {
  EASYSYNC_ASSIGN_OR_RETURN(Envelope e, ReadEnvelope(datagram));
  return e.client_id;
}

Result<Datagram> Open(const Key& key, ByteSpan datagram, Direction from, uint64_t max_value_bytes) {
  EASYSYNC_ASSIGN_OR_RETURN(Envelope e, ReadEnvelope(datagram));
  const size_t signed_bytes = datagram.size() - kMacBytes;
  const auto mac = ComputeMac(key, datagram.first(signed_bytes));
  if (sodium_memcmp(mac.data(), datagram.data() + signed_bytes, kMacBytes) != 0) {
    return Bad("bad MAC");
  }

  Datagram d;
  d.client_id = e.client_id;
  d.counter = e.counter;
  d.direction = (e.flags & kFlagFromHub) != 0 ? Direction::kHubToClient : Direction::kClientToHub;
  if (d.direction != from) return Bad("travels the other way (reflected?)");
  if (e.counter == 0) return Bad("counter 0");
  const uint8_t may_flag =
      kFlagFromHub | (e.type == uint8_t(Type::kData) ? kFlagCodec | kFlagAck : 0);
  if ((e.flags & ~may_flag) != 0 || e.reserved != 0) return Bad("reserved bits set");

  switch (e.type) {
    case uint8_t(Type::kRegister):
    case uint8_t(Type::kRegistered): {
      d.type = static_cast<Type>(e.type);
      if ((d.type == Type::kRegister) != (from == Direction::kClientToHub)) {
        return Bad("a registration that travels the wrong way");
      }
      if (datagram.size() != kMinDatagram) return Bad("a registration with a body");
      return d;
    }
    case uint8_t(Type::kAck): {
      d.type = Type::kAck;
      if (datagram.size() != kAckDatagram) return Bad("ACK of the wrong size");
      Reader r(datagram.subspan(kHeaderBytes));
      d.ack.attr_id = r.U32();
      d.ack.seq = r.U64();
      d.ack.version = r.U64();
      return d;
    }
    case uint8_t(Type::kData): {
      d.type = Type::kData;
      d.piggy_ack = (e.flags & kFlagAck) != 0;
      const size_t fixed = kDataBodyBytes + (d.piggy_ack ? kAckBodyBytes : 0);
      if (datagram.size() < kHeaderBytes + fixed + kMacBytes) {
        return Bad("DATA shorter than its body");
      }
      Reader r(datagram.subspan(kHeaderBytes, signed_bytes - kHeaderBytes));
      Data& m = d.data;
      m.header.attr_id = r.U32();
      m.header.seq = r.U64();
      m.header.clock = r.U64();
      m.header.writer = r.U32();
      m.header.write_ns = r.I64();
      m.header.codec = (e.flags & kFlagCodec) != 0;
      m.total_bytes = r.U32();
      m.frag_index = r.U16();
      m.frag_count = r.U16();
      if (d.piggy_ack) {
        d.ack.attr_id = r.U32();
        d.ack.seq = r.U64();
        d.ack.version = r.U64();
      }
      m.payload = r.Raw(signed_bytes - kHeaderBytes - fixed);
      EASYSYNC_RETURN_IF_ERROR(CheckFragment(m, max_value_bytes));
      return d;
    }
    default:
      return Bad("unknown type " + std::to_string(e.type));
  }
}

bool ReplayWindow::Accept(uint64_t counter) {
  if (counter == 0) return false;
  const uint64_t block = counter / 64;
  if (counter > highest_) {
    // Clear the words the window slides over (all of them after a jump of kWords or more).
    const uint64_t top = highest_ / 64;
    const uint64_t steps = std::min<uint64_t>(block - top, kWords);
    for (uint64_t i = 1; i <= steps; ++i) bits_[(top + i) % kWords] = 0;
    highest_ = counter;
  } else if (highest_ - counter >= kWindow) {
    return false;
  }
  uint64_t& word = bits_[block % kWords];
  const uint64_t bit = uint64_t{1} << (counter % 64);
  if ((word & bit) != 0) return false;
  word |= bit;
  return true;
}

Status Fragment(const DataHeader& header, ByteSpan value, FunctionRef<void(const Data&)> emit) {
  if (value.size() > kMaxValueBytes) {
    return Status::InvalidArgument("a value of " + std::to_string(value.size()) +
                                   " bytes is over the UDP path's limit of " +
                                   std::to_string(kMaxValueBytes));
  }
  Data d;
  d.header = header;
  d.total_bytes = static_cast<uint32_t>(value.size());
  d.frag_count = static_cast<uint16_t>(FragmentCount(value.size()));
  for (uint32_t i = 0; i < d.frag_count; ++i) {
    const size_t offset = size_t{i} * kMaxPayload;
    d.frag_index = static_cast<uint16_t>(i);
    d.payload = value.subspan(offset, std::min(kMaxPayload, value.size() - offset));
    emit(d);
  }
  return Status::Ok();
}

namespace {
bool SameValue(const Data& a, const Data& b) {
  return a.total_bytes == b.total_bytes && a.frag_count == b.frag_count &&
         a.header.attr_id == b.header.attr_id && a.header.clock == b.header.clock &&
         a.header.writer == b.header.writer && a.header.write_ns == b.header.write_ns &&
         a.header.codec == b.header.codec;
}
}  // namespace

void Reassembler::Drop(Stream& s, std::map<uint64_t, Partial>::iterator it) {
  bytes_held_ -= it->second.value.size();
  by_age_.erase(it->second.age);
  s.partials.erase(it);
  ++incomplete_;
}

void Reassembler::Deliver(Stream& s, uint64_t seq) {
  s.delivered = true;
  s.last_seq = seq;
  // A newer value supersedes the older ones: latest value wins.
  while (!s.partials.empty() && s.partials.begin()->first <= seq) Drop(s, s.partials.begin());
}

void Reassembler::MakeRoom(size_t bytes) {
  while (!by_age_.empty() && max_bytes_ - bytes_held_ < bytes) {
    const Where w = by_age_.begin()->second;
    Stream& s = streams_.at(w.stream);
    Drop(s, s.partials.find(w.seq));
  }
}

std::optional<Reassembler::Completed> Reassembler::Add(uint64_t stream, const Data& fragment) {
  if (!CheckFragment(fragment, kMaxValueBytes).ok() ||
      (fragment.frag_count > 1 && fragment.total_bytes > max_bytes_)) {
    ++rejected_;
    return std::nullopt;
  }
  Stream& s = streams_[stream];
  const uint64_t seq = fragment.header.seq;
  if (s.delivered && seq <= s.last_seq) {
    ++stale_;
    return std::nullopt;
  }
  if (fragment.frag_count == 1) {
    Deliver(s, seq);
    return Completed{stream, fragment.header,
                     std::vector<std::byte>(fragment.payload.begin(), fragment.payload.end())};
  }

  auto it = s.partials.find(seq);
  if (it != s.partials.end() && !SameValue(it->second.shape, fragment)) {
    Drop(s, it);
    ++rejected_;
    return std::nullopt;
  }
  if (it == s.partials.end()) {
    MakeRoom(fragment.total_bytes);
    Partial p;
    p.shape = fragment;
    p.shape.payload = {};
    p.age = next_age_++;
    p.have.assign((fragment.frag_count + 63) / 64, 0);
    p.value.resize(fragment.total_bytes);
    it = s.partials.emplace(seq, std::move(p)).first;
    by_age_.emplace(it->second.age, Where{stream, seq});
    bytes_held_ += fragment.total_bytes;
  }
  Partial& p = it->second;
  uint64_t& word = p.have[fragment.frag_index / 64];
  const uint64_t bit = uint64_t{1} << (fragment.frag_index % 64);
  if ((word & bit) != 0) return std::nullopt;  // a duplicate
  word |= bit;
  std::memcpy(p.value.data() + size_t{fragment.frag_index} * kMaxPayload, fragment.payload.data(),
              fragment.payload.size());
  if (++p.received < p.shape.frag_count) return std::nullopt;

  Completed done{stream, p.shape.header, std::move(p.value)};
  bytes_held_ -= done.value.size();
  by_age_.erase(p.age);
  s.partials.erase(it);
  Deliver(s, seq);
  return done;
}

void Reassembler::Forget(uint64_t stream) {
  auto it = streams_.find(stream);
  if (it == streams_.end()) return;
  for (auto& [seq, p] : it->second.partials) {
    bytes_held_ -= p.value.size();
    by_age_.erase(p.age);
  }
  streams_.erase(it);
}

}  // namespace easysync::net::udp
