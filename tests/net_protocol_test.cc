// The wire protocol: round trips, every truncation, hostile headers and random bytes.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string>

#include "easysync/codec.h"
#include "easysync/tensor.h"
#include "net/protocol.h"
#include "net/wire_value.h"

namespace easysync::net {
namespace {

ByteSpan Span(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}
std::string Str(ByteSpan b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

// Decodes any frame with the decoder of its type (what a receiver does).
Status DecodeAny(ByteSpan frame) {
  auto h = DecodeHeader(frame, 1 << 20);
  if (!h.ok()) return h.status();
  const ByteSpan p = Payload(frame);
  switch (h->type) {
    case MsgType::kHello:
      return DecodeHello(p).status();
    case MsgType::kChallenge:
      return DecodeChallenge(p).status();
    case MsgType::kAuth:
      return DecodeAuth(p).status();
    case MsgType::kWelcome:
      return DecodeWelcome(p).status();
    case MsgType::kError:
      return DecodeError(p).status();
    case MsgType::kDeclare:
      return DecodeDeclare(p).status();
    case MsgType::kDeclared:
      return DecodeDeclared(p).status();
    case MsgType::kWrite:
      return DecodeWrite(p).status();
    case MsgType::kWritten:
      return DecodeWritten(p).status();
    case MsgType::kUpdate:
      return DecodeUpdate(p).status();
    case MsgType::kResync:
      return DecodeResync(p).status();
    case MsgType::kPing:
      return DecodePing(p).status();
    case MsgType::kPong:
      return DecodePong(p).status();
  }
  return Status::Internal("unreachable");
}

// A frame whose header claims `payload` bytes after truncation (so only the payload decoder
// can notice).
Frame Truncate(const Frame& f, size_t payload) {
  Frame t(f.begin(), f.begin() + kHeaderBytes + payload);
  for (int i = 0; i < 4; ++i) t[8 + i] = std::byte((payload >> (8 * i)) & 0xff);
  return t;
}

const std::string kValue = "value-bytes";

std::vector<Frame> AllMessages() {
  Nonce n{};
  for (size_t i = 0; i < n.size(); ++i) n[i] = uint8_t(i);
  Mac m{};
  m[0] = 9;
  return {
      Encode(Hello{kProtocolVersion, n}),
      Encode(Challenge{n}),
      Encode(Auth{m}),
      Encode(Welcome{7, -5, m, 4096}),
      Encode(ErrorMsg{ErrorCode::kAuthFailed, true, 3, "nope"}),
      Encode(Declare{4, ValueKind::kString, true, "Obj", "attr", Span(kValue), false, 0, 0, false}),
      Encode(Declared{4, 2, 9, 10, 3, 123, Span(kValue)}),
      Encode(Write{5, 2, 11, 456, Span(kValue), false}),
      Encode(Written{5, 2, 10, 12}),
      Encode(Update{2, 10, 12, 3, 456, Span(kValue), false}),
      Encode(Resync{6}),
      Encode(Ping{-77}),
      Encode(Pong{-77, 88}),
      Encode(Declare{8, ValueKind::kTensor, true, "O", "t", Span(kValue), true, 41, 42, false}),
      Encode(Update{2, 11, 13, 3, 457, Span(kValue), true}),
      Encode(Write{5, 2, 11, 456, Span(kValue), true}),
  };
}

// A segment value is checked whole before anything uses it: every truncation, a reserved
// byte, a cut that does not fit the tensor and a frame of another range are corruption.
TEST(NetSegments, SegmentValuesAreCheckedWhole) {
  constexpr size_t H = detail::kTensorHeaderBytes;
  Tensor base(DType::kFloat32, {4096}), cur(DType::kFloat32, {4096});  // 16 KiB
  for (int i = 0; i < 4096; ++i) {
    base.mutable_data_as<float>()[i] = static_cast<float>(i);
    cur.mutable_data_as<float>()[i] = static_cast<float>(i % 7 == 0 ? -i : i);
  }
  const auto segment = [&](uint32_t index, uint32_t count, size_t seg_bytes, size_t range_bytes) {
    std::vector<std::byte> v(net::kSegmentHeaderBytes + H +
                             codec::EncodeBound(DType::kFloat32, range_bytes / 4));
    net::WriteSegmentHeader(index, count, seg_bytes, v.data());
    detail::EncodeTensorHeader(DType::kFloat32, cur.shape(), v.data() + net::kSegmentHeaderBytes);
    const size_t off = index * seg_bytes;
    const codec::TensorBytes now{DType::kFloat32, range_bytes / 4,
                                 reinterpret_cast<const uint8_t*>(cur.data()) + off};
    const codec::TensorBytes was{DType::kFloat32, range_bytes / 4,
                                 reinterpret_cast<const uint8_t*>(base.data()) + off};
    codec::Encoder enc;
    auto* f = reinterpret_cast<uint8_t*>(v.data()) + net::kSegmentHeaderBytes + H;
    auto n = enc.Encode(now, &was, 1, 2, {f, v.size() - net::kSegmentHeaderBytes - H});
    EXPECT_TRUE(n.ok());
    v.resize(net::kSegmentHeaderBytes + H + *n);
    return v;
  };
  const auto good = segment(2, 3, 6144, 4096);  // the last of 6 + 6 + 4 KiB
  auto s = net::PeekSegmentValue(good);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->index, 2u);
  EXPECT_EQ(s->count, 3u);
  EXPECT_EQ(s->offset, 12288u);
  EXPECT_EQ(s->bytes, 4096u);
  EXPECT_EQ(s->raw_bytes, H + 16384);
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_EQ(net::PeekSegmentValue(ByteSpan(good).first(n)).status().code(),
              StatusCode::kCorruption)
        << n;
  }
  auto reserved = good;
  reserved[31] = std::byte{1};
  EXPECT_EQ(net::PeekSegmentValue(reserved).status().code(), StatusCode::kCorruption);
  // Cuts that do not fit: 4 segments of 6 KiB, index past the count, a zero or odd segment
  // size, one segment for the whole tensor; and the right cut with another range's frame.
  EXPECT_FALSE(net::PeekSegmentValue(segment(2, 4, 6144, 4096)).ok());
  auto past = good;
  past[0] = std::byte{3};  // index 3 of 3
  EXPECT_FALSE(net::PeekSegmentValue(past).ok());
  auto zero = good;
  std::memset(zero.data() + 8, 0, 8);
  EXPECT_FALSE(net::PeekSegmentValue(zero).ok());
  EXPECT_FALSE(net::PeekSegmentValue(segment(0, 2, 8190, 8188)).ok());
  EXPECT_FALSE(net::PeekSegmentValue(segment(0, 1, 16384, 16384)).ok());
  EXPECT_FALSE(net::PeekSegmentValue(segment(1, 3, 6144, 4096)).ok());
  // The segment flag is for codec WRITEs and UPDATEs only.
  net::Write w{1, 2, 3, 4, good, /*codec=*/true};
  w.segment = true;
  net::Frame f = net::Encode(w);
  EXPECT_TRUE(net::DecodeHeader(f, 1 << 20).ok());
  f[7] = std::byte{net::kFlagSegment};  // without kFlagCodec
  EXPECT_EQ(net::DecodeHeader(f, 1 << 20).status().code(), StatusCode::kCorruption);
  net::Frame ping = net::Encode(net::Ping{5});
  ping[7] = std::byte{net::kFlagCodec | net::kFlagSegment};
  EXPECT_EQ(net::DecodeHeader(ping, 1 << 20).status().code(), StatusCode::kCorruption);
}

// Large frames are recycled: the next frame of a size just freed takes the freed block
// (no page faults), within the cache's bounds.
TEST(NetFrames, LargeFramesAreRecycledWithinBounds) {
  constexpr size_t kBig = size_t{16} << 20;
  const std::byte* first;
  {
    Frame a(kBig);
    first = a.data();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % 64, 0u);
  }
  const size_t held = FrameCacheBlocksForTests();
  if (held == 0) GTEST_SKIP() << "recycling is off in this build (sanitizer)";
  {
    Frame b(kBig);
    EXPECT_EQ(b.data(), first);  // the freed block, already faulted in
    EXPECT_EQ(FrameCacheBlocksForTests(), held - 1);
    Frame c(kBig + 64);  // another size: a block of its own
    EXPECT_NE(c.data(), first);
  }
  {
    std::vector<Frame> many;
    for (size_t i = 0; i < 2 * kFrameCacheBlocks; ++i) many.emplace_back(kFrameCacheMinBytes + i);
  }
  EXPECT_LE(FrameCacheBlocksForTests(), kFrameCacheBlocks);
  Frame small(4096);  // small frames are plain allocations
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small.data()) % 64, 0u);
}

// The smaps line `key` of the mapping that holds address p ("" when not found).
std::string SmapsLine(const void* p, const std::string& key) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<uintptr_t>(p);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find('-') < 16) {
      inside = lo <= at && at < hi;
    } else if (inside && line.rfind(key, 0) == 0) {
      return line;
    }
  }
  return "";
}

// Frames of tensor size start on a 2 MiB boundary and are eligible for transparent huge pages
// (asked for with madvise, which is how Debian leaves THP), so a 256 MiB value takes 128 page
// faults, not 65536.
TEST(NetFrames, LargeFramesAskForHugePages) {
  Frame big(size_t{8} << 20);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(big.data()) % (size_t{2} << 20), 0u);
  Frame small(size_t{1} << 20);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small.data()) % 64, 0u);
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string mode;
  std::getline(thp, mode);
  if (mode.empty() || mode.find("[never]") != std::string::npos) {
    GTEST_SKIP() << "transparent huge pages are off here (" << mode << ")";
  }
  const std::string line = SmapsLine(big.data(), "THPeligible:");
  ASSERT_FALSE(line.empty()) << "no THPeligible line in /proc/self/smaps for the frame";
  EXPECT_EQ(line.substr(line.find_last_not_of(" \t")), "1") << line;
}

TEST(NetProtocol, NewMessagesOfVersion2RoundTrip) {
  auto all = AllMessages();
  auto rs = DecodeResync(Payload(all[10]));
  ASSERT_TRUE(rs.ok());
  EXPECT_EQ(rs->attr_id, 6u);
  auto ping = DecodePing(Payload(all[11]));
  ASSERT_TRUE(ping.ok());
  EXPECT_EQ(ping->client_ns, -77);
  auto pong = DecodePong(Payload(all[12]));
  ASSERT_TRUE(pong.ok());
  EXPECT_EQ(pong->client_ns, -77);
  EXPECT_EQ(pong->hub_ns, 88);
  auto d = DecodeDeclare(Payload(all[13]));
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->has_initial);
  EXPECT_TRUE(d->resume);
  EXPECT_EQ(d->version, 41u);
  EXPECT_EQ(d->clock, 42u);
  EXPECT_EQ(d->attribute, "t");
  EXPECT_EQ(Str(d->initial), kValue);
  // The codec flag travels in the header, on WRITE and UPDATE only.
  auto h = DecodeHeader(all[14], 1 << 20);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->flags, kFlagCodec);
  ASSERT_TRUE(DecodeHeader(all[15], 1 << 20).ok());
  EXPECT_EQ(DecodeHeader(all[15], 1 << 20)->flags, kFlagCodec);
  EXPECT_EQ(DecodeHeader(all[9], 1 << 20)->flags, 0);
  Frame flagged = all[10];  // RESYNC with the codec flag
  flagged[7] = std::byte{kFlagCodec};
  EXPECT_EQ(DecodeHeader(flagged, 1 << 20).status().code(), StatusCode::kCorruption);
  Frame other = all[15];  // WRITE with an unknown flag
  other[7] = std::byte{2};
  EXPECT_EQ(DecodeHeader(other, 1 << 20).status().code(), StatusCode::kCorruption);
}

TEST(NetProtocol, DeclareResumeRules) {
  // Resuming needs a value and a version.
  Frame f = Encode(Declare{1, ValueKind::kInt64, true, "O", "a", Span(kValue), true, 0, 3, false});
  EXPECT_EQ(DecodeAny(f).code(), StatusCode::kCorruption);
  Frame g = Encode(Declare{1, ValueKind::kInt64, false, "O", "a", {}, false, 0, 0, false});
  g[kHeaderBytes + 5] = std::byte{kDeclareResume};  // the resume flag alone
  EXPECT_EQ(DecodeAny(g).code(), StatusCode::kCorruption);
  // A resume flag without the fields it promises.
  Frame h = Encode(Declare{1, ValueKind::kInt64, true, "O", "a", {}, false, 0, 0, false});
  h[kHeaderBytes + 5] = std::byte{kDeclareHasInitial | kDeclareResume};
  EXPECT_EQ(DecodeAny(h).code(), StatusCode::kCorruption);
}

TEST(NetProtocol, EveryMessageRoundTrips) {
  for (const Frame& f : AllMessages()) EXPECT_TRUE(DecodeAny(f).ok()) << DecodeAny(f).ToString();
  auto all = AllMessages();
  auto hello = DecodeHello(Payload(all[0]));
  ASSERT_TRUE(hello.ok());
  EXPECT_EQ(hello->version, kProtocolVersion);
  EXPECT_EQ(hello->nonce[31], 31);
  auto welcome = DecodeWelcome(Payload(all[3]));
  ASSERT_TRUE(welcome.ok());
  EXPECT_EQ(welcome->client_id, 7u);
  EXPECT_EQ(welcome->hub_time_ns, -5);
  auto err = DecodeError(Payload(all[4]));
  ASSERT_TRUE(err.ok());
  EXPECT_EQ(err->code, ErrorCode::kAuthFailed);
  EXPECT_TRUE(err->fatal);
  EXPECT_EQ(err->request_id, 3u);
  EXPECT_EQ(err->text, "nope");
  auto d = DecodeDeclare(Payload(all[5]));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->object, "Obj");
  EXPECT_EQ(d->attribute, "attr");
  EXPECT_EQ(d->kind, ValueKind::kString);
  EXPECT_TRUE(d->has_initial);
  EXPECT_EQ(Str(d->initial), kValue);
  auto dd = DecodeDeclared(Payload(all[6]));
  ASSERT_TRUE(dd.ok());
  EXPECT_EQ(dd->attr_id, 2u);
  EXPECT_EQ(dd->version, 9u);
  EXPECT_EQ(dd->clock, 10u);
  EXPECT_EQ(dd->writer, 3u);
  EXPECT_EQ(dd->write_ns, 123);
  EXPECT_EQ(Str(dd->value), kValue);
  EXPECT_EQ(Str(ByteSpan(all[6]).subspan(kDeclaredValueOffset)), kValue);
  auto w = DecodeWrite(Payload(all[7]));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->clock, 11u);
  EXPECT_EQ(Str(w->value), kValue);
  EXPECT_EQ(Str(ByteSpan(all[7]).subspan(kWriteValueOffset)), kValue);
  auto u = DecodeUpdate(Payload(all[9]));
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->version, 10u);
  EXPECT_EQ(u->writer, 3u);
  EXPECT_EQ(Str(u->value), kValue);
  EXPECT_EQ(Str(ByteSpan(all[9]).subspan(kUpdateValueOffset)), kValue);
}

// A head and the value's remaining bytes, as SendSplit puts them together, are the frame.
TEST(NetProtocol, AnUpdateHeadAndItsValueMakeTheUpdate) {
  const std::string v = "a value sent from elsewhere";
  const ByteSpan value(reinterpret_cast<const std::byte*>(v.data()), v.size());
  Update m{4, 7, 8, 3, -2, value, /*codec=*/true};
  const Frame whole = Encode(m);
  for (size_t head_bytes : {size_t{0}, size_t{5}, v.size()}) {
    Frame f = EncodeUpdateHead(m, v.size(), head_bytes);
    ASSERT_EQ(f.size(), kUpdateValueOffset + head_bytes);
    f.insert(f.end(), value.begin() + static_cast<ptrdiff_t>(head_bytes), value.end());
    EXPECT_TRUE(std::equal(f.begin(), f.end(), whole.begin(), whole.end())) << head_bytes;
    auto u = DecodeUpdate(Payload(f));
    ASSERT_TRUE(u.ok());
    EXPECT_EQ(Str(u->value), v);
  }
}

TEST(NetProtocol, EveryTruncationIsCorruptionNotACrash) {
  for (const Frame& f : AllMessages()) {
    // Cut anywhere: the header no longer matches the frame.
    for (size_t n = 0; n < f.size(); ++n) {
      EXPECT_FALSE(DecodeAny(ByteSpan(f).first(n)).ok()) << "cut at " << n;
    }
    // A consistent header over a short payload: only messages with a value tail may accept
    // a shorter payload, and never one that cuts into their fixed fields.
    const auto type = static_cast<MsgType>(uint8_t(f[6]));
    size_t fixed = f.size() - kHeaderBytes;
    if (type == MsgType::kWrite) fixed = kWriteValueOffset - kHeaderBytes;
    if (type == MsgType::kUpdate) fixed = kUpdateValueOffset - kHeaderBytes;
    if (type == MsgType::kDeclared) fixed = kDeclaredValueOffset - kHeaderBytes;
    if (type == MsgType::kDeclare) fixed = 10 + 3 + 4;  // "Obj", "attr", then the value
    for (size_t n = 0; n < fixed; ++n) {
      const Status st = DecodeAny(Truncate(f, n));
      EXPECT_EQ(st.code(), StatusCode::kCorruption) << MsgTypeName(type) << " payload " << n;
    }
  }
}

TEST(NetProtocol, HostileHeadersAreRejected) {
  const Frame good = Encode(Auth{});
  auto with = [&](size_t at, uint8_t v) {
    Frame f = good;
    f[at] = std::byte(v);
    return f;
  };
  EXPECT_EQ(DecodeHeader(with(0, 'X'), 1 << 20).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(DecodeHeader(with(6, 0), 1 << 20).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(DecodeHeader(with(6, 200), 1 << 20).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(DecodeHeader(with(7, 1), 1 << 20).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(DecodeHeader(with(12, 1), 1 << 20).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(DecodeHeader(with(8, 0xff), 1 << 20).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(DecodeHeader(good, 20).status().code(), StatusCode::kResourceExhausted);
  // Another version still decodes as a header: the receiver answers with a clear error.
  auto v2 = DecodeHeader(with(4, 2), 1 << 20);
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(v2->version, 2);
  // Trailing bytes after a fixed-size payload.
  Frame longer = Encode(Written{1, 1, 1, 1});
  longer.push_back(std::byte(0));
  longer[8] = std::byte(25);
  EXPECT_EQ(DecodeAny(longer).code(), StatusCode::kCorruption);
}

TEST(NetProtocol, HostileFieldsAreRejected) {
  auto declare = [](ValueKind kind, std::string obj, std::string attr) {
    return DecodeAny(
        Encode(Declare{1, kind, false, std::move(obj), std::move(attr), {}, false, 0, 0, false}));
  };
  EXPECT_TRUE(declare(ValueKind::kInt64, "O", "a").ok());
  EXPECT_FALSE(declare(static_cast<ValueKind>(0), "O", "a").ok());
  EXPECT_FALSE(declare(static_cast<ValueKind>(kMaxValueKind + 1), "O", "a").ok());
  EXPECT_FALSE(declare(ValueKind::kInt64, "", "a").ok());
  EXPECT_FALSE(declare(ValueKind::kInt64, "O", std::string("a\0b", 3)).ok());
  EXPECT_FALSE(declare(ValueKind::kInt64, std::string(256, 'o'), "a").ok());
  // A value without the has_initial flag.
  Frame f = Encode(Declare{1, ValueKind::kInt64, true, "O", "a", Span(kValue), false, 0, 0, false});
  f[kHeaderBytes + 5] = std::byte(0);
  EXPECT_FALSE(DecodeAny(f).ok());
  f[kHeaderBytes + 5] = std::byte(2);
  EXPECT_FALSE(DecodeAny(f).ok());
  EXPECT_FALSE(DecodeAny(Encode(Update{1, 0, 1, 1, 1, {}, false})).ok());  // version 0
  EXPECT_FALSE(DecodeAny(Encode(Written{1, 1, 0, 1})).ok());
  EXPECT_FALSE(DecodeAny(Encode(Welcome{0, 1, {}, 4096})).ok());  // client id 0
  EXPECT_FALSE(DecodeAny(Encode(Welcome{1, 1, {}, 1000})).ok());  // a limit under 1024
  EXPECT_FALSE(DecodeAny(Encode(Declared{1, 1, 0, 0, 0, 0, Span(kValue)})).ok());
}

TEST(NetProtocol, RandomBytesNeverCrash) {
  std::mt19937_64 rng(42);
  const auto all = AllMessages();
  for (int i = 0; i < 20000; ++i) {
    Frame f;
    if (i % 2 == 0) {
      f.resize(rng() % 128);
      for (auto& b : f) b = std::byte(rng());
    } else {
      // A valid frame with a few bytes flipped: reaches the payload decoders.
      f = all[rng() % all.size()];
      for (int k = 0; k < 3; ++k) f[rng() % f.size()] = std::byte(rng());
    }
    (void)DecodeAny(f);
  }
}

TEST(NetProtocol, ProofsBindTokenDirectionAndNonces) {
  Nonce a = RandomNonce(), b = RandomNonce();
  EXPECT_NE(a, b);
  const Mac m = ComputeProof("secret", kClientProofLabel, a, b);
  EXPECT_TRUE(ProofMatches(m, ComputeProof("secret", kClientProofLabel, a, b)));
  EXPECT_FALSE(ProofMatches(m, ComputeProof("secreT", kClientProofLabel, a, b)));
  EXPECT_FALSE(ProofMatches(m, ComputeProof("secret", kHubProofLabel, a, b)));
  EXPECT_FALSE(ProofMatches(m, ComputeProof("secret", kClientProofLabel, b, a)));
}

TEST(NetProtocol, ErrorsMapToStatuses) {
  EXPECT_EQ(ErrorToStatus(ErrorCode::kAuthFailed, "x").code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrorToStatus(ErrorCode::kVersionMismatch, "x").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrorToStatus(ErrorCode::kTooLarge, "x").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrorToStatus(static_cast<ErrorCode>(999), "x").code(), StatusCode::kCorruption);
}

}  // namespace
}  // namespace easysync::net
