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

#include "easysync/net.h"
#include "net/protocol.h"
#include "net/ucx_worker.h"
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
    worker_.reset();
  }
  void Send(Frame f) {
    worker_->Post([this, f = std::make_shared<const Frame>(std::move(f))] {
      if (!closed_) worker_->Send(ep_, f);
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
    worker_->Close(ep, /*flush=*/false);
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
    p.Send(net::Encode(net::Declare{1, ValueKind::kInt64, false, "O", "a", {}}));
    p.ExpectRejected(net::ErrorCode::kUnexpected, "DECLARE before authentication");
  }
  {
    RawPeer p(hub.port());
    Frame v2 = Hello();
    v2[4] = std::byte(2);  // header version
    p.Send(v2);
    p.ExpectRejected(net::ErrorCode::kVersionMismatch, "header of version 2");
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

TEST(NetHostile, AuthenticatedPeerSendingBadFramesIsDropped) {
  testing::HubProcess hub;
  ASSERT_NE(hub.port(), 0);
  auto login = [&](RawPeer& p) {
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
  };
  {
    RawPeer p(hub.port());
    login(p);
    // A write to an attribute it never declared: an error, but not fatal.
    p.Send(net::Encode(net::Write{9, 12345, 1, 0, {}}));
    auto e = p.Next();
    ASSERT_TRUE(e.has_value());
    auto err = net::DecodeError(net::Payload(*e));
    ASSERT_TRUE(err.ok());
    EXPECT_EQ(err->code, net::ErrorCode::kNotFound);
    EXPECT_FALSE(err->fatal);
    EXPECT_EQ(err->request_id, 9u);
    // A WRITE cut inside its fixed fields: fatal.
    Frame w = net::Encode(net::Write{10, 0, 1, 0, {}});
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
