// The network client: a local replica of each declared attribute, fed by the hub.
//
// Reads never leave the process. The UCX progress thread applies UPDATEs to the replicas
// (swapping in the received frame, which readers share: a reader sees a whole value) and
// rings the bell waiters sleep on. Declare and Write wait for the hub's answer.
#include "net/net_client.h"

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <unordered_map>

#include "net/protocol.h"
#include "net/ucx_worker.h"

namespace easysync::net {
namespace {

constexpr uint32_t kMaxAttributes = 1u << 16;

Status ValidName(std::string_view what, std::string_view name) {
  if (name.empty() || name.size() > kMaxNameBytes || name.find('\0') != name.npos) {
    return Status::InvalidArgument(std::string(what) + " name '" + std::string(name) +
                                   "' must have 1 to 255 bytes and no NUL");
  }
  return Status::Ok();
}

class NetClient final : public Client, public UcxWorker::Handler {
 public:
  NetClient(const NetOptions& options, uint16_t version)
      : options_(options),
        version_(version),
        cluster_(options.host + ":" + std::to_string(options.port)),
        replicas_(new std::atomic<Replica*>[kMaxAttributes]) {
    for (uint32_t i = 0; i < kMaxAttributes; ++i) replicas_[i].store(nullptr);
  }
  ~NetClient() override {
    StopCallbacks();
    if (worker_) worker_->Stop();  // before reset(): the thread still uses worker_
    worker_.reset();
    for (uint32_t i = 0; i < count_.load(); ++i) delete replicas_[i].load();
  }
  Status Connect();

  uint32_t id() const override { return id_; }
  const std::string& cluster() const override { return cluster_; }
  Result<AttrId> Declare(std::string_view object, std::string_view attribute, ValueKind kind,
                         const Initial* initial) override;
  Result<uint64_t> Write(AttrId attr, size_t size, FunctionRef<void(std::byte*)> encode) override;
  uint64_t LatestVersion(AttrId attr) override {
    Replica* r = Find(attr);
    return r == nullptr ? 0 : r->version.load(std::memory_order_acquire);
  }
  Result<std::optional<UpdateInfo>> ReadIfNewer(AttrId attr, uint64_t have,
                                                FunctionRef<Status(ByteSpan)> decode) override;
  bool WaitUntil(FunctionRef<bool()> ready, Deadline deadline) override;
  void Kick() override { Ring(); }

  // UcxWorker::Handler, on the progress thread.
  void OnFrame(ucp_ep_h ep, Frame frame) override;
  void OnOversize(ucp_ep_h, size_t bytes) override {
    Fail(Status::ResourceExhausted("the hub sent a message of " + std::to_string(bytes) +
                                   " bytes, over max_message_bytes"));
  }
  void OnEndpointError(ucp_ep_h, ucs_status_t status) override {
    Fail(Status::Unavailable("connection to the hub at " + cluster_ +
                             " failed: " + ucs_status_string(status)));
  }

 private:
  struct Replica {
    uint32_t hub_id = 0;
    std::atomic<uint64_t> version{0};
    std::mutex mu;  // guards frame, offset, info
    std::shared_ptr<const Frame> frame;
    size_t offset = 0;
    UpdateInfo info;
  };
  struct Pending {
    ValueKind kind = ValueKind::kBool;
    bool done = false;
    Status status;
    uint32_t local = 0;
    uint64_t version = 0, clock = 0;
  };
  enum class State { kConnecting, kReady, kFailed };

  Replica* Find(AttrId attr) const {
    return attr.index < kMaxAttributes ? replicas_[attr.index].load(std::memory_order_acquire)
                                       : nullptr;
  }
  // Installs a value if it is newer than the replica's. Returns whether it was.
  bool Apply(Replica& r, std::shared_ptr<const Frame> frame, size_t offset, UpdateInfo info);
  void Ring();
  void Fail(Status status);
  void SendFrame(std::shared_ptr<const Frame> frame);
  // Sends a request and waits for its answer. REQUIRES: not on the progress thread.
  Result<Pending> Request(uint32_t id, Pending p, std::shared_ptr<const Frame> frame,
                          std::string_view what);
  int64_t ToLocal(int64_t hub_ns) const { return hub_ns - offset_ns_; }
  int64_t ToHub(int64_t local_ns) const { return local_ns + offset_ns_; }

  NetOptions options_;
  uint16_t version_;
  std::string cluster_;
  std::unique_ptr<UcxWorker> worker_;
  ucp_ep_h ep_ = nullptr;
  uint32_t id_ = 0;
  int64_t offset_ns_ = 0;  // hub clock minus ours, estimated during the handshake
  int64_t auth_sent_ns_ = 0;
  Nonce nonce_{}, hub_nonce_{};
  std::atomic<uint64_t> clock_{0};

  std::unique_ptr<std::atomic<Replica*>[]> replicas_;
  std::atomic<uint32_t> count_{0};
  std::unordered_map<uint32_t, uint32_t> by_hub_;  // progress thread only

  std::mutex mu_;  // guards state_, failure_, pending_, next_request_
  std::condition_variable cv_;
  State state_ = State::kConnecting;
  Status failure_;
  std::map<uint32_t, Pending> pending_;
  uint32_t next_request_ = 1;

  std::mutex wait_mu_;
  std::condition_variable wait_cv_;
  std::atomic<int> waiters_{0};
};

Status NetClient::Connect() {
  if (options_.token.empty()) {
    if (const char* env = std::getenv("EASYSYNC_TOKEN")) options_.token = env;
  }
  if (options_.token.empty()) {
    return Status::InvalidArgument("no token: set NetOptions::token or EASYSYNC_TOKEN");
  }
  options_.spin = ResolveSpin(options_.spin);
  UcxOptions uo;
  uo.transports = options_.ucx_transports;
  uo.spin = options_.spin;
  uo.max_frame_bytes = options_.max_message_bytes;
  EASYSYNC_ASSIGN_OR_RETURN(worker_, UcxWorker::Create(uo, this));
  static std::once_flag logged;
  std::call_once(logged, [&] {
    std::fprintf(stderr, "easysync: network mode, %s\n", worker_->description().c_str());
  });
  EASYSYNC_ASSIGN_OR_RETURN(ep_, worker_->Connect(options_.host, options_.port));
  worker_->Start();
  nonce_ = RandomNonce();
  worker_->Post([this] {
    SendFrame(std::make_shared<const Frame>(Encode(Hello{version_, nonce_})));
  });
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, options_.connect_timeout, [&] { return state_ != State::kConnecting; })) {
    return Status::Timeout("no answer from the hub at " + cluster_ + " within " +
                           std::to_string(options_.connect_timeout.count()) + " ms");
  }
  return state_ == State::kReady ? Status::Ok() : failure_;
}

void NetClient::SendFrame(std::shared_ptr<const Frame> frame) {
  CounterShard& c = shard();
  Count(c.bytes_sent, frame->size());
  Count(c.packets_sent, 1);
  if (ep_ != nullptr) worker_->Send(ep_, std::move(frame));
}

void NetClient::Ring() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (waiters_.load(std::memory_order_seq_cst) > 0) {
    { std::lock_guard<std::mutex> lock(wait_mu_); }
    wait_cv_.notify_all();
  }
}

void NetClient::Fail(Status status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ == State::kFailed) return;
    state_ = State::kFailed;
    failure_ = status;
    for (auto& [id, p] : pending_) {
      if (!p.done) {
        p.done = true;
        p.status = status;
      }
    }
  }
  cv_.notify_all();
  if (ep_ != nullptr) worker_->Close(ep_, /*flush=*/false);
  ep_ = nullptr;
  Ring();
}

bool NetClient::Apply(Replica& r, std::shared_ptr<const Frame> frame, size_t offset,
                      UpdateInfo info) {
  uint64_t c = clock_.load(std::memory_order_relaxed);
  while (c < info.clock && !clock_.compare_exchange_weak(c, info.clock)) {
  }
  std::lock_guard<std::mutex> lock(r.mu);
  if (info.version <= r.info.version) return false;
  r.frame = std::move(frame);
  r.offset = offset;
  info.bytes = r.frame->size() - offset;
  r.info = info;
  r.version.store(info.version, std::memory_order_release);
  return true;
}

void NetClient::OnFrame(ucp_ep_h, Frame raw) {
  CounterShard& c = shard();
  Count(c.bytes_recv, raw.size());
  Count(c.packets_recv, 1);
  auto frame = std::make_shared<const Frame>(std::move(raw));
  auto h = DecodeHeader(*frame, options_.max_message_bytes);
  if (!h.ok()) return Fail(Status::Corruption("bad message from the hub: " + h.status().message()));
  const ByteSpan payload = Payload(*frame);
  if (h->type == MsgType::kError) {
    auto m = DecodeError(payload);
    if (!m.ok()) return Fail(m.status());
    Status st = ErrorToStatus(m->code, m->text);
    if (m->fatal) return Fail(st);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = pending_.find(m->request_id);
      if (it == pending_.end()) return;
      it->second.done = true;
      it->second.status = st;
    }
    cv_.notify_all();
    return;
  }
  if (h->version != kProtocolVersion) {
    return Fail(
        Status::InvalidArgument("the hub speaks protocol version " + std::to_string(h->version)));
  }
  switch (h->type) {
    case MsgType::kChallenge: {
      auto m = DecodeChallenge(payload);
      if (!m.ok()) return Fail(m.status());
      hub_nonce_ = m->nonce;
      // The clock offset comes from the AUTH -> WELCOME round trip: the connection is warm
      // by then, so the round trip (the bound of the estimate's error) is short.
      auth_sent_ns_ = MonotonicNanos();
      SendFrame(std::make_shared<const Frame>(
          Encode(Auth{ComputeProof(options_.token, kClientProofLabel, nonce_, hub_nonce_)})));
      return;
    }
    case MsgType::kWelcome: {
      auto m = DecodeWelcome(payload);
      if (!m.ok()) return Fail(m.status());
      if (!ProofMatches(m->mac, ComputeProof(options_.token, kHubProofLabel, nonce_, hub_nonce_))) {
        return Fail(Status::PermissionDenied("the hub at " + cluster_ +
                                             " could not prove it knows the token"));
      }
      id_ = m->client_id;
      offset_ns_ = m->hub_time_ns - (auth_sent_ns_ + MonotonicNanos()) / 2;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (state_ == State::kConnecting) state_ = State::kReady;
      }
      cv_.notify_all();
      return;
    }
    case MsgType::kDeclared: {
      auto m = DecodeDeclared(payload);
      if (!m.ok()) return Fail(m.status());
      uint32_t local;
      auto it = by_hub_.find(m->attr_id);
      if (it != by_hub_.end()) {
        local = it->second;
      } else {
        local = count_.load();
        if (local >= kMaxAttributes) {
          return Fail(Status::ResourceExhausted("more than 65536 attributes declared"));
        }
        auto* r = new Replica;
        r->hub_id = m->attr_id;
        replicas_[local].store(r, std::memory_order_release);
        count_.store(local + 1);
        by_hub_.emplace(m->attr_id, local);
      }
      if (m->version > 0) {
        Apply(*replicas_[local].load(), frame, kDeclaredValueOffset,
              UpdateInfo{m->version, m->clock, m->writer, ToLocal(m->write_ns), 0});
        Ring();
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto p = pending_.find(m->request_id);
        if (p == pending_.end()) return;
        p->second.done = true;
        p->second.local = local;
      }
      cv_.notify_all();
      return;
    }
    case MsgType::kWritten: {
      auto m = DecodeWritten(payload);
      if (!m.ok()) return Fail(m.status());
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto p = pending_.find(m->request_id);
        if (p == pending_.end()) return;
        p->second.done = true;
        p->second.version = m->version;
        p->second.clock = m->clock;
      }
      cv_.notify_all();
      return;
    }
    case MsgType::kUpdate: {
      auto m = DecodeUpdate(payload);
      if (!m.ok()) return Fail(m.status());
      auto it = by_hub_.find(m->attr_id);
      if (it == by_hub_.end()) return;  // not declared here (yet)
      if (Apply(*replicas_[it->second].load(), frame, kUpdateValueOffset,
                UpdateInfo{m->version, m->clock, m->writer, ToLocal(m->write_ns), 0})) {
        Ring();
      }
      return;
    }
    default:
      return Fail(Status::Corruption("the hub sent an unexpected " +
                                     std::string(MsgTypeName(h->type)) + " message"));
  }
}

Result<NetClient::Pending> NetClient::Request(uint32_t id, Pending p,
                                              std::shared_ptr<const Frame> frame,
                                              std::string_view what) {
  if (frame->size() > options_.max_message_bytes) {
    return Status::ResourceExhausted(std::string(what) + " of " + std::to_string(frame->size()) +
                                     " bytes is over max_message_bytes");
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (state_ != State::kReady) return failure_;
  pending_.emplace(id, p);
  worker_->Post([this, frame = std::move(frame)]() mutable { SendFrame(std::move(frame)); });
  const bool done =
      cv_.wait_for(lock, options_.request_timeout, [&] { return pending_.at(id).done; });
  Pending out = pending_.at(id);
  pending_.erase(id);
  if (!done) {
    return Status::Timeout("the hub at " + cluster_ + " did not answer " + std::string(what) +
                           " within " + std::to_string(options_.request_timeout.count()) + " ms");
  }
  if (!out.status.ok()) return out.status;
  return out;
}

Result<AttrId> NetClient::Declare(std::string_view object, std::string_view attribute,
                                  ValueKind kind, const Initial* initial) {
  EASYSYNC_RETURN_IF_ERROR(ValidName("object", object));
  EASYSYNC_RETURN_IF_ERROR(ValidName("attribute", attribute));
  std::vector<std::byte> value;
  if (initial != nullptr) {
    value.resize(initial->size);
    initial->encode(value.data());
  }
  uint32_t id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = next_request_++;
  }
  net::Declare m{id, kind, initial != nullptr, std::string(object), std::string(attribute), value};
  Pending p;
  p.kind = kind;
  EASYSYNC_ASSIGN_OR_RETURN(
      Pending done, Request(id, p, std::make_shared<const Frame>(Encode(m)),
                            "DECLARE of " + std::string(object) + "." + std::string(attribute)));
  return AttrId{done.local};
}

Result<uint64_t> NetClient::Write(AttrId attr, size_t size, FunctionRef<void(std::byte*)> encode) {
  Replica* r = Find(attr);
  if (r == nullptr) return Status::InvalidArgument("unknown attribute id");
  uint32_t id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = next_request_++;
  }
  const int64_t now = MonotonicNanos();
  const uint64_t clock = clock_.load(std::memory_order_relaxed) + 1;
  auto frame = std::make_shared<const Frame>(
      EncodeWrite(net::Write{id, r->hub_id, clock, ToHub(now), {}}, size, encode));
  EASYSYNC_ASSIGN_OR_RETURN(Pending done, Request(id, Pending{}, frame, "WRITE"));
  Count(shard().updates_sent, 1);
  if (Apply(*r, frame, kWriteValueOffset, UpdateInfo{done.version, done.clock, id_, now, 0}))
    Ring();
  return done.version;
}

Result<std::optional<UpdateInfo>> NetClient::ReadIfNewer(AttrId attr, uint64_t have,
                                                         FunctionRef<Status(ByteSpan)> decode) {
  Replica* r = Find(attr);
  if (r == nullptr) return Status::InvalidArgument("unknown attribute id");
  if (r->version.load(std::memory_order_acquire) <= have) return std::optional<UpdateInfo>();
  std::shared_ptr<const Frame> frame;
  size_t offset;
  UpdateInfo info;
  {
    std::lock_guard<std::mutex> lock(r->mu);
    frame = r->frame;
    offset = r->offset;
    info = r->info;
  }
  if (info.version <= have || !frame) return std::optional<UpdateInfo>();
  EASYSYNC_RETURN_IF_ERROR(decode(ByteSpan(*frame).subspan(offset)));
  return std::optional<UpdateInfo>(info);
}

bool NetClient::WaitUntil(FunctionRef<bool()> ready, Deadline deadline) {
  if (ready()) return true;
  const Deadline spin_until = std::min(deadline, Clock::now() + options_.spin);
  while (Clock::now() < spin_until) {
    if (ready()) return true;
  }
  std::unique_lock<std::mutex> lock(wait_mu_);
  waiters_.fetch_add(1, std::memory_order_seq_cst);
  bool ok;
  for (;;) {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if ((ok = ready()) || Clock::now() >= deadline) break;
    wait_cv_.wait_until(lock, deadline);
  }
  waiters_.fetch_sub(1, std::memory_order_seq_cst);
  return ok;
}

}  // namespace

Result<std::shared_ptr<Client>> TryConnectWithVersion(const NetOptions& options, uint16_t version) {
  auto client = std::make_shared<NetClient>(options, version);
  EASYSYNC_RETURN_IF_ERROR(client->Connect());
  return std::shared_ptr<Client>(std::move(client));
}

}  // namespace easysync::net

namespace easysync {

Result<std::shared_ptr<Client>> TryConnect(const NetOptions& options) {
  return net::TryConnectWithVersion(options, net::kProtocolVersion);
}

std::shared_ptr<Client> connect(const NetOptions& options) {
  return ValueOrThrow(TryConnect(options));
}

}  // namespace easysync
