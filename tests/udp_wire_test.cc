// The UDP path's datagrams: round trips, every truncation and bit flip, keys and directions,
// the replay window, and fragmentation/reassembly under loss, duplication and reordering.
#include "net/udp_wire.h"

#include <poll.h>

#include <gtest/gtest.h>
#include <sodium.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <random>
#include <string>

#include "net/udp_socket.h"

namespace easysync::net::udp {
namespace {

using Bytes = std::vector<std::byte>;

Key TestKey(uint8_t seed) {
  Nonce c{}, h{};
  c[0] = seed;
  h[0] = 1;
  return DeriveKey("token", c, h);
}
const Key kKey = TestKey(1);

Bytes Pattern(size_t n, uint32_t seed = 7) {
  Bytes b(n);
  std::mt19937 rng(seed);
  for (auto& x : b) x = std::byte(rng() & 0xff);
  return b;
}

Bytes SealToVector(const Key& key, const Datagram& d) {
  Bytes out(kMaxDatagram);
  const size_t n = Seal(key, d, out);
  EXPECT_NE(n, 0u);
  out.resize(n);
  return out;
}

// Recomputes the MAC after a test edited the bytes: a malformed datagram from a peer that holds
// the key, so only the body rules can catch it.
void Reseal(const Key& key, Bytes* d) {
  const size_t n = d->size() - kMacBytes;
  crypto_generichash(reinterpret_cast<unsigned char*>(d->data() + n), kMacBytes,
                     reinterpret_cast<const unsigned char*>(d->data()), n, key.data(), key.size());
}

Datagram DataDatagram(ByteSpan payload, uint32_t total, uint16_t index, uint16_t count) {
  Datagram d;
  d.type = Type::kData;
  d.direction = Direction::kHubToClient;
  d.client_id = 42;
  d.counter = 9;
  d.data.header = {7, 1000, 55, 3, -12345, true};
  d.data.total_bytes = total;
  d.data.frag_index = index;
  d.data.frag_count = count;
  d.data.payload = payload;
  return d;
}

// One datagram of each type, both ways where the type goes both ways. Their payloads point
// into a static, so they outlive any temporary.
std::vector<Datagram> AllDatagrams() {
  static const Bytes payload = Pattern(100);
  std::vector<Datagram> all;
  Datagram reg;
  reg.type = Type::kRegister;
  reg.client_id = 5;
  reg.counter = 1;
  all.push_back(reg);
  Datagram regd = reg;
  regd.type = Type::kRegistered;
  regd.direction = Direction::kHubToClient;
  all.push_back(regd);
  all.push_back(DataDatagram(payload, uint32_t(payload.size()), 0, 1));
  Datagram up = DataDatagram(payload, 2 * kMaxPayload + uint32_t(payload.size()), 2, 3);
  up.direction = Direction::kClientToHub;
  up.data.header.codec = false;
  all.push_back(up);
  Datagram ack;
  ack.type = Type::kAck;
  ack.client_id = 0xffffffff;
  ack.counter = ~uint64_t{0};
  ack.ack = {12, 34, 56};
  all.push_back(ack);
  // DATA with an ACK riding along, both ways.
  Datagram piggy = DataDatagram(payload, uint32_t(payload.size()), 0, 1);
  piggy.piggy_ack = true;
  piggy.ack = {7, 8, 9};
  all.push_back(piggy);
  piggy.direction = Direction::kClientToHub;
  piggy.ack = {10, 11, 0};
  all.push_back(piggy);
  ack.direction = Direction::kHubToClient;
  all.push_back(ack);
  return all;
}

void ExpectSame(const Datagram& a, const Datagram& b) {
  EXPECT_EQ(a.type, b.type);
  EXPECT_EQ(a.direction, b.direction);
  EXPECT_EQ(a.client_id, b.client_id);
  EXPECT_EQ(a.counter, b.counter);
  if (a.type == Type::kData) {
    EXPECT_EQ(a.data.header.attr_id, b.data.header.attr_id);
    EXPECT_EQ(a.data.header.seq, b.data.header.seq);
    EXPECT_EQ(a.data.header.clock, b.data.header.clock);
    EXPECT_EQ(a.data.header.writer, b.data.header.writer);
    EXPECT_EQ(a.data.header.write_ns, b.data.header.write_ns);
    EXPECT_EQ(a.data.header.codec, b.data.header.codec);
    EXPECT_EQ(a.data.total_bytes, b.data.total_bytes);
    EXPECT_EQ(a.data.frag_index, b.data.frag_index);
    EXPECT_EQ(a.data.frag_count, b.data.frag_count);
    EXPECT_TRUE(std::ranges::equal(a.data.payload, b.data.payload));
  }
  EXPECT_EQ(a.piggy_ack, b.piggy_ack);
  if (a.type == Type::kAck || a.piggy_ack) {
    EXPECT_EQ(a.ack.attr_id, b.ack.attr_id);
    EXPECT_EQ(a.ack.seq, b.ack.seq);
    EXPECT_EQ(a.ack.version, b.ack.version);
  }
}

TEST(UdpWire, Constants) {
  // 20 + 40 + 20 (a piggybacked ACK) + 1200 + 16: 1344 on the wire with IPv6 and UDP
  // headers, under a 1500-byte MTU.
  EXPECT_EQ(kMaxDatagram, 1296u);
  EXPECT_LE(kMaxDatagram + 48, 1500u);
  EXPECT_EQ(FragmentCount(0), 1u);
  EXPECT_EQ(FragmentCount(1), 1u);
  EXPECT_EQ(FragmentCount(1200), 1u);
  EXPECT_EQ(FragmentCount(1201), 2u);
  EXPECT_LE(FragmentCount(kMaxValueBytes), 0xffffu);
}

TEST(UdpWire, DeriveKeyDependsOnEveryInput) {
  Nonce c{}, h{};
  const Key k = DeriveKey("token", c, h);
  EXPECT_EQ(k, DeriveKey("token", c, h));
  EXPECT_NE(k, DeriveKey("token2", c, h));
  Nonce c2 = c;
  c2[31] = 1;
  EXPECT_NE(k, DeriveKey("token", c2, h));
  EXPECT_NE(k, DeriveKey("token", h, c2));  // the nonces' order matters
  // Not the handshake's client proof: the proofs travel in the clear.
  EXPECT_NE(k, ComputeProof("token", kClientProofLabel, c, h));
}

TEST(UdpWire, RoundTripEveryType) {
  for (const Datagram& d : AllDatagrams()) {
    const Bytes sealed = SealToVector(kKey, d);
    auto id = PeekClientId(sealed);
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    EXPECT_EQ(*id, d.client_id);
    auto opened = Open(kKey, sealed, d.direction, kMaxValueBytes);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    ExpectSame(d, *opened);
  }
}

TEST(UdpWire, LargestAndEmptyData) {
  const Bytes full = Pattern(kMaxPayload);
  Datagram largest = DataDatagram(full, kMaxPayload, 0, 1);
  largest.piggy_ack = true;
  const Bytes sealed = SealToVector(kKey, largest);
  EXPECT_EQ(sealed.size(), kMaxDatagram);
  ASSERT_TRUE(Open(kKey, sealed, Direction::kHubToClient, kMaxValueBytes).ok());

  const Bytes empty_sealed = SealToVector(kKey, DataDatagram({}, 0, 0, 1));
  auto e = Open(kKey, empty_sealed, Direction::kHubToClient, kMaxValueBytes);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_TRUE(e->data.payload.empty());
  EXPECT_EQ(e->data.total_bytes, 0u);
}

TEST(UdpWire, EveryTruncationAndExtensionIsRejected) {
  for (const Datagram& d : AllDatagrams()) {
    const Bytes sealed = SealToVector(kKey, d);
    for (size_t n = 0; n < sealed.size(); ++n) {
      auto r = Open(kKey, ByteSpan(sealed).first(n), d.direction, kMaxValueBytes);
      EXPECT_FALSE(r.ok()) << "type " << int(d.type) << " cut to " << n;
      EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
    }
    Bytes longer = sealed;
    longer.push_back(std::byte{0});
    EXPECT_FALSE(Open(kKey, longer, d.direction, kMaxValueBytes).ok());
  }
}

TEST(UdpWire, EverySingleBitFlipIsRejected) {
  const Bytes full = Pattern(kMaxPayload);
  std::vector<Datagram> all = AllDatagrams();
  all.push_back(DataDatagram(full, kMaxPayload, 0, 1));
  for (const Datagram& d : all) {
    const Bytes sealed = SealToVector(kKey, d);
    for (size_t bit = 0; bit < sealed.size() * 8; ++bit) {
      Bytes flipped = sealed;
      flipped[bit / 8] ^= std::byte(1 << (bit % 8));
      auto r = Open(kKey, flipped, d.direction, kMaxValueBytes);
      ASSERT_FALSE(r.ok()) << "type " << int(d.type) << " bit " << bit;
      EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
    }
  }
}

TEST(UdpWire, BitFlipsInTheBodyAreBadMacs) {
  const Bytes sealed = SealToVector(kKey, AllDatagrams()[2]);
  for (size_t i = kHeaderBytes; i < sealed.size(); ++i) {
    Bytes flipped = sealed;
    flipped[i] ^= std::byte{0x10};
    auto r = Open(kKey, flipped, Direction::kHubToClient, kMaxValueBytes);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("bad MAC"), std::string::npos) << r.status().ToString();
  }
}

TEST(UdpWire, AnotherKeyIsABadMac) {
  const Key other = TestKey(2);
  for (const Datagram& d : AllDatagrams()) {
    const Bytes sealed = SealToVector(other, d);
    auto r = Open(kKey, sealed, d.direction, kMaxValueBytes);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("bad MAC"), std::string::npos);
  }
}

TEST(UdpWire, ClientIdPicksTheKeyButOnlyThatKeyOpens) {
  // Two clients with their own keys: the hub peeks at the id, then opens with that client's key.
  const Key key5 = TestKey(5), key6 = TestKey(6);
  Datagram d;
  d.type = Type::kAck;
  d.client_id = 6;
  d.counter = 3;
  d.ack = {1, 2};
  const Bytes sealed = SealToVector(key6, d);
  auto id = PeekClientId(sealed);
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(*id, 6u);
  EXPECT_TRUE(Open(key6, sealed, Direction::kClientToHub, kMaxValueBytes).ok());
  EXPECT_FALSE(Open(key5, sealed, Direction::kClientToHub, kMaxValueBytes).ok());

  // Client 5 claiming to be 6 (with its own key) does not open under 6's key.
  const Bytes forged = SealToVector(key5, d);
  ASSERT_EQ(PeekClientId(forged).value(), 6u);
  auto r = Open(key6, forged, Direction::kClientToHub, kMaxValueBytes);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("bad MAC"), std::string::npos);
}

TEST(UdpWire, PeekClientIdChecksTheEnvelope) {
  const Bytes sealed = SealToVector(kKey, AllDatagrams()[0]);
  for (size_t n = 0; n < kMinDatagram; ++n) {
    EXPECT_FALSE(PeekClientId(ByteSpan(sealed).first(n)).ok());
  }
  Bytes bad = sealed;
  bad[0] ^= std::byte{1};
  EXPECT_FALSE(PeekClientId(bad).ok());
  bad = sealed;
  bad[4] = std::byte{2};
  EXPECT_FALSE(PeekClientId(bad).ok());
  bad = sealed;
  for (int i = 8; i < 12; ++i) bad[i] = std::byte{0};
  EXPECT_FALSE(PeekClientId(bad).ok());
  Bytes huge(kMaxDatagram + 1);
  std::copy(sealed.begin(), sealed.begin() + kHeaderBytes, huge.begin());
  EXPECT_FALSE(PeekClientId(huge).ok());
}

TEST(UdpWire, AReflectedDatagramDoesNotOpen) {
  for (const Datagram& d : AllDatagrams()) {
    const Bytes sealed = SealToVector(kKey, d);
    const Direction other =
        d.direction == Direction::kClientToHub ? Direction::kHubToClient : Direction::kClientToHub;
    auto r = Open(kKey, sealed, other, kMaxValueBytes);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  }
}

TEST(UdpWire, SealRefusesWhatOpenWouldRefuse) {
  const Bytes p = Pattern(kMaxPayload + 1);
  Bytes out(kMaxDatagram);
  Datagram d = DataDatagram(ByteSpan(p).first(10), 10, 0, 1);
  EXPECT_NE(Seal(kKey, d, out), 0u);
  EXPECT_EQ(Seal(kKey, d, std::span(out).first(kHeaderBytes + kDataBodyBytes + 10 + 15)), 0u);
  EXPECT_NE(Seal(kKey, d, std::span(out).first(kHeaderBytes + kDataBodyBytes + 10 + 16)), 0u);
  Datagram bad = d;
  bad.counter = 0;
  EXPECT_EQ(Seal(kKey, bad, out), 0u);
  bad = d;
  bad.client_id = 0;
  EXPECT_EQ(Seal(kKey, bad, out), 0u);
  EXPECT_EQ(Seal(kKey, DataDatagram(p, uint32_t(p.size()), 0, 1), out), 0u);  // over 1200
  EXPECT_EQ(Seal(kKey, DataDatagram(ByteSpan(p).first(10), 10, 1, 1), out), 0u);
  EXPECT_EQ(Seal(kKey, DataDatagram(ByteSpan(p).first(10), 1210, 0, 2), out), 0u);
  EXPECT_EQ(Seal(kKey, DataDatagram(ByteSpan(p).first(10), 2410, 1, 3), out), 0u);
  bad.type = Type::kRegister;
  bad.client_id = 1;
  bad.direction = Direction::kHubToClient;
  EXPECT_EQ(Seal(kKey, bad, out), 0u);
  bad.type = Type::kRegistered;
  bad.direction = Direction::kClientToHub;
  EXPECT_EQ(Seal(kKey, bad, out), 0u);
  bad.type = static_cast<Type>(9);
  EXPECT_EQ(Seal(kKey, bad, out), 0u);
}

// Datagrams a key holder could send that still break the rules: only the body checks see them.
TEST(UdpWire, AuthenticatedButMalformedIsRejected) {
  const Bytes p = Pattern(kMaxPayload);
  const Bytes data = SealToVector(kKey, DataDatagram(ByteSpan(p).first(100), 100, 0, 1));
  auto expect_bad = [](Bytes b, std::string_view what) {
    Reseal(kKey, &b);
    auto r = Open(kKey, b, Direction::kHubToClient, 1 << 20);
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << what;
    EXPECT_EQ(r.status().message().find("bad MAC"), std::string::npos) << what;
  };
  auto edit = [&](size_t at, std::initializer_list<uint8_t> bytes) {
    Bytes b = data;
    for (uint8_t x : bytes) b[at++] = std::byte{x};
    return b;
  };
  expect_bad(edit(5, {0}), "type 0");
  expect_bad(edit(5, {5}), "type 5");
  expect_bad(edit(5, {0xff}), "type 255");
  expect_bad(edit(6, {0x82}), "flag bit 1");
  expect_bad(edit(6, {0x81 | 0x40}), "flag bit 6");
  expect_bad(edit(6, {0x01}), "to-hub flag on a datagram the client opens");
  expect_bad(edit(7, {1}), "reserved byte");
  expect_bad(edit(12, {0, 0, 0, 0, 0, 0, 0, 0}), "counter 0");
  // DATA body: total bytes at 20 + 32, frag index at 56, frag count at 58.
  expect_bad(edit(52, {101, 0, 0, 0}), "total bytes above the payload");
  expect_bad(edit(52, {99, 0, 0, 0}), "total bytes below the payload");
  expect_bad(edit(52, {0, 0, 0, 0}), "empty value with a payload");
  expect_bad(edit(56, {1, 0}), "index == count");
  expect_bad(edit(58, {2, 0}), "count that does not fit the total");
  expect_bad(edit(58, {0, 0}), "count 0");
  expect_bad(edit(52, {0x01, 0x00, 0x10, 0x00}), "over max_value_bytes");
  // A middle fragment that is short, and a last one that is long.
  {
    Bytes b = SealToVector(kKey, DataDatagram(p, 3000, 0, 3));
    b[56] = std::byte{2};  // now the last fragment, which must carry 600 bytes
    expect_bad(b, "last fragment too long");
    Bytes s = SealToVector(kKey, DataDatagram(ByteSpan(p).first(600), 3000, 2, 3));
    s[56] = std::byte{1};  // now a middle fragment, which must carry 1200
    expect_bad(s, "middle fragment too short");
  }
  // REGISTERED with a body, ACK too short and too long, the registrations' types swapped.
  Datagram regd;
  regd.type = Type::kRegistered;
  regd.direction = Direction::kHubToClient;
  regd.client_id = 3;
  regd.counter = 4;
  Bytes r = SealToVector(kKey, regd);
  r.insert(r.begin() + kHeaderBytes, std::byte{0});
  expect_bad(r, "REGISTERED with a body");
  Bytes swapped = SealToVector(kKey, regd);
  swapped[5] = std::byte{uint8_t(Type::kRegister)};
  expect_bad(swapped, "REGISTER from the hub");
  Datagram ack = regd;
  ack.type = Type::kAck;
  Bytes a = SealToVector(kKey, ack);
  Bytes shorter = a;
  shorter.erase(shorter.begin() + kHeaderBytes);
  expect_bad(shorter, "ACK short");
  Bytes longer = a;
  longer.insert(longer.begin() + kHeaderBytes, std::byte{0});
  expect_bad(longer, "ACK long");
  Bytes as_data = a;
  as_data[5] = std::byte{uint8_t(Type::kData)};
  expect_bad(as_data, "DATA shorter than its body");

  // The value limit is the caller's.
  Bytes big = SealToVector(kKey, DataDatagram(p, 5000, 0, 5));
  EXPECT_TRUE(Open(kKey, big, Direction::kHubToClient, 5000).ok());
  EXPECT_FALSE(Open(kKey, big, Direction::kHubToClient, 4999).ok());
}

TEST(UdpWire, RandomBytesNeverOpen) {
  std::mt19937 rng(3);
  const Bytes good = SealToVector(kKey, AllDatagrams()[2]);
  for (int i = 0; i < 20000; ++i) {
    Bytes b(rng() % (kMaxDatagram + 10));
    for (auto& x : b) x = std::byte(rng() & 0xff);
    // Half of them with a valid envelope, so they get as far as the MAC.
    if (i % 2 == 0 && b.size() >= kHeaderBytes) {
      std::copy(good.begin(), good.begin() + kHeaderBytes, b.begin());
    }
    (void)PeekClientId(b);
    EXPECT_FALSE(Open(kKey, b, Direction::kHubToClient, kMaxValueBytes).ok());
  }
}

TEST(ReplayWindow, FirstTimeOnly) {
  ReplayWindow w;
  EXPECT_FALSE(w.Accept(0));
  EXPECT_TRUE(w.Accept(1));
  EXPECT_FALSE(w.Accept(1));
  EXPECT_TRUE(w.Accept(3));
  EXPECT_TRUE(w.Accept(2));  // late but within the window
  EXPECT_FALSE(w.Accept(2));
  EXPECT_FALSE(w.Accept(3));
  EXPECT_FALSE(w.Accept(0));
  EXPECT_EQ(w.highest(), 3u);
}

TEST(ReplayWindow, EdgeOfTheWindow) {
  ReplayWindow w;
  const uint64_t top = 5000;
  EXPECT_TRUE(w.Accept(top));
  EXPECT_FALSE(w.Accept(top - ReplayWindow::kWindow));  // too old to tell
  EXPECT_TRUE(w.Accept(top - ReplayWindow::kWindow + 1));
  EXPECT_FALSE(w.Accept(top - ReplayWindow::kWindow + 1));
  // Every counter within the window, once.
  for (uint64_t c = top - ReplayWindow::kWindow + 2; c < top; ++c) EXPECT_TRUE(w.Accept(c)) << c;
  for (uint64_t c = top - ReplayWindow::kWindow + 1; c <= top; ++c) {
    EXPECT_FALSE(w.Accept(c)) << c;
  }
}

TEST(ReplayWindow, FarJumpForgetsTheOldWindow) {
  ReplayWindow w;
  for (uint64_t c = 1; c <= 100; ++c) EXPECT_TRUE(w.Accept(c));
  EXPECT_TRUE(w.Accept(1'000'000));
  EXPECT_FALSE(w.Accept(50));
  EXPECT_FALSE(w.Accept(1'000'000));
  // Stale bits of the old counters do not shadow new ones that share their ring slots.
  for (uint64_t c = 1'000'000 - 1000; c < 1'000'000; ++c) EXPECT_TRUE(w.Accept(c)) << c;
  EXPECT_TRUE(w.Accept(~uint64_t{0}));
  EXPECT_FALSE(w.Accept(~uint64_t{0}));
  EXPECT_TRUE(w.Accept(~uint64_t{0} - 1));
  EXPECT_FALSE(w.Accept(1'000'000 + 1));
}

TEST(ReplayWindow, WrapsTheBitmapManyTimes) {
  // Against a reference that remembers everything: random jumps forward, duplicates and late
  // counters across many turns of the ring.
  ReplayWindow w;
  std::mt19937_64 rng(11);
  std::vector<bool> seen(60'000'000);
  uint64_t top = 0;
  for (int i = 0; i < 300'000; ++i) {
    uint64_t c;
    const int r = rng() % 10;
    if (r < 4) {
      c = std::min<uint64_t>(top + 1 + rng() % 100, seen.size() - 1);
    } else if (r == 4) {
      c = std::min<uint64_t>(top + 1 + rng() % 3000, seen.size() - 1);
    } else {
      c = top > 1100 ? top - rng() % 1100 : 1 + rng() % (top + 1);
    }
    const bool expect = c != 0 && !seen[c] && c + ReplayWindow::kWindow > std::max(top, c);
    ASSERT_EQ(w.Accept(c), expect) << "counter " << c << " top " << top;
    if (expect) {
      seen[c] = true;
      top = std::max(top, c);
    }
  }
  EXPECT_EQ(w.highest(), top);
}

// A value's fragments, with the value they point into (shared, so copies stay valid).
struct Frags : std::vector<Data> {
  std::shared_ptr<const Bytes> value;
};
Frags Fragments(const DataHeader& h, Bytes value) {
  Frags out;
  out.value = std::make_shared<const Bytes>(std::move(value));
  Status s = Fragment(h, *out.value, [&](const Data& d) { out.push_back(d); });
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

DataHeader Header(uint64_t seq) { return {7, seq, seq * 10, 3, int64_t(seq) * 100, false}; }

TEST(Fragment, FollowsTheRules) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{1199}, size_t{1200}, size_t{1201}, size_t{2400},
                   size_t{2401}, size_t{100'000}}) {
    const Bytes v = Pattern(n);
    const auto frags = Fragments(Header(1), v);
    ASSERT_EQ(frags.size(), FragmentCount(n)) << n;
    Bytes joined;
    for (size_t i = 0; i < frags.size(); ++i) {
      EXPECT_EQ(frags[i].frag_index, i);
      EXPECT_EQ(frags[i].frag_count, frags.size());
      EXPECT_EQ(frags[i].total_bytes, n);
      EXPECT_TRUE(CheckFragment(frags[i], n).ok()) << n << " " << i;
      EXPECT_EQ(frags[i].header.seq, 1u);
      joined.insert(joined.end(), frags[i].payload.begin(), frags[i].payload.end());
    }
    EXPECT_EQ(joined, v);
  }
}

TEST(Fragment, RefusesValuesOverTheLimit) {
  const Bytes v(kMaxValueBytes + 1);
  int calls = 0;
  Status s = Fragment(Header(1), v, [&](const Data&) { ++calls; });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(calls, 0);
}

// Feeds fragments in the given order and returns what completed.
std::vector<Reassembler::Completed> Feed(Reassembler& r, uint64_t stream,
                                         const std::vector<Data>& frags,
                                         const std::vector<size_t>& order) {
  std::vector<Reassembler::Completed> done;
  for (size_t i : order) {
    auto c = r.Add(stream, frags[i]);
    if (c) done.push_back(std::move(*c));
  }
  return done;
}
std::vector<size_t> InOrder(size_t n) {
  std::vector<size_t> o(n);
  std::iota(o.begin(), o.end(), 0);
  return o;
}

TEST(Reassembler, InOrderReversedShuffledAndDuplicated) {
  const Bytes v = Pattern(10 * kMaxPayload + 17);
  const auto frags = Fragments(Header(5), v);
  std::mt19937 rng(1);
  std::vector<size_t> shuffled = InOrder(frags.size());
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  std::vector<size_t> reversed(shuffled.size());
  std::iota(reversed.rbegin(), reversed.rend(), 0);
  std::vector<size_t> duplicated;
  for (size_t i : shuffled) duplicated.insert(duplicated.end(), {i, i, 0});
  for (const auto& order : {InOrder(frags.size()), reversed, shuffled, duplicated}) {
    Reassembler r(1 << 20);
    auto done = Feed(r, 1, frags, order);
    ASSERT_EQ(done.size(), 1u);
    EXPECT_EQ(done[0].value, v);
    EXPECT_EQ(done[0].stream, 1u);
    EXPECT_EQ(done[0].header.seq, 5u);
    EXPECT_EQ(done[0].header.clock, 50u);
    EXPECT_EQ(done[0].header.write_ns, 500);
    EXPECT_EQ(r.bytes_held(), 0u);
    EXPECT_EQ(r.partial_values(), 0u);
    EXPECT_EQ(r.incomplete(), 0u);
    EXPECT_EQ(r.rejected(), 0u);
  }
}

TEST(Reassembler, EdgeSizes) {
  for (size_t n : {size_t{0}, size_t{1200}, size_t{1201}}) {
    Reassembler r(1 << 20);
    const Bytes v = Pattern(n);
    auto frags = Fragments(Header(1), v);
    std::reverse(frags.begin(), frags.end());
    auto done = Feed(r, 1, frags, InOrder(frags.size()));
    ASSERT_EQ(done.size(), 1u) << n;
    EXPECT_EQ(done[0].value, v) << n;
    EXPECT_EQ(r.bytes_held(), 0u);
  }
}

TEST(Reassembler, SingleFragmentValuesHoldNothing) {
  Reassembler r(0);  // no room at all: single-fragment values still pass
  for (uint64_t seq = 1; seq <= 5; ++seq) {
    const Bytes v = Pattern(seq * 100);
    auto c = r.Add(9, Fragments(Header(seq), v)[0]);
    ASSERT_TRUE(c.has_value());
    EXPECT_EQ(c->value, v);
    EXPECT_EQ(r.partial_values(), 0u);
    EXPECT_EQ(r.bytes_held(), 0u);
  }
  // A multi-fragment value does not fit in 0 bytes.
  const auto frags = Fragments(Header(10), Pattern(2000));
  EXPECT_FALSE(r.Add(9, frags[0]).has_value());
  EXPECT_FALSE(r.Add(9, frags[1]).has_value());
  EXPECT_EQ(r.rejected(), 2u);
}

TEST(Reassembler, MissingFragmentIsDroppedWhenANewerValueCompletes) {
  Reassembler r(1 << 20);
  const auto old_frags = Fragments(Header(1), Pattern(5000, 1));
  for (size_t i = 0; i + 1 < old_frags.size(); ++i) EXPECT_FALSE(r.Add(1, old_frags[i]));
  EXPECT_EQ(r.partial_values(), 1u);
  EXPECT_EQ(r.bytes_held(), 5000u);
  EXPECT_EQ(r.incomplete(), 0u);

  const Bytes newer = Pattern(3000, 2);
  auto done = Feed(r, 1, Fragments(Header(2), newer), {2, 0, 1});
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].value, newer);
  EXPECT_EQ(r.incomplete(), 1u);
  EXPECT_EQ(r.partial_values(), 0u);
  EXPECT_EQ(r.bytes_held(), 0u);

  // The old value's last fragment, late: stale, never delivered.
  EXPECT_FALSE(r.Add(1, old_frags.back()));
  EXPECT_EQ(r.stale(), 1u);
  EXPECT_EQ(r.partial_values(), 0u);
}

TEST(Reassembler, OlderValueCompletingAfterANewerOneIsStale) {
  Reassembler r(1 << 20);
  const auto newer = Fragments(Header(8), Pattern(2500, 1));
  const auto older = Fragments(Header(7), Pattern(2500, 2));
  EXPECT_EQ(Feed(r, 4, newer, {0, 1, 2}).size(), 1u);
  EXPECT_TRUE(Feed(r, 4, older, {0, 1, 2}).empty());
  EXPECT_EQ(r.stale(), 3u);  // one per fragment
  // The same value again (a duplicate completion) is stale too.
  EXPECT_TRUE(Feed(r, 4, newer, {2, 1, 0}).empty());
  EXPECT_EQ(r.stale(), 6u);
  EXPECT_EQ(r.partial_values(), 0u);
  // Other streams are independent.
  EXPECT_EQ(Feed(r, 5, older, {1, 0, 2}).size(), 1u);
}

TEST(Reassembler, AnOlderValueStillWinsOverNothing) {
  // Seq 2 partial, seq 1 completes: 1 is newer than anything returned, so it is returned, and
  // the newer partial stays.
  Reassembler r(1 << 20);
  const auto v2 = Fragments(Header(2), Pattern(2500, 2));
  const auto v1 = Fragments(Header(1), Pattern(2500, 1));
  EXPECT_FALSE(r.Add(3, v2[0]));
  EXPECT_EQ(Feed(r, 3, v1, {0, 1, 2}).size(), 1u);
  EXPECT_EQ(r.partial_values(), 1u);
  auto done = Feed(r, 3, v2, {1, 2});
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].header.seq, 2u);
  EXPECT_EQ(r.incomplete(), 0u);
}

TEST(Reassembler, InterleavedValuesOfOneStream) {
  Reassembler r(1 << 20);
  const auto a = Fragments(Header(1), Pattern(3000, 1));
  const auto b = Fragments(Header(2), Pattern(3000, 2));
  EXPECT_FALSE(r.Add(1, a[0]));
  EXPECT_FALSE(r.Add(1, b[0]));
  EXPECT_FALSE(r.Add(1, a[1]));
  EXPECT_FALSE(r.Add(1, b[1]));
  auto c = r.Add(1, b[2]);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->header.seq, 2u);
  EXPECT_EQ(r.incomplete(), 1u);  // seq 1, superseded
  EXPECT_FALSE(r.Add(1, a[2]));
  EXPECT_EQ(r.stale(), 1u);
}

TEST(Reassembler, InconsistentFragmentDropsThePartialValue) {
  Reassembler r(1 << 20);
  const auto frags = Fragments(Header(1), Pattern(3000));
  EXPECT_FALSE(r.Add(1, frags[0]));
  Data liar = frags[1];
  liar.header.clock += 1;
  EXPECT_FALSE(r.Add(1, liar));
  EXPECT_EQ(r.incomplete(), 1u);
  EXPECT_EQ(r.rejected(), 1u);
  EXPECT_EQ(r.partial_values(), 0u);
  EXPECT_EQ(r.bytes_held(), 0u);
  // Whatever of the value still arrives starts over, and completes if all of it comes.
  auto done = Feed(r, 1, frags, {1, 2, 0});
  ASSERT_EQ(done.size(), 1u);

  // Each field that must agree.
  const Bytes filler = Pattern(kMaxPayload);
  for (int field = 0; field < 6; ++field) {
    Reassembler q(1 << 20);
    const auto f = Fragments(Header(1), Pattern(3000));
    ASSERT_FALSE(q.Add(1, f[0]));
    Data other = f[2];
    switch (field) {
      case 0:
        other.header.writer += 1;
        break;
      case 1:
        other.header.codec = true;
        break;
      case 2:
        other.header.write_ns += 1;
        break;
      case 3:
        other.header.attr_id += 1;
        break;
      case 4:  // another total with the same count, obeying the fragment rules
        other.total_bytes = 3500;
        other.payload = ByteSpan(filler).first(1100);
        break;
      case 5:  // another total and count
        other.total_bytes = 1300;
        other.frag_count = 2;
        other.frag_index = 1;
        other.payload = ByteSpan(filler).first(100);
        break;
    }
    ASSERT_TRUE(CheckFragment(other, kMaxValueBytes).ok()) << field;
    EXPECT_FALSE(q.Add(1, other));
    EXPECT_EQ(q.rejected(), 1u) << field;
    EXPECT_EQ(q.incomplete(), 1u) << field;
    EXPECT_EQ(q.partial_values(), 0u) << field;
  }
}

TEST(Reassembler, HostileFragmentsNeverCrash) {
  Reassembler r(1 << 16);
  const Bytes big = Pattern(kMaxPayload + 1);
  std::mt19937 rng(5);
  for (int i = 0; i < 100'000; ++i) {
    Data d;
    d.header = Header(rng() % 8);
    d.header.writer = rng() % 2;
    d.total_bytes = rng() % 4 == 0 ? rng() : rng() % 5000;
    d.frag_count = uint16_t(rng() % 4 == 0 ? rng() : FragmentCount(d.total_bytes));
    d.frag_index = uint16_t(rng() % 4 == 0 ? rng() : rng() % 5);
    d.payload = ByteSpan(big).first(rng() % 2 == 0 ? rng() % big.size()
                                                   : std::min<size_t>(1200, d.total_bytes % 1201));
    auto c = r.Add(rng() % 3, d);
    if (c) {
      EXPECT_EQ(c->value.size(), d.total_bytes);
    }
    ASSERT_LE(r.bytes_held(), size_t{1} << 16);
  }
  EXPECT_GT(r.rejected(), 0u);
}

TEST(Reassembler, MemoryBoundUnderAFloodOfPartialValues) {
  const size_t bound = 100'000;
  Reassembler r(bound);
  std::mt19937 rng(2);
  uint64_t started = 0;
  for (uint64_t seq = 1; seq <= 2000; ++seq) {
    // Every value misses its last fragment; sizes 1201..20000 bytes on 50 streams.
    const auto frags = Fragments(Header(seq), Pattern(1201 + rng() % 18800, uint32_t(seq)));
    for (size_t i = 0; i + 1 < frags.size(); ++i) {
      EXPECT_FALSE(r.Add(seq % 50, frags[i]));
      ASSERT_LE(r.bytes_held(), bound);
    }
    ++started;
  }
  EXPECT_GT(r.incomplete(), 0u);
  EXPECT_EQ(r.incomplete() + r.partial_values(), started);
  // A value bigger than the whole bound is refused outright, not let in by evicting everything.
  const size_t held = r.partial_values();
  EXPECT_FALSE(r.Add(1, Fragments(Header(5000), Pattern(bound + 1))[0]));
  EXPECT_EQ(r.partial_values(), held);
  EXPECT_EQ(r.rejected(), 1u);
  // A value that fits evicts the oldest partial values and completes.
  const Bytes v = Pattern(bound);
  auto done = Feed(r, 77, Fragments(Header(1), v), InOrder(FragmentCount(bound)));
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].value, v);
  EXPECT_EQ(r.bytes_held(), 0u);
}

TEST(Reassembler, OldestPartialIsEvictedFirst) {
  Reassembler r(6000);
  const auto a = Fragments(Header(1), Pattern(3000, 1));
  const auto b = Fragments(Header(1), Pattern(3000, 2));
  const auto c = Fragments(Header(1), Pattern(3000, 3));
  EXPECT_FALSE(r.Add(1, a[0]));
  EXPECT_FALSE(r.Add(2, b[0]));
  EXPECT_FALSE(r.Add(3, c[0]));  // evicts stream 1's
  EXPECT_EQ(r.incomplete(), 1u);
  EXPECT_EQ(r.bytes_held(), 6000u);
  EXPECT_EQ(Feed(r, 2, b, {1, 2}).size(), 1u);
  EXPECT_EQ(Feed(r, 3, c, {1, 2}).size(), 1u);
  EXPECT_TRUE(Feed(r, 1, a, {1, 2}).empty());  // started over without fragment 0
}

TEST(Reassembler, ForgetStartsTheStreamOver) {
  Reassembler r(1 << 20);
  const auto v = Fragments(Header(9), Pattern(3000));
  EXPECT_EQ(Feed(r, 1, v, {0, 1, 2}).size(), 1u);
  EXPECT_FALSE(r.Add(1, Fragments(Header(10), Pattern(3000))[0]));
  EXPECT_EQ(r.bytes_held(), 3000u);
  r.Forget(1);
  r.Forget(12345);  // unknown: nothing happens
  EXPECT_EQ(r.bytes_held(), 0u);
  EXPECT_EQ(r.partial_values(), 0u);
  EXPECT_EQ(r.incomplete(), 0u);
  // A peer that restarted its sequence numbers is heard again.
  EXPECT_EQ(Feed(r, 1, v, {2, 1, 0}).size(), 1u);
}

TEST(Reassembler, FourMiBThroughSealAndOpenShuffled) {
  const Bytes v = Pattern(4 << 20, 99);
  DataHeader h = Header(3);
  h.codec = true;
  std::vector<Bytes> datagrams;
  uint64_t counter = 0;
  Status s = Fragment(h, v, [&](const Data& f) {
    Datagram d;
    d.type = Type::kData;
    d.client_id = 17;
    d.counter = ++counter;
    d.data = f;
    datagrams.push_back(SealToVector(kKey, d));
  });
  ASSERT_TRUE(s.ok());
  ASSERT_EQ(datagrams.size(), FragmentCount(v.size()));
  std::mt19937 rng(4);
  std::shuffle(datagrams.begin(), datagrams.end(), rng);
  datagrams.push_back(datagrams[10]);  // a replayed datagram
  ReplayWindow window;
  Reassembler r(8 << 20);
  std::vector<Reassembler::Completed> done;
  size_t refused = 0;
  for (const Bytes& b : datagrams) {
    auto d = Open(kKey, b, Direction::kClientToHub, 8 << 20);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    // A shuffle of 3500 datagrams reorders far beyond the window, which would refuse many:
    // feed the reassembler everything, and only count what the window says.
    if (!window.Accept(d->counter)) ++refused;
    auto c = r.Add(uint64_t{17} << 32 | d->data.header.attr_id, d->data);
    if (c) done.push_back(std::move(*c));
  }
  EXPECT_GT(refused, 1u);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].value, v);
  EXPECT_TRUE(done[0].header.codec);
  EXPECT_EQ(done[0].header.seq, 3u);
  EXPECT_EQ(r.bytes_held(), 0u);
  EXPECT_EQ(r.stale(), 1u);  // the replayed fragment, after the value was complete
}

// ---- UdpSocket

// One datagram on `s` within a second; nullopt if none came.
std::optional<std::string> ReceiveWithin(UdpSocket& s, UdpAddress* from) {
  pollfd p{s.fd(), POLLIN, 0};
  if (poll(&p, 1, 1000) != 1) return std::nullopt;
  std::byte buf[256];
  const auto n = s.Receive(buf, from);
  if (!n) return std::nullopt;
  return std::string(reinterpret_cast<const char*>(buf), *n);
}

ByteSpan Text(const std::string& t) {
  return {reinterpret_cast<const std::byte*>(t.data()), t.size()};
}

// A hub bound to all its addresses answers a client from the address the client sent to:
// a client's connected socket takes datagrams from that address only (127.0.0.2 stands for
// a second address of the host, or a VIP). The kernel alone picks 127.0.0.1.
void AnswersFromTheAddressAsked(const std::string& bind) {
  auto server = UdpSocket::Bind(bind, 0);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  for (const char* asked : {"127.0.0.2", "127.0.0.1"}) {
    auto client = UdpSocket::Connect(asked, server->local_port());
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    client->Send(Text(std::string("hello via ") + asked));
    UdpAddress from;
    auto got = ReceiveWithin(*server, &from);
    ASSERT_TRUE(got.has_value()) << bind << ": nothing arrived at " << asked;
    EXPECT_EQ(*got, std::string("hello via ") + asked);
    ASSERT_TRUE(from.local.has_value()) << "the datagram's destination was not recorded";
    server->Send(Text("answer"), &from);
    auto answer = ReceiveWithin(*client, nullptr);
    EXPECT_EQ(answer.value_or("(none)"), "answer")
        << bind << ": the answer to a datagram sent to " << asked << " did not come from there";
  }
}

TEST(UdpSocket, AServerBoundToAllIpv4AddressesAnswersFromTheOneAsked) {
  AnswersFromTheAddressAsked("0.0.0.0");
}

TEST(UdpSocket, ADualStackServerAnswersIpv4ClientsFromTheAddressAsked) {
  auto probe = UdpSocket::Bind("::", 0);
  if (!probe.ok()) GTEST_SKIP() << "no IPv6 here: " << probe.status().ToString();
  AnswersFromTheAddressAsked("::");
}

// IPv6 loopback has one address, so this shows only that IPV6_PKTINFO is recorded and an
// answer that names it arrives, not which address the kernel would have picked.
TEST(UdpSocket, AnIpv6ServerRecordsWhereADatagramWentAndAnswersFromThere) {
  auto server = UdpSocket::Bind("::", 0);
  if (!server.ok()) GTEST_SKIP() << "no IPv6 here: " << server.status().ToString();
  auto client = UdpSocket::Connect("::1", server->local_port());
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  client->Send(Text("hello"));
  UdpAddress from;
  ASSERT_EQ(ReceiveWithin(*server, &from).value_or("(none)"), "hello");
  ASSERT_TRUE(from.local.has_value());
  server->Send(Text("answer"), &from);
  EXPECT_EQ(ReceiveWithin(*client, nullptr).value_or("(none)"), "answer");
}

}  // namespace
}  // namespace easysync::net::udp
