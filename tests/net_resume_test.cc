// The client's side of a reconnect, against a scripted hub: the test decides what the hub
// answers, and when it drops the connection, which a real hub cannot be made to do on cue.
#include <gtest/gtest.h>

#include <condition_variable>
#include <deque>
#include <future>
#include <optional>

#include "easysync/net.h"
#include "easysync/tensor.h"
#include "net/protocol.h"
#include "net/ucx_worker.h"
#include "net/wire_value.h"
#include "net_test_util.h"

namespace easysync {
namespace {

using net::Frame;
using net::MsgType;
using std::chrono::milliseconds;
using std::chrono::seconds;

// A hub that does the handshake and answers PING itself, and hands every other message to
// the test, which answers (or not) with Send().
class ScriptedHub : public net::UcxWorker::Handler {
 public:
  ScriptedHub() {
    net::UcxOptions o;
    o.transports = "tcp";
    worker_ = ValueOrThrow(net::UcxWorker::Create(o, this));
    EXPECT_TRUE(worker_->Listen("127.0.0.1", 0).ok());
    worker_->Start();
  }
  ~ScriptedHub() override {
    worker_->Stop();
    worker_.reset();
  }
  uint16_t port() const { return worker_->listen_port(); }

  void Send(Frame f) {
    worker_->Post([this, f = std::make_shared<const Frame>(std::move(f))] {
      if (ep_ != nullptr) worker_->Send(ep_, f);
    });
  }
  // Drops the client's connection without a word, as a hub that dies would.
  void Drop() {
    worker_->Post([this] {
      if (ep_ != nullptr) worker_->Close(ep_);
      ep_ = nullptr;
    });
  }
  // The next message of type t from the client (others are skipped), or nullopt.
  std::optional<Frame> Next(MsgType t, milliseconds timeout = milliseconds(20000)) {
    std::unique_lock<std::mutex> lock(mu_);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      while (!frames_.empty()) {
        Frame f = std::move(frames_.front());
        frames_.pop_front();
        if (net::DecodeHeader(f, 1u << 30)->type == t) return f;
      }
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && frames_.empty()) {
        return std::nullopt;
      }
    }
  }

  void OnConnectRequest(ucp_conn_request_h request) override {
    std::string peer;
    auto ep = worker_->Accept(request, &peer);
    if (ep.ok()) ep_ = *ep;
  }
  void OnFrame(ucp_ep_h ep, Frame f) override {
    if (ep != ep_) return;
    auto h = net::DecodeHeader(f, 1u << 30);
    if (!h.ok()) return;
    const ByteSpan payload = net::Payload(f);
    if (h->type == MsgType::kHello) {
      client_nonce_ = net::DecodeHello(payload)->nonce;
      hub_nonce_ = net::RandomNonce();
      worker_->Send(ep, std::make_shared<const Frame>(net::Encode(net::Challenge{hub_nonce_})));
    } else if (h->type == MsgType::kAuth) {
      net::Welcome w;
      w.client_id = 7;
      w.hub_time_ns = MonotonicNanos();
      w.mac =
          net::ComputeProof(testing::kTestToken, net::kHubProofLabel, client_nonce_, hub_nonce_);
      w.max_message_bytes = 1u << 26;
      worker_->Send(ep, std::make_shared<const Frame>(net::Encode(w)));
    } else if (h->type == MsgType::kPing) {
      worker_->Send(ep, std::make_shared<const Frame>(net::Encode(
                            net::Pong{net::DecodePing(payload)->client_ns, MonotonicNanos()})));
    } else {
      std::lock_guard<std::mutex> lock(mu_);
      frames_.push_back(std::move(f));
      cv_.notify_all();
    }
  }
  void OnOversize(ucp_ep_h, size_t) override {}
  void OnEndpointError(ucp_ep_h ep, ucs_status_t) override {
    worker_->Close(ep);
    if (ep == ep_) ep_ = nullptr;
  }

 private:
  std::unique_ptr<net::UcxWorker> worker_;
  ucp_ep_h ep_ = nullptr;  // progress thread only
  net::Nonce client_nonce_{}, hub_nonce_{};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Frame> frames_;
};

// A client of the scripted hub that comes back quickly after a lost connection.
NetOptions ClientOptions(uint16_t port) {
  NetOptions o;
  o.port = port;
  o.token = testing::kTestToken;
  o.reconnect_backoff_min = milliseconds(10);
  o.reconnect_backoff_max = milliseconds(50);
  return o;
}

// An UPDATE carrying `cur` as a codec delta against `base` at base_version.
Frame DeltaUpdate(uint32_t attr, uint64_t version, const std::vector<std::byte>& cur,
                  const std::vector<std::byte>& base, uint64_t base_version) {
  codec::Encoder enc;
  std::vector<std::byte> out(net::CodecValueBound(cur));
  auto e = net::EncodeCodecValue(enc, cur, base, base_version, std::nullopt, version, out);
  EXPECT_TRUE(e.ok() && e->delta);
  out.resize(e->bytes);
  return net::Encode(net::Update{attr, version, version, 1, 0, out, /*codec=*/true});
}

TEST(NetResume, AnUpdateRightAfterALargeDeclaredIsNotLost) {
  // A DECLARED with a large value travels by UCX rendezvous, a small UPDATE right behind it
  // eagerly: the client must still see them in the order the hub sent them.
  ScriptedHub hub;
  ASSERT_NE(hub.port(), 0);
  auto client = TryConnect(ClientOptions(hub.port()));
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  constexpr size_t kN = 1 << 18;  // 1 MiB of floats
  const auto v1 = testing::RawFloatTensor(kN, 1.0f);
  auto v2 = v1;
  reinterpret_cast<float*>(v2.data() + detail::kTensorHeaderBytes)[3] = -1.0f;
  auto declared = std::async(std::launch::async, [&] {
    return (*client)->Declare("R", "big", ValueKind::kTensor, nullptr);
  });
  auto d = hub.Next(MsgType::kDeclare);
  ASSERT_TRUE(d.has_value());
  const uint32_t request = net::DecodeDeclare(net::Payload(*d))->request_id;
  hub.Send(net::Encode(net::Declared{request, 0, 1, 1, 1, 0, v1}));
  hub.Send(DeltaUpdate(0, 2, v2, v1, 1));
  auto attr = declared.get();
  ASSERT_TRUE(attr.ok()) << attr.status().ToString();
  EXPECT_TRUE(testing::WaitFor([&] { return (*client)->LatestVersion(*attr) == 2; }, seconds(5)))
      << (*client)->stats().ToString();
}

TEST(NetResume, AWholeValueAskedForOnALostConnectionDoesNotBlockLaterDeltas) {
  ScriptedHub hub;
  ASSERT_NE(hub.port(), 0);
  auto client = TryConnect(ClientOptions(hub.port()));
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  auto declared = std::async(std::launch::async, [&] {
    return (*client)->Declare("R", "t", ValueKind::kTensor, nullptr);
  });
  auto d = hub.Next(MsgType::kDeclare);
  ASSERT_TRUE(d.has_value());
  const uint32_t request = net::DecodeDeclare(net::Payload(*d))->request_id;
  hub.Send(net::Encode(net::Declared{request, 0, 0, 0, 0, 0, {}}));
  auto attr = declared.get();
  ASSERT_TRUE(attr.ok()) << attr.status().ToString();

  constexpr size_t kN = 4096;
  const auto v1 = testing::RawFloatTensor(kN, 1.0f);
  auto v2 = v1;
  reinterpret_cast<float*>(v2.data() + detail::kTensorHeaderBytes)[7] = -1.0f;
  hub.Send(net::Encode(net::Update{0, 1, 1, 1, 0, v1, /*codec=*/false}));
  ASSERT_TRUE(testing::WaitFor([&] { return (*client)->LatestVersion(*attr) == 1; }));

  // A delta against a version the client does not hold: it asks for the whole value. The
  // hub never answers, and the connection drops.
  hub.Send(DeltaUpdate(0, 3, v2, v1, 2));
  ASSERT_TRUE(hub.Next(MsgType::kResync).has_value());
  hub.Drop();

  // The client comes back and resumes at version 1; the hub keeps that version and goes on
  // with a delta against it, which the client must apply.
  auto resume = hub.Next(MsgType::kDeclare);
  ASSERT_TRUE(resume.has_value()) << "the client did not reconnect";
  auto r = net::DecodeDeclare(net::Payload(*resume));
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(r->resume);
  EXPECT_EQ(r->version, 1u);
  hub.Send(net::Encode(net::Declared{r->request_id, 0, 1, 1, 1, 0, v1}));
  hub.Send(DeltaUpdate(0, 2, v2, v1, 1));
  EXPECT_TRUE(testing::WaitFor([&] { return (*client)->LatestVersion(*attr) == 2; }, seconds(5)))
      << "the delta was dropped: the client still waits for the lost connection's RESYNC; "
      << (*client)->stats().ToString();
  bool same = false;
  auto got = (*client)->ReadIfNewer(*attr, 0, [&](ByteSpan b) {
    same = std::equal(b.begin(), b.end(), v2.begin(), v2.end());
    return Status::Ok();
  });
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(same);
}

}  // namespace
}  // namespace easysync
