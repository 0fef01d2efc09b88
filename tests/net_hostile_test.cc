// The hub against hostile peers: random bytes, truncated and out-of-order frames over a raw
// UCX endpoint, garbage on its TCP port. Each gets a clear ERROR and is dropped; the hub
// keeps serving a good client.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <condition_variable>
#include <deque>
#include <optional>
#include <random>
#include <thread>

#include "easysync/net.h"
#include "easysync/tensor.h"
#include "net/protocol.h"
#include "net/ucx_worker.h"
#include "net/wire_value.h"
#include "net_test_util.h"

namespace easysync {
namespace {

using net::Frame;
using std::chrono::milliseconds;
using std::chrono::seconds;

// A UCX endpoint to the hub that sends whatever the test asks it to.
class RawPeer : public net::UcxWorker::Handler {
 public:
  explicit RawPeer(uint16_t port) {
    net::UcxOptions o;
    o.transports = "tcp";  // a dropped peer is seen at once (no keep-alive wait)
    worker_ = ValueOrThrow(net::UcxWorker::Create(o, this));
    ep_ = ValueOrThrow(worker_->Connect("127.0.0.1", port));
    worker_->Start();
  }
  ~RawPeer() override {
    worker_->Stop();
    closed_ = true;  // sends still posted run while the worker goes: they are dropped
    worker_.reset();
  }
  void Send(Frame f) {
    worker_->Post([this, f = std::make_shared<const Frame>(std::move(f))] {
      if (!closed_) worker_->Send(ep_, f);
    });
  }
  // Two frames sent back to back, from one pass of the progress thread.
  void SendBoth(Frame a, Frame b) {
    worker_->Post([this, a = std::make_shared<const Frame>(std::move(a)),
                   b = std::make_shared<const Frame>(std::move(b))] {
      if (closed_) return;
      worker_->Send(ep_, a);
      worker_->Send(ep_, b);
    });
  }
  // The next frame the hub sent, or nullopt (connection gone, or the deadline passed).
  std::optional<Frame> Next(milliseconds timeout = milliseconds(20000)) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return !frames_.empty() || error_; });
    if (frames_.empty()) return std::nullopt;
    Frame f = std::move(frames_.front());
    frames_.pop_front();
    return f;
  }
  // Stops taking anything from the hub (its progress thread ends): a stalled peer.
  void Pause() { worker_->Stop(); }
  bool WaitDropped(milliseconds timeout = milliseconds(20000)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return error_; });
  }
  // Expects a fatal ERROR with `code`, then the hub closing the connection.
  void ExpectRejected(net::ErrorCode code, const std::string& what) {
    auto f = Next();
    ASSERT_TRUE(f.has_value()) << what << ": no ERROR from the hub";
    auto h = net::DecodeHeader(*f, 1 << 20);
    ASSERT_TRUE(h.ok()) << what;
    ASSERT_EQ(h->type, net::MsgType::kError) << what;
    auto e = net::DecodeError(net::Payload(*f));
    ASSERT_TRUE(e.ok()) << what;
    EXPECT_EQ(e->code, code) << what << ": " << e->text;
    EXPECT_TRUE(e->fatal) << what;
    EXPECT_FALSE(e->text.empty()) << what;
    EXPECT_TRUE(WaitDropped()) << what << ": the hub did not drop the peer";
  }

  void OnFrame(ucp_ep_h, Frame f) override {
    std::lock_guard<std::mutex> lock(mu_);
    frames_.push_back(std::move(f));
    cv_.notify_all();
  }
  void OnOversize(ucp_ep_h, size_t) override {}
  void OnEndpointError(ucp_ep_h ep, ucs_status_t) override {
    closed_ = true;
    worker_->Close(ep);
    std::lock_guard<std::mutex> lock(mu_);
    error_ = true;
    cv_.notify_all();
  }

 private:
  std::unique_ptr<net::UcxWorker> worker_;
  ucp_ep_h ep_ = nullptr;
  bool closed_ = false;  // progress thread only
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Frame> frames_;
  bool error_ = false;
};

// The good client still gets through: connects, declares, writes.
void ExpectServes(uint16_t port) {
  NetOptions o;
  o.port = port;
  o.token = testing::kTestToken;
  auto c = TryConnect(o);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto a = (*c)->Declare("Hostile", "x", ValueKind::kInt64, nullptr);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  const int64_t v = 5;
  auto w = (*c)->Write(*a, sizeof(v), [&](std::byte* p) { std::memcpy(p, &v, sizeof(v)); });
  EXPECT_TRUE(w.ok()) << w.status().ToString();
}

Frame Hello(uint16_t version = net::kProtocolVersion) {
  return net::Encode(net::Hello{version, net::RandomNonce()});
}

TEST(NetHostile, BadFramesGetAnErrorAndOnlyThatPeerIsDropped) {
  testing::HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  std::mt19937_64 rng(7);
  for (int i = 0; i < 6; ++i) {
    RawPeer p(hub.port());
    Frame f(rng() % 200);
    for (auto& b : f) b = std::byte(rng());
    p.Send(f);
    p.ExpectRejected(net::ErrorCode::kMalformed, "random bytes #" + std::to_string(i));
  }
  const Frame hello = Hello();
  for (size_t cut : {size_t{0}, size_t{5}, net::kHeaderBytes, hello.size() - 1}) {
    RawPeer p(hub.port());
    p.Send(Frame(hello.begin(), hello.begin() + cut));
    p.ExpectRejected(net::ErrorCode::kMalformed, "HELLO cut at " + std::to_string(cut));
  }
  {
    RawPeer p(hub.port());
    p.Send(
        net::Encode(net::Declare{1, ValueKind::kInt64, false, "O", "a", {}, false, 0, 0, false}));
    p.ExpectRejected(net::ErrorCode::kUnexpected, "DECLARE before authentication");
  }
  {
    RawPeer p(hub.port());
    Frame other = Hello();
    other[4] = std::byte(net::kProtocolVersion + 1);  // header version
    p.Send(other);
    p.ExpectRejected(net::ErrorCode::kVersionMismatch, "header of another version");
  }
  {
    RawPeer p(hub.port());
    p.Send(Hello());
    ASSERT_TRUE(p.Next().has_value());  // CHALLENGE
    p.Send(net::Encode(net::Auth{}));   // a proof made without the token
    p.ExpectRejected(net::ErrorCode::kAuthFailed, "AUTH with a wrong proof");
  }
  EXPECT_TRUE(hub.Running());
  ExpectServes(hub.port());
  EXPECT_EQ(hub.Stop(), 0);
}

// Authenticates a raw peer with the test token.
void Login(RawPeer& p) {
  const net::Nonce mine = net::RandomNonce();
  p.Send(net::Encode(net::Hello{net::kProtocolVersion, mine}));
  auto c = p.Next();
  ASSERT_TRUE(c.has_value());
  auto challenge = net::DecodeChallenge(net::Payload(*c));
  ASSERT_TRUE(challenge.ok());
  p.Send(net::Encode(net::Auth{
      net::ComputeProof(testing::kTestToken, net::kClientProofLabel, mine, challenge->nonce)}));
  auto w = p.Next();
  ASSERT_TRUE(w.has_value());
  ASSERT_EQ(net::DecodeHeader(*w, 1 << 20)->type, net::MsgType::kWelcome);
}

TEST(NetHostile, AuthenticatedPeerSendingBadFramesIsDropped) {
  testing::HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  const auto login = [](RawPeer& p) { Login(p); };
  {
    RawPeer p(hub.port());
    login(p);
    // A write to an attribute it never declared: an error, but not fatal.
    p.Send(net::Encode(net::Write{9, 12345, 1, 0, {}, false}));
    auto e = p.Next();
    ASSERT_TRUE(e.has_value());
    auto err = net::DecodeError(net::Payload(*e));
    ASSERT_TRUE(err.ok());
    EXPECT_EQ(err->code, net::ErrorCode::kNotFound);
    EXPECT_FALSE(err->fatal);
    EXPECT_EQ(err->request_id, 9u);
    // A WRITE cut inside its fixed fields: fatal.
    Frame w = net::Encode(net::Write{10, 0, 1, 0, {}, false});
    w.resize(net::kHeaderBytes + 6);
    w[8] = std::byte(6);
    p.Send(w);
    p.ExpectRejected(net::ErrorCode::kMalformed, "truncated WRITE");
  }
  {
    RawPeer p(hub.port());
    login(p);
    p.Send(Hello());  // a second HELLO
    p.ExpectRejected(net::ErrorCode::kUnexpected, "HELLO after authentication");
  }
  ExpectServes(hub.port());
  EXPECT_EQ(hub.Stop(), 0);
}

// A codec WRITE of `cur` against `base` (empty: whole) at base_version.
Frame CodecWrite(uint32_t request, uint32_t attr, const std::vector<std::byte>& cur,
                 const std::vector<std::byte>& base, uint64_t base_version) {
  codec::Encoder enc;
  std::vector<std::byte> out(net::CodecValueBound(cur));
  auto e = net::EncodeCodecValue(enc, cur, base, base_version, std::nullopt, base_version + 1, out);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ(e->delta, !base.empty());
  out.resize(e->bytes);
  return net::Encode(net::Write{request, attr, 1, 0, out, /*codec=*/true});
}

// The next frame, which must be of type t.
template <class Decoded>
Decoded Expect(RawPeer& p, net::MsgType t, Result<Decoded> (*decode)(ByteSpan)) {
  auto f = p.Next();
  EXPECT_TRUE(f.has_value());
  if (!f) return Decoded{};
  auto h = net::DecodeHeader(*f, 1u << 30);
  EXPECT_TRUE(h.ok());
  EXPECT_EQ(h->type, t) << "got " << net::MsgTypeName(h->type);
  if (h->type != t) return Decoded{};
  auto m = decode(net::Payload(*f));
  EXPECT_TRUE(m.ok());
  return m.ok() ? *m : Decoded{};
}

TEST(NetHostile, TensorDeltasAreVerifiedByTheHub) {
  testing::HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  constexpr size_t kN = 8192;  // 32 KiB: travels as a codec value
  const auto v1 = testing::RawFloatTensor(kN, 1.0f);
  auto v2 = v1;
  reinterpret_cast<float*>(v2.data() + detail::kTensorHeaderBytes)[17] = -1.0f;
  auto v3 = v2;
  reinterpret_cast<float*>(v3.data() + detail::kTensorHeaderBytes)[4000] = -2.0f;
  RawPeer p(hub.port());
  Login(p);
  p.Send(net::Encode(net::Declare{1, ValueKind::kTensor, false, "H", "t", {}, false, 0, 0, false}));
  const auto d = Expect(p, net::MsgType::kDeclared, &net::DecodeDeclared);
  EXPECT_EQ(d.version, 0u);
  // A whole value, then a delta against it: both accepted.
  p.Send(CodecWrite(2, d.attr_id, v1, {}, 0));
  EXPECT_EQ(Expect(p, net::MsgType::kWritten, &net::DecodeWritten).version, 1u);
  p.Send(CodecWrite(3, d.attr_id, v2, v1, 1));
  EXPECT_EQ(Expect(p, net::MsgType::kWritten, &net::DecodeWritten).version, 2u);
  // A delta against a version the hub no longer holds: refused, not fatal.
  p.Send(CodecWrite(4, d.attr_id, v3, v1, 1));
  auto stale = Expect(p, net::MsgType::kError, &net::DecodeError);
  EXPECT_EQ(stale.code, net::ErrorCode::kStaleBase) << stale.text;
  EXPECT_FALSE(stale.fatal);
  EXPECT_EQ(stale.request_id, 4u);
  // The right base but bytes that do not verify (one flipped in the payload). The hub knows
  // the base's hash, so it relays the delta before applying it: it answers WRITTEN, finds
  // the delta bad, keeps its value and publishes it again at a newer version to everyone.
  Frame bad = CodecWrite(5, d.attr_id, v3, v2, 2);
  bad.back() ^= std::byte{0x40};
  p.Send(bad);
  EXPECT_EQ(Expect(p, net::MsgType::kWritten, &net::DecodeWritten).version, 3u);
  EXPECT_EQ(Expect(p, net::MsgType::kUpdate, &net::DecodeUpdate).version, 4u);
  // What a late joiner gets: exactly the value the hub kept.
  const auto joiner_sees = [&](uint64_t version, const std::vector<std::byte>& value) {
    RawPeer q(hub.port());
    Login(q);
    q.Send(
        net::Encode(net::Declare{1, ValueKind::kTensor, false, "H", "t", {}, false, 0, 0, false}));
    auto f = q.Next();
    ASSERT_TRUE(f.has_value());
    auto got = net::DecodeDeclared(net::Payload(*f));
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(got->version, version);
    ASSERT_EQ(got->value.size(), value.size());
    EXPECT_TRUE(std::equal(value.begin(), value.end(), got->value.begin()));
  };
  joiner_sees(4, v2);
  // After a raw write the hub has no verified hash: a bad delta is applied first, found bad
  // and refused (not fatal); the value stays.
  p.Send(net::Encode(net::Write{6, d.attr_id, 1, 0, v1, false}));
  EXPECT_EQ(Expect(p, net::MsgType::kWritten, &net::DecodeWritten).version, 5u);
  Frame bad2 = CodecWrite(7, d.attr_id, v2, v1, 5);
  bad2.back() ^= std::byte{0x40};
  p.Send(bad2);
  auto unverified = Expect(p, net::MsgType::kError, &net::DecodeError);
  EXPECT_EQ(unverified.code, net::ErrorCode::kStaleBase) << unverified.text;
  EXPECT_FALSE(unverified.fatal);
  EXPECT_EQ(unverified.request_id, 7u);
  joiner_sees(5, v1);
  // A codec flag on bytes that are no codec value: the peer is dropped.
  std::vector<std::byte> junk(300, std::byte{7});
  p.Send(net::Encode(net::Write{8, d.attr_id, 1, 0, junk, /*codec=*/true}));
  p.ExpectRejected(net::ErrorCode::kMalformed, "a WRITE with a bad codec value");
  ExpectServes(hub.port());
  EXPECT_EQ(hub.Stop(), 0);
}

// A real client reading attribute H.t (a tensor), and whether it holds exactly `want`.
struct TensorReader {
  explicit TensorReader(uint16_t port, int decode_threads = -1) {
    NetOptions o;
    o.port = port;
    o.token = testing::kTestToken;
    o.decode_threads = decode_threads;
    client = ValueOrThrow(TryConnect(o));
    attr = ValueOrThrow(client->Declare("H", "t", ValueKind::kTensor, nullptr));
  }
  bool Holds(const std::vector<std::byte>& want) {
    bool same = false;
    auto r = client->ReadIfNewer(attr, 0, [&](ByteSpan got) {
      same = std::equal(got.begin(), got.end(), want.begin(), want.end());
      return Status::Ok();
    });
    return r.ok() && same;
  }
  std::shared_ptr<Client> client;
  AttrId attr{};
};

// Declares H.<name>, a tensor with no value yet, from p; its attribute id.
uint32_t DeclareTensor(RawPeer& p, uint32_t request, const std::string& name) {
  p.Send(net::Encode(
      net::Declare{request, ValueKind::kTensor, false, "H", name, {}, false, 0, 0, false}));
  return Expect(p, net::MsgType::kDeclared, &net::DecodeDeclared).attr_id;
}

// A large first value (decoded by the hub on its applier thread, after the relay) that does
// not verify: the writer is refused (not fatal) once the hub found out, nobody installs it, the
// hub keeps serving; the same value sent again right lands, with the same version.
TEST(NetHostile, ALargeWholeValueThatDoesNotVerifyIsRefusedAfterItsRelay) {
  testing::HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  const auto v1 = testing::RawFloatTensor(size_t{2} << 20, 0.5f);  // 8 MiB
  RawPeer p(hub.port());
  Login(p);
  const uint32_t t = DeclareTensor(p, 1, "t");
  TensorReader reader(hub.port());
  Frame bad = CodecWrite(2, t, v1, {}, 0);
  bad[bad.size() / 2] ^= std::byte{0x40};
  p.Send(bad);
  auto refused = Expect(p, net::MsgType::kError, &net::DecodeError);
  EXPECT_EQ(refused.code, net::ErrorCode::kStaleBase) << refused.text;
  EXPECT_FALSE(refused.fatal);
  EXPECT_EQ(refused.request_id, 2u);
  EXPECT_NE(refused.text.find("does not verify"), std::string::npos) << refused.text;
  ExpectServes(hub.port());
  EXPECT_EQ(reader.client->LatestVersion(reader.attr), 0u);
  p.Send(CodecWrite(3, t, v1, {}, 0));
  EXPECT_EQ(Expect(p, net::MsgType::kWritten, &net::DecodeWritten).version, 1u);
  EXPECT_TRUE(testing::WaitFor([&] { return reader.Holds(v1); }));
  EXPECT_EQ(hub.Stop(), 0);
}

// A large whole value of the shape the subscribers hold: decoded on the applier thread, which
// then encodes their UPDATE as a delta against the value it replaces.
TEST(NetHostile, ALargeWholeValueOfAKnownShapeReachesTheSubscribersAsADelta) {
  testing::HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  const auto v1 = testing::RawFloatTensor(size_t{2} << 20, 0.5f);  // 8 MiB
  auto v2 = v1;
  reinterpret_cast<float*>(v2.data() + detail::kTensorHeaderBytes)[12345] = -1.0f;
  RawPeer p(hub.port());
  Login(p);
  const uint32_t t = DeclareTensor(p, 1, "t");
  p.Send(CodecWrite(2, t, v1, {}, 0));
  EXPECT_EQ(Expect(p, net::MsgType::kWritten, &net::DecodeWritten).version, 1u);
  TensorReader reader(hub.port());
  ASSERT_TRUE(reader.Holds(v1));
  const Stats before = reader.client->stats();
  p.Send(CodecWrite(3, t, v2, {}, 0));  // whole, though the hub holds v1
  EXPECT_EQ(Expect(p, net::MsgType::kWritten, &net::DecodeWritten).version, 2u);
  EXPECT_TRUE(testing::WaitFor([&] { return reader.Holds(v2); }));
  const Stats st = reader.client->stats();
  EXPECT_EQ(st.deltas_recv, before.deltas_recv + 1);
  EXPECT_LT(st.bytes_recv - before.bytes_recv, v1.size() / 100) << "the UPDATE was not a delta";
  // A corrupt one: refused, and the reader never hears of it.
  Frame bad = CodecWrite(4, t, v1, {}, 0);
  bad[bad.size() / 2] ^= std::byte{0x40};
  p.Send(bad);
  auto refused = Expect(p, net::MsgType::kError, &net::DecodeError);
  EXPECT_EQ(refused.code, net::ErrorCode::kStaleBase) << refused.text;
  EXPECT_EQ(refused.request_id, 4u);
  EXPECT_EQ(reader.client->LatestVersion(reader.attr), 2u);
  EXPECT_EQ(reader.client->stats().full_recv + reader.client->stats().deltas_recv,
            st.full_recv + st.deltas_recv);
  EXPECT_TRUE(reader.Holds(v2));
  ExpectServes(hub.port());
  EXPECT_EQ(hub.Stop(), 0);
}

// Two large first values sent back to back, where the hub may keep only one: the second
// comes while the first is still being decoded (it is relayed at once, applied later), and
// must count it.
TEST(NetHostile, LargeWholeValuesBeingDecodedCountAgainstTheHubsBound) {
  testing::HubProcess hub({"--max-total-value-bytes", std::to_string(12u << 20)});
  ASSERT_NE(hub.port(), 0);
  const auto v = testing::RawFloatTensor(size_t{2} << 20, 0.25f);  // 8 MiB
  RawPeer p(hub.port());
  Login(p);
  const uint32_t t = DeclareTensor(p, 1, "t");
  const uint32_t u = DeclareTensor(p, 2, "u");
  // The hub takes both before it applies the first.
  p.SendBoth(CodecWrite(3, t, v, {}, 0), CodecWrite(4, u, v, {}, 0));
  bool written = false, refused = false;
  for (int i = 0; i < 2; ++i) {
    auto f = p.Next();
    ASSERT_TRUE(f.has_value());
    auto h = net::DecodeHeader(*f, 1u << 30);
    ASSERT_TRUE(h.ok());
    if (h->type == net::MsgType::kWritten) {
      written = true;
      EXPECT_EQ(net::DecodeWritten(net::Payload(*f))->request_id, 3u);
    } else {
      ASSERT_EQ(h->type, net::MsgType::kError);
      auto e = net::DecodeError(net::Payload(*f));
      ASSERT_TRUE(e.ok());
      EXPECT_EQ(e->code, net::ErrorCode::kHubFull) << e->text;
      EXPECT_EQ(e->request_id, 4u);
      refused = true;
    }
  }
  EXPECT_TRUE(written && refused);
  ExpectServes(hub.port());
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetHostile, AClientDropsADeltaThatDoesNotVerifyAndResyncs) {
  // A writer's corrupt delta is relayed before the hub applies it (it names the hub's base):
  // a real client subscribed to the attribute must refuse it, ask for the whole value, and
  // end with the value the hub kept, never with the corrupt one.
  testing::HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  constexpr size_t kN = 8192;
  const auto v1 = testing::RawFloatTensor(kN, 1.0f);
  auto v2 = v1;
  reinterpret_cast<float*>(v2.data() + detail::kTensorHeaderBytes)[99] = -5.0f;
  TensorReader reader(hub.port());
  RawPeer p(hub.port());
  Login(p);
  const uint32_t t = DeclareTensor(p, 1, "t");
  p.Send(CodecWrite(2, t, v1, {}, 0));
  EXPECT_EQ(Expect(p, net::MsgType::kWritten, &net::DecodeWritten).version, 1u);
  const auto value_is = [&](const std::vector<std::byte>& want) { return reader.Holds(want); };
  ASSERT_TRUE(testing::WaitFor([&] { return value_is(v1); }));
  Frame bad = CodecWrite(3, t, v2, v1, 1);
  bad.back() ^= std::byte{0x40};
  p.Send(bad);
  EXPECT_EQ(Expect(p, net::MsgType::kWritten, &net::DecodeWritten).version, 2u);
  // The reader ends at the republished version 3 with v1, having asked for it whole.
  EXPECT_TRUE(testing::WaitFor([&] { return reader.client->LatestVersion(reader.attr) == 3; }));
  EXPECT_TRUE(value_is(v1));
  EXPECT_GE(reader.client->stats().resyncs, 1u);
  EXPECT_EQ(reader.client->stats().deltas_recv, 0u);
  ExpectServes(hub.port());
  EXPECT_EQ(hub.Stop(), 0);
}

// Segment `index` of a write of `cur` against `base` (same size) at base_version, cut in
// `count` segments of `segment_bytes` data bytes.
Frame SegmentWrite(uint32_t request, uint32_t attr, const std::vector<std::byte>& cur,
                   const std::vector<std::byte>& base, uint64_t base_version, uint32_t index,
                   uint32_t count, size_t segment_bytes) {
  constexpr size_t H = detail::kTensorHeaderBytes;
  const size_t n = cur.size() - H, off = index * segment_bytes;
  const size_t bytes = std::min(segment_bytes, n - off);
  const codec::TensorBytes now{DType::kFloat32, bytes / 4,
                               reinterpret_cast<const uint8_t*>(cur.data()) + H + off};
  const codec::TensorBytes was{DType::kFloat32, bytes / 4,
                               reinterpret_cast<const uint8_t*>(base.data()) + H + off};
  std::vector<std::byte> value(net::kSegmentHeaderBytes + H +
                               codec::EncodeBound(DType::kFloat32, bytes / 4));
  net::WriteSegmentHeader(index, count, segment_bytes, value.data());
  std::memcpy(value.data() + net::kSegmentHeaderBytes, cur.data(), H);
  codec::Encoder enc;
  auto* frame = reinterpret_cast<uint8_t*>(value.data()) + net::kSegmentHeaderBytes + H;
  auto f = enc.Encode(now, &was, base_version, base_version + 1,
                      {frame, value.size() - net::kSegmentHeaderBytes - H});
  EXPECT_TRUE(f.ok());
  value.resize(net::kSegmentHeaderBytes + H + *f);
  net::Write w{request, attr, 1, 0, value, /*codec=*/true};
  w.segment = true;
  return net::Encode(w);
}

// A write in segments counts only whole: a writer that stops half way changes nothing, a
// late joiner gets the value once complete, a segment out of turn is refused, one that does
// not verify is found out, and a malformed one drops its sender.
TEST(NetHostile, SegmentedWritesCountOnlyWhole) {
  testing::HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  constexpr size_t kN = 8192;  // 32 KiB of float32, cut in 4 segments of 8 KiB
  constexpr size_t kSeg = 8192;
  const auto v1 = testing::RawFloatTensor(kN, 1.0f);
  const auto v2 = testing::RawFloatTensor(kN, 2.0f);
  const auto v3 = testing::RawFloatTensor(kN, 3.0f);
  TensorReader reader(hub.port());
  const auto value_is = [&](const std::vector<std::byte>& want) { return reader.Holds(want); };
  const auto declare = [](RawPeer& q) {
    q.Send(
        net::Encode(net::Declare{1, ValueKind::kTensor, false, "H", "t", {}, false, 0, 0, false}));
    return Expect(q, net::MsgType::kDeclared, &net::DecodeDeclared);
  };
  uint32_t id;
  {
    RawPeer p(hub.port());
    Login(p);
    id = declare(p).attr_id;
    p.Send(CodecWrite(2, id, v1, {}, 0));
    EXPECT_EQ(Expect(p, net::MsgType::kWritten, &net::DecodeWritten).version, 1u);
    ASSERT_TRUE(testing::WaitFor([&] { return value_is(v1); }));
    // Half of a write, then the writer is gone: nothing changes.
    const uint64_t got = reader.client->stats().packets_recv;
    p.Send(SegmentWrite(3, id, v2, v1, 1, 0, 4, kSeg));
    p.Send(SegmentWrite(3, id, v2, v1, 1, 1, 4, kSeg));
    ASSERT_TRUE(testing::WaitFor([&] { return reader.client->stats().packets_recv >= got + 2; }));
  }
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_TRUE(value_is(v1));
  EXPECT_EQ(reader.client->LatestVersion(reader.attr), 1u);

  RawPeer p(hub.port());
  Login(p);
  declare(p);
  // A late joiner comes between the segments of a write: it gets the value when complete.
  p.Send(SegmentWrite(4, id, v2, v1, 1, 0, 4, kSeg));
  p.Send(SegmentWrite(4, id, v2, v1, 1, 1, 4, kSeg));
  RawPeer q(hub.port());
  Login(q);
  const auto joined = declare(q);
  EXPECT_EQ(joined.version, 1u);
  p.Send(SegmentWrite(4, id, v2, v1, 1, 2, 4, kSeg));
  p.Send(SegmentWrite(4, id, v2, v1, 1, 3, 4, kSeg));
  EXPECT_EQ(Expect(p, net::MsgType::kWritten, &net::DecodeWritten).version, 2u);
  {
    auto f = q.Next();  // the value whole (the UPDATE's value points into this frame)
    ASSERT_TRUE(f.has_value());
    auto whole = net::DecodeUpdate(net::Payload(*f));
    ASSERT_TRUE(whole.ok());
    EXPECT_EQ(whole->version, 2u);
    EXPECT_TRUE(std::equal(v2.begin(), v2.end(), whole->value.begin(), whole->value.end()));
  }
  EXPECT_TRUE(testing::WaitFor([&] { return value_is(v2); }));
  EXPECT_EQ(reader.client->stats().deltas_recv, 1u);

  // A segment that continues no write: refused, not fatal.
  p.Send(SegmentWrite(5, id, v3, v2, 2, 1, 4, kSeg));
  auto stale = Expect(p, net::MsgType::kError, &net::DecodeError);
  EXPECT_EQ(stale.code, net::ErrorCode::kStaleBase) << stale.text;
  EXPECT_FALSE(stale.fatal);
  EXPECT_EQ(stale.request_id, 5u);

  // A segment that does not verify: relayed, then found out; everyone keeps v2.
  for (uint32_t i = 0; i < 4; ++i) {
    Frame f = SegmentWrite(6, id, v3, v2, 2, i, 4, kSeg);
    if (i == 2) f.back() ^= std::byte{0x40};
    p.Send(f);
  }
  EXPECT_EQ(Expect(p, net::MsgType::kWritten, &net::DecodeWritten).version, 3u);
  EXPECT_EQ(Expect(p, net::MsgType::kUpdate, &net::DecodeUpdate).version, 4u);
  EXPECT_TRUE(testing::WaitFor([&] { return reader.client->LatestVersion(reader.attr) == 4; }));
  EXPECT_TRUE(value_is(v2));

  // A segment header with reserved bytes set: the peer is dropped.
  Frame bad = SegmentWrite(7, id, v3, v2, 4, 0, 4, kSeg);
  bad[net::kWriteValueOffset + 20] = std::byte{1};
  p.Send(bad);
  p.ExpectRejected(net::ErrorCode::kMalformed, "a segment with reserved bytes set");
  ExpectServes(hub.port());
  EXPECT_EQ(hub.Stop(), 0);
}

// A hub, a raw writer that declared H.t and wrote `first` whole (version 1), and a real
// reader of H.t that decodes segments on 3 threads and holds `first`.
constexpr size_t kFloats = size_t{1} << 20;    // the tests below: 4 MiB of float32 ...
constexpr size_t kSegBytes = size_t{1} << 20;  // ... cut in 4 segments of 1 MiB

struct WriterAndReader {
  testing::HubProcess hub;
  TensorReader reader{hub.port(), /*decode_threads=*/3};
  RawPeer p{hub.port()};
  uint32_t id = 0;

  void Start(const std::vector<std::byte>& first) {
    Login(p);
    p.Send(
        net::Encode(net::Declare{1, ValueKind::kTensor, false, "H", "t", {}, false, 0, 0, false}));
    id = Expect(p, net::MsgType::kDeclared, &net::DecodeDeclared).attr_id;
    p.Send(CodecWrite(2, id, first, {}, 0));
    EXPECT_EQ(Expect(p, net::MsgType::kWritten, &net::DecodeWritten).version, 1u);
    ASSERT_TRUE(testing::WaitFor([&] { return reader.Holds(first); }));
  }

  // Writes v[1], v[2], ... back to back, each in 4 segments of `seg` bytes against the one
  // before (v[0] is the value at version 1); the reader ends with the last as deltas, and a
  // late joiner gets it too.
  // The hub still serves, and stops cleanly.
  void Finish() {
    ExpectServes(hub.port());
    EXPECT_EQ(hub.Stop(), 0);
  }

  void WriteInTurn(const std::vector<std::vector<std::byte>>& v, size_t seg) {
    for (uint32_t k = 1; k < v.size(); ++k) {
      for (uint32_t i = 0; i < 4; ++i)
        p.Send(SegmentWrite(2 + k, id, v[k], v[k - 1], k, i, 4, seg));
    }
    for (uint64_t k = 1; k < v.size(); ++k) {
      EXPECT_EQ(Expect(p, net::MsgType::kWritten, &net::DecodeWritten).version, k + 1);
    }
    const uint64_t last = v.size();
    EXPECT_TRUE(
        testing::WaitFor([&] { return reader.client->LatestVersion(reader.attr) == last; }));
    EXPECT_TRUE(reader.Holds(v.back()));
    EXPECT_EQ(reader.client->stats().resyncs, 0u);
    TensorReader late(hub.port());
    EXPECT_TRUE(testing::WaitFor([&] { return late.Holds(v.back()); }));
    EXPECT_EQ(late.client->LatestVersion(late.attr), last);
  }
};

// `base` with every 7th float from `from` on set to k (a tensor of RawFloatTensor's layout).
std::vector<std::byte> Changed(std::vector<std::byte> base, size_t from, float k) {
  auto* f = reinterpret_cast<float*>(base.data() + detail::kTensorHeaderBytes);
  const size_t n = (base.size() - detail::kTensorHeaderBytes) / 4;
  for (size_t i = from; i < n; i += 7) f[i] = k;
  return base;
}

// Segmented writes sent back to back, each against the one before: the hub relays each
// without waiting to apply the one before, and a reader that decodes segments on several
// threads applies every one as a delta: the first segment of a write waits for the write
// before to be installed (its base) instead of finding the base missing and resyncing.
TEST(NetHostile, BackToBackSegmentedWritesAllApplyAsDeltas) {
  WriterAndReader s;
  std::vector<std::vector<std::byte>> v = {testing::RawFloatTensor(kFloats, 1.0f)};
  for (int k = 1; k <= 4; ++k) v.push_back(Changed(v.back(), static_cast<size_t>(k), 1.0f + k));
  ASSERT_NO_FATAL_FAILURE(s.Start(v[0]));
  ASSERT_NO_FATAL_FAILURE(s.WriteInTurn(v, kSegBytes));
  EXPECT_EQ(s.reader.client->stats().deltas_recv, 4u);
  s.Finish();
}

// Segmented writes back to back while a subscriber takes nothing: their relays to it do not
// complete, so the hub's applies wait; it keeps at most a few writes of the attribute waiting
// (applying the oldest when more come), and the reader and a late joiner end with the last.
// The hub then stops cleanly with that subscriber still stalled (it aborted in UCX once: its
// endpoints were closed with a flush that the stalled peer never let finish).
TEST(NetHostile, WritesPastAStalledSubscriberAllArrive) {
  WriterAndReader s;
  // 16 MiB of random floats in 4 segments: each write's relay is 16 MiB that the stalled
  // subscriber never takes, more than the sockets between them hold.
  constexpr size_t kBigN = size_t{4} << 20;
  constexpr size_t kBigSeg = size_t{4} << 20;
  std::vector<std::vector<std::byte>> v;
  for (int k = 0; k <= 6; ++k) {
    v.push_back(testing::RawFloatTensor(kBigN, 0.0f));
    auto* f = reinterpret_cast<uint32_t*>(v.back().data() + detail::kTensorHeaderBytes);
    uint64_t x = 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(k + 1);
    for (size_t i = 0; i < kBigN; ++i) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      f[i] = static_cast<uint32_t>(x) & 0x3FFFFFFFu;  // finite floats
    }
  }
  ASSERT_NO_FATAL_FAILURE(s.Start(v[0]));
  auto stalled = std::make_unique<RawPeer>(s.hub.port());
  Login(*stalled);
  stalled->Send(
      net::Encode(net::Declare{1, ValueKind::kTensor, false, "H", "t", {}, false, 0, 0, false}));
  Expect(*stalled, net::MsgType::kDeclared, &net::DecodeDeclared);
  stalled->Pause();
  ASSERT_NO_FATAL_FAILURE(s.WriteInTurn(v, kBigSeg));
  s.Finish();
}

// A segmented write cut off half way by the writer's next one: the reader drops what it was
// decoding of the first (its decode threads may still be at it when the next one's first
// segment comes) and applies the second.
TEST(NetHostile, AWriteCutOffHalfWayGivesWayToTheNext) {
  WriterAndReader s;
  const auto v1 = testing::RawFloatTensor(kFloats, 1.0f);
  const auto v2 = Changed(v1, 1, 2.0f), v3 = Changed(v1, 2, 3.0f);
  ASSERT_NO_FATAL_FAILURE(s.Start(v1));
  for (int round = 0; round < 20; ++round) {
    const uint64_t base = 1 + static_cast<uint64_t>(round);
    const auto& from = round % 2 == 0 ? v1 : v3;
    const auto& to = round % 2 == 0 ? v3 : v1;
    const uint32_t cut = 10 + 2 * static_cast<uint32_t>(round);
    for (uint32_t i = 0; i < 3; ++i)
      s.p.Send(SegmentWrite(cut, s.id, v2, from, base, i, 4, kSegBytes));
    for (uint32_t i = 0; i < 4; ++i)
      s.p.Send(SegmentWrite(cut + 1, s.id, to, from, base, i, 4, kSegBytes));
    EXPECT_EQ(Expect(s.p, net::MsgType::kWritten, &net::DecodeWritten).version, base + 1);
    ASSERT_TRUE(testing::WaitFor([&] {
      return s.reader.client->LatestVersion(s.reader.attr) == base + 1 && s.reader.Holds(to);
    })) << "round "
        << round;
  }
  EXPECT_EQ(s.reader.client->stats().resyncs, 0u);
  s.Finish();
}

// A segmented write that does not verify, and one sent right after it against it: the hub
// finds the first out once it applies it, drops the second too (its base), and publishes the
// value it kept at a version above both, so the reader and a late joiner end with it.
TEST(NetHostile, AWriteAfterOneThatDoesNotVerifyGoesWithIt) {
  WriterAndReader s;
  const auto v1 = testing::RawFloatTensor(kFloats, 1.0f);
  const auto v2 = Changed(v1, 1, 2.0f), v3 = Changed(v2, 2, 3.0f);
  ASSERT_NO_FATAL_FAILURE(s.Start(v1));
  for (uint32_t i = 0; i < 4; ++i) {
    Frame f = SegmentWrite(3, s.id, v2, v1, 1, i, 4, kSegBytes);
    if (i == 3) f.back() ^= std::byte{0x40};
    s.p.Send(f);
  }
  for (uint32_t i = 0; i < 4; ++i) s.p.Send(SegmentWrite(4, s.id, v3, v2, 2, i, 4, kSegBytes));
  EXPECT_EQ(Expect(s.p, net::MsgType::kWritten, &net::DecodeWritten).version, 2u);
  // The second write was taken against the first (relayed before the first was applied), or
  // refused (the hub had applied the first already, or dropped the second part way through
  // with it); either way the hub's v1 ends on top, above every version given out.
  std::optional<Frame> f;
  net::MsgType type;
  do {  // (the republished UPDATE may come first)
    f = s.p.Next();
    ASSERT_TRUE(f.has_value());
    type = net::DecodeHeader(*f, 1u << 30)->type;
  } while (type == net::MsgType::kUpdate);
  if (type == net::MsgType::kWritten) {
    EXPECT_EQ(net::DecodeWritten(net::Payload(*f))->version, 3u);
  } else {
    ASSERT_EQ(type, net::MsgType::kError) << net::MsgTypeName(type);
    EXPECT_EQ(net::DecodeError(net::Payload(*f))->code, net::ErrorCode::kStaleBase);
  }
  TensorReader late(s.hub.port());
  ASSERT_TRUE(testing::WaitFor([&] { return late.Holds(v1); }));
  const uint64_t last = late.client->LatestVersion(late.attr);
  EXPECT_GE(last, type == net::MsgType::kWritten ? 4u : 3u);
  EXPECT_TRUE(testing::WaitFor(
      [&] { return s.reader.client->LatestVersion(s.reader.attr) == last && s.reader.Holds(v1); }));
  s.Finish();
}

TEST(NetHostile, PeerThatNeverAuthenticatesIsDropped) {
  testing::HubProcess hub({"--handshake-timeout-ms", "200"});
  ASSERT_NE(hub.port(), 0);
  RawPeer silent(hub.port());
  RawPeer halfway(hub.port());
  halfway.Send(Hello());
  ASSERT_TRUE(halfway.Next().has_value());  // CHALLENGE, then nothing
  silent.ExpectRejected(net::ErrorCode::kUnexpected, "a silent peer");
  halfway.ExpectRejected(net::ErrorCode::kUnexpected, "a peer that stops after HELLO");
  ExpectServes(hub.port());
  EXPECT_EQ(hub.Stop(), 0);
}

TEST(NetHostile, GarbageOnTheTcpPortDoesNotHurtTheHub) {
  testing::HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  std::mt19937_64 rng(11);
  for (int i = 0; i < 8; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(hub.port());
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    std::vector<uint8_t> junk(i == 0 ? 0 : rng() % 4096);
    for (auto& b : junk) b = uint8_t(rng());
    if (!junk.empty()) (void)!send(fd, junk.data(), junk.size(), MSG_NOSIGNAL);
    close(fd);
  }
  EXPECT_TRUE(hub.Running());
  ExpectServes(hub.port());
  EXPECT_TRUE(hub.Running());
  EXPECT_EQ(hub.Stop(), 0);
}

}  // namespace
}  // namespace easysync
