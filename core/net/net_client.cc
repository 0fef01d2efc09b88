// The network client: a local replica of each declared attribute, fed by the hub.
//
// Reads never leave the process. The UCX progress thread applies UPDATEs to the replicas
// (swapping in the received frame, which readers share: a reader sees a whole value) and
// rings the bell waiters sleep on. Declare and Write wait for the hub's answer.
#include "net/net_client.h"

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>

#include "easysync/device_codec.h"
#include "net/protocol.h"
#include "net/ucx_worker.h"
#include "net/udp_socket.h"
#include "net/udp_wire.h"
#include "net/wire_value.h"

namespace easysync::net {
namespace {

constexpr uint32_t kMaxAttributes = 1u << 16;
// Datagram writes not acknowledged, and REGISTER until answered, go again this often.
constexpr int64_t kUdpResendNs = 20'000'000;
// How long a received value's ACK may wait to go with others (under kUdpResendNs).
constexpr int64_t kAckDelayNs = 10'000'000;

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

  uint32_t id() const override { return id_.load(std::memory_order_relaxed); }
  const std::string& cluster() const override { return cluster_; }
  Result<AttrId> Declare(std::string_view object, std::string_view attribute, ValueKind kind,
                         const Initial* initial, Transport transport) override;
  using Client::Declare;
  Result<uint64_t> Write(AttrId attr, size_t size, FunctionRef<void(std::byte*)> encode) override;
  Result<uint64_t> WriteTensor(AttrId attr, const TensorView& view) override;
  // Tests: the UDP socket's local port and the datagram key (after the handshake).
  uint16_t udp_port_for_tests() {
    uint16_t port = 0;
    RunOnProgressThread([&] { port = udp_ ? udp_->local_port() : 0; });
    return port;
  }
  udp::Key udp_key_for_tests() {
    udp::Key key{};
    RunOnProgressThread([&] { key = udp_key_; });
    return key;
  }
  // Tests: host tensors take the device path too, on the kernels' host twins.
  void set_device_path_for_host_tensors(bool on) { device_path_for_host_ = on; }
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
  void OnOversize(ucp_ep_h ep, size_t bytes) override {
    if (ep != ep_) return;
    Lost(Status::ResourceExhausted("the hub sent a message of " + std::to_string(bytes) +
                                   " bytes, over max_message_bytes"));
  }
  void OnEndpointError(ucp_ep_h ep, ucs_status_t status) override {
    if (ep != ep_) return;  // an endpoint given up already
    Lost(Status::Unavailable("connection to the hub at " + cluster_ +
                             " failed: " + ucs_status_string(status)));
  }
  int OnIdle() override;

 private:
  // One attribute's local replica. Its value is raw (what shared-memory mode stores):
  // holder's bytes from offset on, shared with readers that copy the pointer.
  struct Replica {
    ValueKind kind = ValueKind::kBool;
    std::string object, attribute;  // to declare it again after a reconnect
    std::atomic<uint32_t> hub_id{0};
    std::atomic<uint64_t> version{0};
    std::mutex mu;  // guards the fields below
    std::shared_ptr<Frame> holder;
    size_t offset = 0;
    UpdateInfo info;
    std::optional<uint64_t> data_hash;  // XXH3-64 of a tensor's data, when verified
    // Written while disconnected: info.version is provisional, the value not yet sent.
    bool dirty = false;
    bool resync_requested = false;  // a whole value was asked for; deltas wait for it
    std::shared_ptr<Frame> spare;   // a former value buffer, reused for the next one
    // Writes of device tensors: the delta is computed where the tensor lives.
    std::mutex device_mu;  // guards device, device_acked; taken before mu
    std::unique_ptr<codec::DeviceEncoder> device;
    uint64_t device_acked = 0;  // the hub's version of the device encoder's base
    // Best effort: this attribute's updates come as UDP datagrams, and its writes go as them.
    bool udp = false;
    // The last write sent by datagram and not yet acknowledged (guarded by mu): it is sent
    // again until the hub's ACK says which version it got.
    std::shared_ptr<Frame> udp_pending;
    size_t udp_pending_offset = 0;
    uint64_t udp_seq = 0;  // the writer's own sequence of datagram writes
    UpdateInfo udp_pending_info;
    // A tensor write may go as a delta against the version the hub gave this client's last
    // acknowledged write (udp_acked_version), if nothing came since; dropped if the hub
    // answers that it no longer holds that base.
    std::shared_ptr<const std::vector<std::byte>> udp_pending_delta;
    uint64_t udp_acked_version = 0;
    int64_t udp_pending_sent_ns = 0;  // when the pending write was last sent

    ByteSpan value() const { return holder ? ByteSpan(*holder).subspan(offset) : ByteSpan(); }
  };
  struct Pending {
    bool done = false;
    Status status;
    bool lost = false;        // the connection went down before the answer
    bool stale_base = false;  // the hub did not hold the base of a delta
    // DECLARE: what the replica is; the answer's local index.
    ValueKind kind = ValueKind::kBool;
    std::string object, attribute;
    bool udp = false;
    uint32_t local = 0;
    // WRITE: the answer.
    uint64_t version = 0, clock = 0;
    // Requests the progress thread makes while resyncing (answered there, never waited on).
    bool internal = false;
    std::shared_ptr<Frame> value;  // an internal WRITE's raw value
    size_t value_offset = 0;
  };
  enum class State { kConnecting, kReady, kReconnecting, kResyncing, kFailed };

  Replica* Find(AttrId attr) const {
    return attr.index < kMaxAttributes ? replicas_[attr.index].load(std::memory_order_acquire)
                                       : nullptr;
  }
  // Installs a value if it is newer than the replica's. Returns whether it was. A value from
  // the hub (local = false) never replaces a write kept while disconnected: that write is
  // sent after the resync and wins.
  bool Apply(Replica& r, std::shared_ptr<Frame> holder, size_t offset, UpdateInfo info,
             std::optional<uint64_t> hash, bool local = false);
  // REQUIRES: r.mu held.
  void Install(Replica& r, std::shared_ptr<Frame> holder, size_t offset, const UpdateInfo& info,
               std::optional<uint64_t> hash);
  // A buffer of `bytes` for a new value of r: its spare when free, else a new one.
  std::shared_ptr<Frame> Buffer(Replica& r, size_t bytes);
  void OnUpdate(const Update& m, std::shared_ptr<Frame> frame);
  void RequestResync(Replica& r);  // REQUIRES: r.mu held
  void OnDeclared(const Declared& m, std::shared_ptr<Frame> frame);
  void OnWritten(const Written& m);
  void OnError(const ErrorMsg& m);
  void OnPong(const Pong& m);
  void Ring();
  // A failure the client cannot recover from: every pending and later request fails.
  void Fail(Status status);
  // The connection is gone: reconnect (unless that is off or it never worked).
  void Lost(Status status);
  void ScheduleReconnect();
  void TryReconnect();
  void StartResync();
  void FinishResync();
  void SendFrame(std::shared_ptr<const Frame> frame);
  // Sends a request and waits for its answer. REQUIRES: not on the progress thread.
  // Pending::lost when the connection is down or went down before the answer.
  Result<Pending> Request(uint32_t id, Pending p, std::shared_ptr<const Frame> frame,
                          std::string_view what);
  uint32_t NextRequest() {
    std::lock_guard<std::mutex> lock(mu_);
    return next_request_++;
  }
  // Keeps a write made while disconnected; returns its provisional version.
  uint64_t QueueDirty(Replica& r, std::shared_ptr<Frame> holder, size_t offset, uint64_t clock,
                      int64_t now);
  // Encodes a codec WRITE of the raw value against the replica's acknowledged value (or
  // whole); *hash gets the XXH3-64 of the tensor data (the next write's base hash).
  Result<std::shared_ptr<const Frame>> EncodeTensorWrite(Replica& r, uint32_t request, ByteSpan raw,
                                                         uint64_t clock, int64_t now, bool whole,
                                                         std::optional<uint64_t>* hash);
  // The UDP path (progress thread).
  void StartUdp();
  bool OnUdp();
  void HandleDatagram(ByteSpan datagram);
  void SendDatagram(udp::Datagram& d);
  void SendOwedAcks();
  void OnUdpAck(const udp::Ack& ack);
  // Sends r's pending write by datagrams.
  void SendUdpWrite(Replica& r);
  // Keeps a write of a UDP attribute: shown at once with a provisional version, sent by
  // datagrams until acknowledged. Returns the provisional version.
  uint64_t WriteUdp(Replica& r, std::shared_ptr<Frame> holder, size_t offset, uint64_t clock,
                    int64_t now);
  // Runs fn on the progress thread and waits for it.
  void RunOnProgressThread(const std::function<void()>& fn) {
    std::promise<void> done;
    worker_->Post([&] {
      fn();
      done.set_value();
    });
    done.get_future().wait();
  }
  int64_t ToLocal(int64_t hub_ns) const {
    return hub_ns - offset_ns_.load(std::memory_order_relaxed);
  }
  int64_t ToHub(int64_t local_ns) const {
    return local_ns + offset_ns_.load(std::memory_order_relaxed);
  }

  NetOptions options_;
  uint16_t version_;
  std::string cluster_;
  std::unique_ptr<UcxWorker> worker_;
  std::atomic<uint32_t> id_{0};
  std::atomic<int64_t> offset_ns_{0};                        // hub clock minus ours
  std::atomic<uint64_t> hub_max_message_bytes_{UINT64_MAX};  // from WELCOME
  // The largest message both ends accept.
  uint64_t MaxMessageBytes() const {
    return std::min<uint64_t>(options_.max_message_bytes, hub_max_message_bytes_.load());
  }
  std::atomic<uint64_t> clock_{0};

  // Progress thread only:
  ucp_ep_h ep_ = nullptr;
  Nonce nonce_{}, hub_nonce_{};
  int64_t auth_sent_ns_ = 0;
  int64_t attempt_started_ns_ = 0;  // when the current connection attempt began
  int64_t next_attempt_ns_ = 0;     // when to try again while reconnecting (0: not scheduled)
  int attempts_ = 0;                // failed attempts since the connection was lost
  int64_t last_heard_ns_ = 0;
  int64_t next_ping_ns_ = 0;
  int pings_ = 0;
  int64_t best_rtt_ns_ = 0;  // of the PONG the clock offset was taken from
  int64_t best_rtt_at_ns_ = 0;
  size_t resync_outstanding_ = 0;
  std::unordered_map<uint32_t, uint32_t> by_hub_;
  codec::Decoder decoder_;
  std::optional<UdpSocket> udp_;
  std::atomic<bool> udp_ready_{false};  // registered: datagram writes may go
  udp::Key udp_key_{};
  udp::ReplayWindow udp_replay_;
  uint64_t udp_counter_ = 0;
  bool udp_registered_ = false;
  int64_t next_udp_ns_ = 0;  // next REGISTER or resend of pending writes
  // ACKs of received values are sent a little later, together: an ACK only stops resends
  // (20 ms apart) and names a delta base, and sending it at once would wake the hub while
  // the value's reader still needs the CPU.
  std::set<uint32_t> acks_owed_;  // hub attribute ids
  int64_t acks_due_ns_ = 0;       // 0: none owed
  udp::Reassembler reassembler_{udp::kMaxValueBytes};

  std::unique_ptr<std::atomic<Replica*>[]> replicas_;
  std::atomic<uint32_t> count_{0};

  std::atomic<bool> device_path_for_host_{false};
  std::mutex encode_mu_;  // guards encoder_ and scratch_
  codec::Encoder encoder_;
  std::unique_ptr<std::byte[]> scratch_;
  size_t scratch_bytes_ = 0;
  // The scratch buffer, at least `bytes` long. REQUIRES: encode_mu_ held.
  std::byte* Scratch(size_t bytes) {
    if (scratch_bytes_ < bytes) {
      scratch_.reset(new std::byte[bytes]);  // uninitialized: encoders write what they use
      scratch_bytes_ = bytes;
    }
    return scratch_.get();
  }

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
  worker_->Post([this] {
    attempt_started_ns_ = last_heard_ns_ = MonotonicNanos();
    nonce_ = RandomNonce();
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
  if (ep_ == nullptr) return;
  CounterShard& c = shard();
  Count(c.bytes_sent, frame->size());
  Count(c.packets_sent, 1);
  worker_->Send(ep_, std::move(frame));
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
  std::fprintf(stderr, "easysync: %s\n", status.ToString().c_str());
  cv_.notify_all();
  if (ep_ != nullptr) worker_->Close(ep_, /*flush=*/false);
  ep_ = nullptr;
  next_attempt_ns_ = 0;
  Ring();
}

void NetClient::Lost(Status status) {
  bool reconnect;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ == State::kFailed) return;
    // The first connection reports its failure to connect()'s caller instead.
    reconnect = options_.reconnect && state_ != State::kConnecting;
    if (reconnect) {
      if (state_ == State::kReady || state_ == State::kResyncing) {
        std::fprintf(stderr, "easysync: %s; reconnecting\n", status.ToString().c_str());
      }
      state_ = State::kReconnecting;
      for (auto it = pending_.begin(); it != pending_.end();) {
        if (it->second.internal) {
          it = pending_.erase(it);
          continue;
        }
        if (!it->second.done) {
          it->second.done = true;
          it->second.lost = true;
          it->second.status = status;
        }
        ++it;
      }
    }
  }
  if (!reconnect) return Fail(status);
  cv_.notify_all();
  if (ep_ != nullptr) worker_->Close(ep_, /*flush=*/false);
  ep_ = nullptr;
  resync_outstanding_ = 0;
  by_hub_.clear();
  udp_registered_ = false;
  udp_ready_.store(false);
  reassembler_ = udp::Reassembler(udp::kMaxValueBytes);
  acks_owed_.clear();
  acks_due_ns_ = 0;
  // Datagram writes not acknowledged yet are kept like any write made while disconnected.
  const uint32_t n = count_.load();
  for (uint32_t i = 0; i < n; ++i) {
    Replica& r = *replicas_[i].load();
    std::lock_guard<std::mutex> lock(r.mu);
    if (!r.udp_pending) continue;
    UpdateInfo info = r.udp_pending_info;
    info.version = r.info.version + 1;
    Install(r, std::move(r.udp_pending), r.udp_pending_offset, info, std::nullopt);
    r.dirty = true;
  }
  ScheduleReconnect();
}

void NetClient::ScheduleReconnect() {
  const int64_t min_ns = options_.reconnect_backoff_min.count() * 1'000'000;
  const int64_t max_ns = std::max(min_ns, options_.reconnect_backoff_max.count() * 1'000'000);
  int64_t delay = min_ns;
  for (int i = 0; i < attempts_ && delay < max_ns; ++i) delay *= 2;
  delay = std::min(delay, max_ns);
  // +-20% jitter, so that clients of a restarted hub do not all come back at once.
  const Nonce r = RandomNonce();
  const double jitter = 0.8 + 0.4 * (static_cast<double>(r[0]) / 255.0);
  next_attempt_ns_ = MonotonicNanos() + static_cast<int64_t>(static_cast<double>(delay) * jitter);
  ++attempts_;
}

void NetClient::TryReconnect() {
  next_attempt_ns_ = 0;
  auto ep = worker_->Connect(options_.host, options_.port);
  if (!ep.ok()) return ScheduleReconnect();
  ep_ = *ep;
  attempt_started_ns_ = last_heard_ns_ = MonotonicNanos();
  nonce_ = RandomNonce();
  SendFrame(std::make_shared<const Frame>(Encode(Hello{version_, nonce_})));
}

int NetClient::OnIdle() {
  const int64_t now = MonotonicNanos();
  State state;
  {
    std::lock_guard<std::mutex> lock(mu_);
    state = state_;
  }
  int64_t wake = INT64_MAX;
  if (state == State::kReconnecting) {
    if (ep_ == nullptr) {
      if (next_attempt_ns_ != 0 && now >= next_attempt_ns_) TryReconnect();
      if (next_attempt_ns_ != 0) wake = next_attempt_ns_;
    } else if (now - attempt_started_ns_ > options_.connect_timeout.count() * 1'000'000) {
      worker_->Close(ep_, /*flush=*/false);
      ep_ = nullptr;
      ScheduleReconnect();
      wake = next_attempt_ns_;
    } else {
      wake = now + 20'000'000;
    }
  } else if ((state == State::kReady || state == State::kResyncing) && ep_ != nullptr) {
    const auto active = worker_->last_activity().time_since_epoch();
    const int64_t heard = std::max(
        last_heard_ns_, std::chrono::duration_cast<std::chrono::nanoseconds>(active).count());
    if (now - heard > options_.keepalive_timeout.count() * 1'000'000) {
      Lost(Status::Unavailable("the hub at " + cluster_ + " has been silent for " +
                               std::to_string(options_.keepalive_timeout.count()) + " ms"));
      return 1;
    }
    if (now >= next_ping_ns_) {
      SendFrame(std::make_shared<const Frame>(Encode(Ping{now})));
      // A few quick samples first: the clock offset comes from the fastest round trip.
      next_ping_ns_ = now + (++pings_ < 4 ? int64_t{20'000'000}
                                          : options_.keepalive_interval.count() * 1'000'000);
    }
    wake = next_ping_ns_;
    if (udp_ && now >= next_udp_ns_) {
      bool pending = false;
      if (!udp_registered_) {
        udp::Datagram d;
        d.type = udp::Type::kRegister;
        SendDatagram(d);
        pending = true;
      }
      const uint32_t n = count_.load();
      for (uint32_t i = 0; i < n; ++i) {
        Replica& r = *replicas_[i].load();
        if (!r.udp) continue;
        bool has, due;
        {
          std::lock_guard<std::mutex> lock(r.mu);
          has = r.udp_pending != nullptr;
          due = has && now - r.udp_pending_sent_ns >= kUdpResendNs;
        }
        if (due) SendUdpWrite(r);  // not acknowledged for a while: again
        pending = pending || has;
      }
      next_udp_ns_ = pending ? now + kUdpResendNs : INT64_MAX;
    }
    wake = std::min(wake, next_udp_ns_);
    if (acks_due_ns_ != 0 && now >= acks_due_ns_) SendOwedAcks();
    if (acks_due_ns_ != 0) wake = std::min(wake, acks_due_ns_);
  } else {
    return -1;
  }
  return static_cast<int>(std::clamp<int64_t>((wake - now) / 1'000'000 + 1, 1, 1000));
}

std::shared_ptr<Frame> NetClient::Buffer(Replica& r, size_t bytes) {
  std::shared_ptr<Frame> b;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    b = std::move(r.spare);
  }
  if (b && b.use_count() == 1 && b->size() == bytes) return b;
  b = std::make_shared<Frame>();
  b->resize(bytes);
  return b;
}

void NetClient::Install(Replica& r, std::shared_ptr<Frame> holder, size_t offset,
                        const UpdateInfo& info, std::optional<uint64_t> hash) {
  if (r.holder && r.offset == 0 && r.holder != holder) r.spare = std::move(r.holder);
  r.holder = std::move(holder);
  r.offset = offset;
  r.info = info;
  r.info.bytes = r.holder->size() - offset;
  r.data_hash = hash;
  r.dirty = false;
  r.resync_requested = false;
  r.version.store(info.version, std::memory_order_release);
}

bool NetClient::Apply(Replica& r, std::shared_ptr<Frame> holder, size_t offset, UpdateInfo info,
                      std::optional<uint64_t> hash, bool local) {
  uint64_t c = clock_.load(std::memory_order_relaxed);
  while (c < info.clock && !clock_.compare_exchange_weak(c, info.clock)) {
  }
  std::lock_guard<std::mutex> lock(r.mu);
  if (info.version <= r.info.version || (r.dirty && !local)) return false;
  Install(r, std::move(holder), offset, info, hash);
  return true;
}

void NetClient::RequestResync(Replica& r) {
  if (r.resync_requested) return;
  r.resync_requested = true;
  Count(shard().resyncs, 1);
  SendFrame(std::make_shared<const Frame>(Encode(Resync{r.hub_id.load()})));
}

void NetClient::OnUpdate(const Update& m, std::shared_ptr<Frame> frame) {
  auto it = by_hub_.find(m.attr_id);
  if (it == by_hub_.end()) return;  // not declared here (yet)
  Replica& r = *replicas_[it->second].load();
  const UpdateInfo info{m.version, m.clock, m.writer, ToLocal(m.write_ns), 0};
  if (!m.codec) {
    if (Apply(r, std::move(frame), kUpdateValueOffset, info, std::nullopt)) Ring();
    return;
  }
  CounterShard& c = shard();
  auto peek = PeekCodecValue(m.value);
  if (!peek.ok() || r.kind != ValueKind::kTensor) {
    std::lock_guard<std::mutex> lock(r.mu);
    return RequestResync(r);
  }
  uint64_t c0 = clock_.load(std::memory_order_relaxed);
  while (c0 < m.clock && !clock_.compare_exchange_weak(c0, m.clock)) {
  }
  if (peek->frame.is_full_value()) {
    auto out = Buffer(r, peek->raw_bytes);
    if (!DecodeCodecValue(decoder_, m.value, {}, std::nullopt, *out).ok()) {
      std::lock_guard<std::mutex> lock(r.mu);
      return RequestResync(r);
    }
    Count(c.full_recv, 1);
    if (Apply(r, std::move(out), 0, info, peek->frame.result_hash)) Ring();
    return;
  }
  // A delta: against exactly the replica's value, or not at all.
  std::unique_lock<std::mutex> lock(r.mu);
  if (m.version <= r.info.version) return;
  if (r.resync_requested) return;  // the whole value is on its way
  if (r.dirty || peek->frame.base_version != r.info.version ||
      r.value().size() != peek->raw_bytes) {
    return RequestResync(r);
  }
  Status st;
  if (r.holder.use_count() == 1) {
    // No reader holds the value: apply in place (on failure it is left as it was).
    const auto v = std::span<std::byte>(*r.holder).subspan(r.offset);
    st = DecodeCodecValue(decoder_, m.value, v, r.data_hash, v);
    if (st.ok()) Install(r, r.holder, r.offset, info, peek->frame.result_hash);
  } else {
    std::shared_ptr<Frame> base = r.holder;
    const size_t base_offset = r.offset;
    const std::optional<uint64_t> base_hash = r.data_hash;
    std::shared_ptr<Frame> out = std::move(r.spare);
    lock.unlock();
    if (!out || out.use_count() != 1 || out->size() != peek->raw_bytes) {
      out = std::make_shared<Frame>();
      out->resize(peek->raw_bytes);
    }
    st = DecodeCodecValue(decoder_, m.value, ByteSpan(*base).subspan(base_offset), base_hash, *out);
    lock.lock();
    // Only this thread installs received values, but a local write may have come in between.
    if (st.ok() && r.info.version == peek->frame.base_version && !r.dirty) {
      Install(r, std::move(out), 0, info, peek->frame.result_hash);
    } else if (st.ok()) {
      return;  // superseded by a local write; the hub orders the two
    }
  }
  if (!st.ok()) return RequestResync(r);
  Count(c.deltas_recv, 1);
  lock.unlock();
  Ring();
}

void NetClient::OnDeclared(const Declared& m, std::shared_ptr<Frame> frame) {
  Pending p;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(m.request_id);
    if (it == pending_.end()) return;  // timed out or lost
    p = it->second;
  }
  uint32_t local;
  if (p.internal) {
    local = p.local;  // re-declared after a reconnect: the hub's id may have changed
  } else if (auto it = by_hub_.find(m.attr_id); it != by_hub_.end()) {
    local = it->second;
  } else {
    local = count_.load();
    if (local >= kMaxAttributes) {
      return Fail(Status::ResourceExhausted("more than 65536 attributes declared"));
    }
    auto* r = new Replica;
    r->kind = p.kind;
    r->object = p.object;
    r->attribute = p.attribute;
    r->udp = p.udp;
    replicas_[local].store(r, std::memory_order_release);
    count_.store(local + 1);
  }
  Replica& r = *replicas_[local].load();
  r.hub_id.store(m.attr_id);
  by_hub_[m.attr_id] = local;
  if (m.version > 0 &&
      Apply(r, std::move(frame), kDeclaredValueOffset,
            UpdateInfo{m.version, m.clock, m.writer, ToLocal(m.write_ns), 0}, std::nullopt)) {
    Ring();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(m.request_id);
    if (it == pending_.end()) return;
    if (it->second.internal) {
      pending_.erase(it);
    } else {
      it->second.done = true;
      it->second.local = local;
    }
  }
  if (p.internal) {
    if (--resync_outstanding_ == 0) FinishResync();
    return;
  }
  cv_.notify_all();
}

void NetClient::OnWritten(const Written& m) {
  Pending p;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(m.request_id);
    if (it == pending_.end()) return;
    if (!it->second.internal) {
      it->second.done = true;
      it->second.version = m.version;
      it->second.clock = m.clock;
      cv_.notify_all();
      return;
    }
    p = std::move(it->second);
    pending_.erase(it);
  }
  // A write kept while disconnected, now ordered by the hub.
  Replica& r = *replicas_[p.local].load();
  if (Apply(r, std::move(p.value), p.value_offset,
            UpdateInfo{m.version, m.clock, id(), MonotonicNanos(), 0}, std::nullopt,
            /*local=*/true)) {
    Ring();
  }
}

void NetClient::OnError(const ErrorMsg& m) {
  Status st = ErrorToStatus(m.code, m.text);
  if (m.fatal) {
    // A hub that rejects our token or protocol will not accept us on a retry either.
    if (m.code == ErrorCode::kAuthFailed || m.code == ErrorCode::kVersionMismatch) return Fail(st);
    return Lost(st);
  }
  bool internal = false;
  Pending p;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(m.request_id);
    if (it == pending_.end()) return;
    if (it->second.internal) {
      internal = true;
      p = std::move(it->second);
      pending_.erase(it);
    } else {
      it->second.done = true;
      it->second.status = st;
      it->second.stale_base = m.code == ErrorCode::kStaleBase;
    }
  }
  if (!internal) {
    cv_.notify_all();
    return;
  }
  std::fprintf(stderr, "easysync: while resyncing with %s: %s\n", cluster_.c_str(),
               st.ToString().c_str());
  if (p.value) {
    // The hub refused a write kept while disconnected: take the hub's value instead.
    Replica& r = *replicas_[p.local].load();
    std::lock_guard<std::mutex> lock(r.mu);
    r.dirty = false;
    r.resync_requested = false;
    return RequestResync(r);
  }
  if (resync_outstanding_ > 0 && --resync_outstanding_ == 0) FinishResync();
}

void NetClient::OnPong(const Pong& m) {
  const int64_t now = MonotonicNanos();
  const int64_t rtt = now - m.client_ns;
  if (rtt < 0 || m.client_ns == 0) return;
  auto& c = counters();
  const int64_t old = c.rtt_ewma_ns.load(std::memory_order_relaxed);
  c.rtt_ewma_ns.store(old == 0 ? rtt : old + (rtt - old) / 8, std::memory_order_relaxed);
  // The offset estimate is off by at most half the round trip it came from: keep the one
  // from the fastest recent round trip (older than a minute, any new one replaces it).
  if (best_rtt_ns_ == 0 || rtt <= best_rtt_ns_ || now - best_rtt_at_ns_ > 60'000'000'000) {
    best_rtt_ns_ = rtt;
    best_rtt_at_ns_ = now;
    offset_ns_.store(m.hub_ns - (m.client_ns + now) / 2, std::memory_order_relaxed);
  }
}

void NetClient::StartResync() {
  // Re-declare every attribute, bringing back the value held (and any write kept while
  // disconnected): the hub takes it when it is newer than its own, e.g. after a restart.
  std::vector<std::pair<uint32_t, Frame>> frames;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const uint32_t n = count_.load();
    for (uint32_t i = 0; i < n; ++i) {
      Replica& r = *replicas_[i].load();
      const uint32_t request = next_request_++;
      net::Declare d{request, r.kind, false, r.object, r.attribute, {}, false, 0, 0, r.udp};
      std::lock_guard<std::mutex> rl(r.mu);
      // A write kept while disconnected is resumed at its provisional version too: then the
      // version the hub assigns when it is sent is above it, so versions never go back.
      if (r.info.version > 0 && r.value().size() + kHeaderBytes + 1024 <= MaxMessageBytes()) {
        d.has_initial = d.resume = true;
        d.version = r.info.version;
        d.clock = r.info.clock;
        d.initial = r.value();
      }
      Pending p;
      p.internal = true;
      p.local = i;
      pending_.emplace(request, std::move(p));
      frames.emplace_back(request, Encode(d));
    }
    resync_outstanding_ = frames.size();
  }
  for (auto& [request, f] : frames) SendFrame(std::make_shared<const Frame>(std::move(f)));
  if (frames.empty()) FinishResync();
}

void NetClient::FinishResync() {
  std::vector<Frame> writes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ != State::kResyncing) return;
    // Writes kept while disconnected go now: the hub orders them after everything it has,
    // so the last writer still wins. Under mu_, so a concurrent Write either was kept here
    // or sees kReady and sends itself.
    const uint32_t n = count_.load();
    for (uint32_t i = 0; i < n; ++i) {
      Replica& r = *replicas_[i].load();
      std::lock_guard<std::mutex> rl(r.mu);
      if (!r.dirty) continue;
      if (r.value().size() + kWriteValueOffset > MaxMessageBytes()) {
        std::fprintf(stderr,
                     "easysync: a write of %s.%s kept while disconnected is over the "
                     "hub's message limit; dropped\n",
                     r.object.c_str(), r.attribute.c_str());
        r.dirty = false;
        continue;
      }
      const uint32_t request = next_request_++;
      writes.push_back(Encode(net::Write{request, r.hub_id.load(), r.info.clock,
                                         ToHub(r.info.write_ns), r.value(), false}));
      Pending p;
      p.internal = true;
      p.local = i;
      p.value = r.holder;
      p.value_offset = r.offset;
      pending_.emplace(request, std::move(p));
    }
    state_ = State::kReady;
  }
  cv_.notify_all();
  for (auto& f : writes) SendFrame(std::make_shared<const Frame>(std::move(f)));
  Ring();
}

void NetClient::OnFrame(ucp_ep_h ep, Frame raw) {
  if (ep != ep_ || ep_ == nullptr) return;  // from a connection given up already
  last_heard_ns_ = MonotonicNanos();
  CounterShard& c = shard();
  Count(c.bytes_recv, raw.size());
  Count(c.packets_recv, 1);
  auto frame = std::make_shared<Frame>(std::move(raw));
  auto h = DecodeHeader(*frame, options_.max_message_bytes);
  if (!h.ok()) return Lost(Status::Corruption("bad message from the hub: " + h.status().message()));
  const ByteSpan payload = Payload(*frame);
  if (h->type == MsgType::kError) {
    auto m = DecodeError(payload);
    if (!m.ok()) return Lost(m.status());
    return OnError(*m);
  }
  if (h->version != kProtocolVersion) {
    return Fail(
        Status::InvalidArgument("the hub speaks protocol version " + std::to_string(h->version)));
  }
  switch (h->type) {
    case MsgType::kChallenge: {
      auto m = DecodeChallenge(payload);
      if (!m.ok()) return Lost(m.status());
      hub_nonce_ = m->nonce;
      // A first clock offset from the AUTH -> WELCOME round trip; PONGs refine it.
      auth_sent_ns_ = MonotonicNanos();
      SendFrame(std::make_shared<const Frame>(
          Encode(Auth{ComputeProof(options_.token, kClientProofLabel, nonce_, hub_nonce_)})));
      return;
    }
    case MsgType::kWelcome: {
      auto m = DecodeWelcome(payload);
      if (!m.ok()) return Lost(m.status());
      if (!ProofMatches(m->mac, ComputeProof(options_.token, kHubProofLabel, nonce_, hub_nonce_))) {
        return Fail(Status::PermissionDenied("the hub at " + cluster_ +
                                             " could not prove it knows the token"));
      }
      id_.store(m->client_id);
      hub_max_message_bytes_.store(m->max_message_bytes);
      StartUdp();
      const int64_t now = MonotonicNanos();
      offset_ns_.store(m->hub_time_ns - (auth_sent_ns_ + now) / 2);
      best_rtt_ns_ = now - auth_sent_ns_;
      best_rtt_at_ns_ = now;
      pings_ = 0;
      next_ping_ns_ = now;
      attempts_ = 0;
      bool resync = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (state_ == State::kConnecting) {
          state_ = State::kReady;
        } else if (state_ == State::kReconnecting) {
          state_ = State::kResyncing;
          resync = true;
        }
      }
      if (resync) {
        Count(c.reconnects, 1);
        std::fprintf(stderr, "easysync: reconnected to the hub at %s as client %u\n",
                     cluster_.c_str(), m->client_id);
        StartResync();
      }
      cv_.notify_all();
      return;
    }
    case MsgType::kDeclared: {
      auto m = DecodeDeclared(payload);
      if (!m.ok()) return Lost(m.status());
      return OnDeclared(*m, std::move(frame));
    }
    case MsgType::kWritten: {
      auto m = DecodeWritten(payload);
      if (!m.ok()) return Lost(m.status());
      return OnWritten(*m);
    }
    case MsgType::kUpdate: {
      auto m = DecodeUpdate(payload);
      if (!m.ok()) return Lost(m.status());
      m->codec = (h->flags & kFlagCodec) != 0;
      return OnUpdate(*m, std::move(frame));
    }
    case MsgType::kPong: {
      auto m = DecodePong(payload);
      if (!m.ok()) return Lost(m.status());
      return OnPong(*m);
    }
    default:
      return Lost(Status::Corruption("the hub sent an unexpected " +
                                     std::string(MsgTypeName(h->type)) + " message"));
  }
}

Result<NetClient::Pending> NetClient::Request(uint32_t id, Pending p,
                                              std::shared_ptr<const Frame> frame,
                                              std::string_view what) {
  if (frame->size() > MaxMessageBytes()) {
    return Status::ResourceExhausted(
        std::string(what) + " of " + std::to_string(frame->size()) +
        " bytes is over the message limit of " + std::to_string(MaxMessageBytes()) +
        " (the smaller of NetOptions::max_message_bytes and the hub's --max-message-bytes)");
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (state_ == State::kFailed) return failure_;
  if (state_ != State::kReady) {
    p.done = p.lost = true;
    p.status = Status::Unavailable("not connected to the hub at " + cluster_);
    return p;
  }
  pending_.emplace(id, std::move(p));
  worker_->Post([this, frame = std::move(frame)]() mutable { SendFrame(std::move(frame)); });
  const bool done =
      cv_.wait_for(lock, options_.request_timeout, [&] { return pending_.at(id).done; });
  Pending out = std::move(pending_.at(id));
  pending_.erase(id);
  if (!done) {
    return Status::Timeout("the hub at " + cluster_ + " did not answer " + std::string(what) +
                           " within " + std::to_string(options_.request_timeout.count()) + " ms");
  }
  if (!out.status.ok() && !out.lost && !out.stale_base) return out.status;
  return out;
}

Result<AttrId> NetClient::Declare(std::string_view object, std::string_view attribute,
                                  ValueKind kind, const Initial* initial, Transport transport) {
  EASYSYNC_RETURN_IF_ERROR(ValidName("object", object));
  EASYSYNC_RETURN_IF_ERROR(ValidName("attribute", attribute));
  std::vector<std::byte> value;
  if (initial != nullptr) {
    value.resize(initial->size);
    initial->encode(value.data());
  }
  const Deadline deadline = Clock::now() + options_.request_timeout;
  for (;;) {
    const uint32_t id = NextRequest();
    net::Declare m{
        id, kind, initial != nullptr, std::string(object), std::string(attribute), value, false, 0,
        0,  false};
    Pending p;
    p.kind = kind;
    p.object = object;
    p.attribute = attribute;
    p.udp = transport == Transport::kUdp;
    m.udp = p.udp;
    EASYSYNC_ASSIGN_OR_RETURN(
        Pending done, Request(id, std::move(p), std::make_shared<const Frame>(Encode(m)),
                              "DECLARE of " + std::string(object) + "." + std::string(attribute)));
    if (!done.lost) return AttrId{done.local};
    // Not connected: wait for the reconnect, then declare again.
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_until(lock, deadline,
                        [&] { return state_ == State::kReady || state_ == State::kFailed; })) {
      return Status::Unavailable("DECLARE of " + std::string(object) + "." +
                                 std::string(attribute) + ": " + done.status.message() +
                                 ", still after " +
                                 std::to_string(options_.request_timeout.count()) + " ms");
    }
    if (state_ == State::kFailed) return failure_;
  }
}

uint64_t NetClient::QueueDirty(Replica& r, std::shared_ptr<Frame> holder, size_t offset,
                               uint64_t clock, int64_t now) {
  std::lock_guard<std::mutex> lock(r.mu);
  UpdateInfo info{r.info.version + 1, clock, id(), now, 0};
  Install(r, std::move(holder), offset, info, std::nullopt);
  r.dirty = true;
  return info.version;
}

Result<std::shared_ptr<const Frame>> NetClient::EncodeTensorWrite(Replica& r, uint32_t request,
                                                                  ByteSpan raw, uint64_t clock,
                                                                  int64_t now, bool whole,
                                                                  std::optional<uint64_t>* hash) {
  std::shared_ptr<Frame> base;
  size_t base_offset = 0;
  uint64_t base_version = 0;
  std::optional<uint64_t> base_hash;
  if (!whole) {
    std::lock_guard<std::mutex> lock(r.mu);
    if (!r.dirty && r.info.version > 0) {
      base = r.holder;
      base_offset = r.offset;
      base_version = r.info.version;
      base_hash = r.data_hash;
    }
  }
  const ByteSpan base_value = base ? ByteSpan(*base).subspan(base_offset) : ByteSpan();
  std::lock_guard<std::mutex> lock(encode_mu_);
  const size_t bound = CodecValueBound(raw);
  if (bound == 0) return Status::InvalidArgument("not a valid tensor value");
  EASYSYNC_ASSIGN_OR_RETURN(EncodedValue e,
                            EncodeCodecValue(encoder_, raw, base_value, base_version, base_hash,
                                             base_version + 1, {Scratch(bound), bound}));
  CounterShard& c = shard();
  Count(c.codec_raw_bytes, raw.size());
  Count(c.codec_wire_bytes, e.bytes);
  Count(e.delta ? c.deltas_sent : c.full_sent, 1);
  *hash = e.result_hash;
  const std::byte* src = scratch_.get();
  return std::shared_ptr<const Frame>(std::make_shared<Frame>(
      EncodeWrite(net::Write{request, r.hub_id.load(), clock, ToHub(now), {}, /*codec=*/true},
                  e.bytes, [&](std::byte* dst) { std::memcpy(dst, src, e.bytes); })));
}

Result<uint64_t> NetClient::Write(AttrId attr, size_t size, FunctionRef<void(std::byte*)> encode) {
  Replica* r = Find(attr);
  if (r == nullptr) return Status::InvalidArgument("unknown attribute id");
  const int64_t now = MonotonicNanos();
  const uint64_t clock = clock_.load(std::memory_order_relaxed) + 1;
  if (r->udp && udp_ready_.load() && size <= udp::kMaxValueBytes) {
    auto holder = std::make_shared<Frame>(size);
    encode(holder->data());
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ == State::kFailed) return failure_;
    if (state_ != State::kReady) return QueueDirty(*r, std::move(holder), 0, clock, now);
    return WriteUdp(*r, std::move(holder), 0, clock, now);
  }
  const bool codec = UseCodec(r->kind, size);
  // The value as the replica keeps it: the WRITE frame itself for a raw value, or a buffer
  // of its own for a tensor (the frame carries a delta).
  std::shared_ptr<Frame> holder;
  size_t offset = 0;
  std::shared_ptr<const Frame> frame;
  std::optional<uint64_t> hash;
  uint32_t request = NextRequest();
  if (codec) {
    holder = Buffer(*r, size);
    encode(holder->data());
  } else {
    holder = std::make_shared<Frame>(EncodeWrite(
        net::Write{request, r->hub_id.load(), clock, ToHub(now), {}, false}, size, encode));
    offset = kWriteValueOffset;
    frame = holder;
  }
  for (bool whole = false;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (state_ == State::kFailed) return failure_;
      if (state_ != State::kReady) return QueueDirty(*r, std::move(holder), offset, clock, now);
    }
    if (codec) {
      EASYSYNC_ASSIGN_OR_RETURN(frame,
                                EncodeTensorWrite(*r, request, *holder, clock, now, whole, &hash));
    }
    EASYSYNC_ASSIGN_OR_RETURN(Pending done, Request(request, Pending{}, frame, "WRITE"));
    if (done.lost) {
      // Kept, and sent once the connection is back; or, when it is back already, sent again
      // now (the hub's attribute ids may have changed: the frame is made anew).
      request = NextRequest();
      if (!codec) {
        frame = std::make_shared<const Frame>(
            Encode(net::Write{request, r->hub_id.load(), clock, ToHub(now),
                              ByteSpan(*holder).subspan(offset), false}));
      }
      continue;
    }
    if (done.stale_base && !whole) {
      // Another write reached the hub first: our base is gone. Send the whole value.
      Count(shard().resyncs, 1);
      whole = true;
      request = NextRequest();
      continue;
    }
    if (!done.status.ok()) return done.status;
    Count(shard().updates_sent, 1);
    if (Apply(*r, std::move(holder), offset, UpdateInfo{done.version, done.clock, id(), now, 0},
              hash, /*local=*/true)) {
      Ring();
    }
    return done.version;
  }
}

Result<uint64_t> NetClient::WriteTensor(AttrId attr, const TensorView& view) {
  Replica* r = Find(attr);
  if (r == nullptr) return Status::InvalidArgument("unknown attribute id");
  const bool device = view.device == DeviceType::kCUDA || device_path_for_host_.load();
  if (!device || r->kind != ValueKind::kTensor || view.shape.size() > kMaxTensorDims) {
    return Client::WriteTensor(attr, view);
  }
  EASYSYNC_ASSIGN_OR_RETURN(size_t numel, ShapeNumel(view.shape));
  const size_t bytes = numel * DTypeSize(view.dtype);
  const size_t raw = detail::EncodedTensorSize(view.dtype, bytes);
  if (!UseCodec(r->kind, raw)) return Client::WriteTensor(attr, view);
  std::lock_guard<std::mutex> device_lock(r->device_mu);
  if (!r->device) {
    std::unique_ptr<codec::DeltaBackend> backend;
    if (view.device == DeviceType::kCUDA) {
      EASYSYNC_ASSIGN_OR_RETURN(backend, codec::MakeCudaDeltaBackend(view.stream));
    } else {
      backend = codec::MakeHostDeltaBackend();
    }
    r->device = std::make_unique<codec::DeviceEncoder>(std::move(backend));
  }
  codec::DeviceEncoder& dev = *r->device;
  const int64_t now = MonotonicNanos();
  const uint64_t clock = clock_.load(std::memory_order_relaxed) + 1;
  for (bool whole = false;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (state_ == State::kFailed) return failure_;
    }
    uint64_t base_version;
    {
      std::lock_guard<std::mutex> lock(r->mu);
      // The encoder's base is what this client last wrote; anything since (another writer, a
      // resync) makes the next frame whole.
      if (whole || r->dirty || r->info.version != r->device_acked) dev.Reset();
      base_version = r->info.version;
    }
    const uint32_t request = NextRequest();
    std::shared_ptr<const Frame> frame;
    {
      std::lock_guard<std::mutex> lock(encode_mu_);
      const size_t bound = detail::kTensorHeaderBytes + codec::EncodeBound(view.dtype, numel);
      std::byte* out = Scratch(bound);
      detail::EncodeTensorHeader(view.dtype, view.shape, out);
      auto n =
          dev.Encode(view.dtype, numel, static_cast<const uint8_t*>(view.data), base_version + 1,
                     {reinterpret_cast<uint8_t*>(out) + detail::kTensorHeaderBytes,
                      bound - detail::kTensorHeaderBytes});
      if (!n.ok()) {
        dev.Reset();
        return n.status();
      }
      const size_t value_bytes = detail::kTensorHeaderBytes + *n;
      auto info = PeekCodecValue({out, value_bytes});
      if (!info.ok()) return info.status();
      CounterShard& c = shard();
      Count(c.codec_raw_bytes, raw);
      Count(c.codec_wire_bytes, value_bytes);
      Count(info->frame.is_full_value() ? c.full_sent : c.deltas_sent, 1);
      frame = std::make_shared<const Frame>(
          EncodeWrite(net::Write{request, r->hub_id.load(), clock, ToHub(now), {}, /*codec=*/true},
                      value_bytes, [&](std::byte* dst) { std::memcpy(dst, out, value_bytes); }));
    }
    EASYSYNC_ASSIGN_OR_RETURN(Pending done, Request(request, Pending{}, frame, "WRITE"));
    if (done.lost || (done.stale_base && !whole)) {
      dev.Reset();
      if (done.stale_base) Count(shard().resyncs, 1);
      std::unique_lock<std::mutex> lock(mu_);
      if (state_ != State::kReady) {
        lock.unlock();
        // Disconnected: kept on the host like any write, sent after the reconnect.
        return Client::WriteTensor(attr, view);
      }
      whole = true;
      continue;
    }
    if (!done.status.ok()) {
      dev.Reset();
      return done.status;
    }
    Count(shard().updates_sent, 1);
    dev.Acknowledge(done.version);
    r->device_acked = done.version;
    // The replica keeps the value on the host: the encoder's shadow is exactly it.
    auto holder = Buffer(*r, raw);
    detail::EncodeTensorHeader(view.dtype, view.shape, holder->data());
    if (bytes != 0) {
      std::memcpy(holder->data() + detail::kTensorHeaderBytes, dev.shadow().data(), bytes);
    }
    if (Apply(*r, std::move(holder), 0, UpdateInfo{done.version, done.clock, id(), now, 0},
              dev.shadow_hash(), /*local=*/true)) {
      Ring();
    }
    return done.version;
  }
}

void NetClient::StartUdp() {
  udp_key_ = udp::DeriveKey(options_.token, nonce_, hub_nonce_);
  udp_replay_ = udp::ReplayWindow();
  udp_counter_ = 0;
  udp_registered_ = false;
  next_udp_ns_ = 0;
  if (udp_) return;
  auto sock = UdpSocket::Connect(options_.host, options_.port);
  if (!sock.ok()) {
    // UDP attributes then travel reliably: slower, never lost.
    std::fprintf(stderr, "easysync: no UDP path to %s (%s); UDP attributes go over UCX\n",
                 cluster_.c_str(), sock.status().ToString().c_str());
    return;
  }
  udp_.emplace(std::move(*sock));
  worker_->WatchFd(udp_->fd(), [this] { return OnUdp(); });
}

void NetClient::SendDatagram(udp::Datagram& d) {
  if (d.type == udp::Type::kData && !d.piggy_ack && !acks_owed_.empty()) {
    // An owed ACK rides along: no datagram (and no wake-up at the hub) of its own.
    const uint32_t attr_id = *acks_owed_.begin();
    acks_owed_.erase(acks_owed_.begin());
    if (acks_owed_.empty()) acks_due_ns_ = 0;
    auto it = by_hub_.find(attr_id);
    if (it != by_hub_.end()) {
      d.piggy_ack = true;
      d.ack = udp::Ack{attr_id, replicas_[it->second].load()->version.load(), 0};
    }
  }
  d.direction = udp::Direction::kClientToHub;
  d.client_id = id();
  d.counter = ++udp_counter_;
  std::array<std::byte, udp::kMaxDatagram> out;
  const size_t n = udp::Seal(udp_key_, d, out);
  if (n == 0) return;
  CounterShard& c = shard();
  Count(c.bytes_sent, n);
  Count(c.packets_sent, 1);
  udp_->Send(ByteSpan(out.data(), n));
}

void NetClient::SendUdpWrite(Replica& r) {
  if (!udp_) return;
  std::shared_ptr<Frame> holder;
  size_t offset;
  std::shared_ptr<const std::vector<std::byte>> delta;
  udp::DataHeader h;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    if (!r.udp_pending) return;
    holder = r.udp_pending;
    offset = r.udp_pending_offset;
    delta = r.udp_pending_delta;
    r.udp_pending_sent_ns = MonotonicNanos();
    h.seq = r.udp_seq;
    h.clock = r.udp_pending_info.clock;
    h.write_ns = ToHub(r.udp_pending_info.write_ns);
  }
  h.attr_id = r.hub_id.load();
  h.writer = id();
  h.codec = delta != nullptr;
  const ByteSpan value = delta ? ByteSpan(*delta) : ByteSpan(*holder).subspan(offset);
  (void)udp::Fragment(h, value, [&](const udp::Data& fragment) {
    udp::Datagram d;
    d.type = udp::Type::kData;
    d.data = fragment;
    SendDatagram(d);
  });
}

uint64_t NetClient::WriteUdp(Replica& r, std::shared_ptr<Frame> holder, size_t offset,
                             uint64_t clock, int64_t now) {
  uint64_t version;
  std::shared_ptr<const std::vector<std::byte>> delta;
  const ByteSpan value = ByteSpan(*holder).subspan(offset);
  if (UseCodec(r.kind, value.size())) {
    std::shared_ptr<Frame> base;
    size_t base_offset = 0;
    uint64_t base_version = 0;
    std::optional<uint64_t> base_hash;
    {
      std::lock_guard<std::mutex> lock(r.mu);
      if (!r.udp_pending && !r.dirty && r.info.version != 0 &&
          r.info.version == r.udp_acked_version) {
        base = r.holder;
        base_offset = r.offset;
        base_version = r.info.version;
        base_hash = r.data_hash;
      }
    }
    if (base) {
      std::lock_guard<std::mutex> lock(encode_mu_);
      const size_t bound = CodecValueBound(value);
      auto e = EncodeCodecValue(encoder_, value, ByteSpan(*base).subspan(base_offset), base_version,
                                base_hash, base_version + 1, {Scratch(bound), bound});
      if (e.ok() && e->delta) {
        delta = std::make_shared<const std::vector<std::byte>>(Scratch(bound),
                                                               Scratch(bound) + e->bytes);
        CounterShard& c = shard();
        Count(c.codec_raw_bytes, value.size());
        Count(c.codec_wire_bytes, e->bytes);
        Count(c.deltas_sent, 1);
      }
    }
  }
  {
    std::lock_guard<std::mutex> lock(r.mu);
    // Shown at once with a provisional version: the hub's version for it, when its ACK comes,
    // is at least this (the hub has given out no version this client has not seen + 1).
    const UpdateInfo info{r.info.version + 1, clock, id(), now, 0};
    Install(r, holder, offset, info, std::nullopt);
    r.udp_pending = std::move(holder);
    r.udp_pending_offset = offset;
    r.udp_pending_info = info;
    r.udp_pending_delta = std::move(delta);
    ++r.udp_seq;
    version = info.version;
  }
  Count(shard().updates_sent, 1);
  Replica* rp = &r;
  worker_->Post([this, rp] {
    SendUdpWrite(*rp);
    next_udp_ns_ = std::min(next_udp_ns_, MonotonicNanos() + kUdpResendNs);
  });
  Ring();
  return version;
}

bool NetClient::OnUdp() {
  std::array<std::byte, udp::kMaxDatagram + 1> buf;
  bool any = false;
  for (int i = 0; i < 256; ++i) {  // bounded: UCX gets its turn
    const auto n = udp_->Receive(buf, nullptr);
    if (!n) break;
    any = true;
    CounterShard& c = shard();
    Count(c.bytes_recv, *n);
    Count(c.packets_recv, 1);
    HandleDatagram(ByteSpan(buf.data(), *n));
  }
  return any;
}

void NetClient::OnUdpAck(const udp::Ack& ack) {
  auto it = by_hub_.find(ack.attr_id);
  if (it == by_hub_.end()) return;
  Replica& r = *replicas_[it->second].load();
  // Our write `seq` got version `version`: now it counts as that version.
  std::unique_lock<std::mutex> lock(r.mu);
  if (!r.udp_pending || ack.seq != r.udp_seq) return;  // an older write's ACK
  if (ack.version == 0) {
    // The hub no longer holds the delta's base: the same write goes again, whole.
    r.udp_pending_delta.reset();
    Count(shard().resyncs, 1);
    lock.unlock();
    SendUdpWrite(r);
    return;
  }
  r.udp_acked_version = ack.version;
  if (ack.version > r.info.version) {
    UpdateInfo info = r.udp_pending_info;
    info.version = ack.version;
    Install(r, std::move(r.udp_pending), r.udp_pending_offset, info, std::nullopt);
  }
  r.udp_pending.reset();
}

void NetClient::HandleDatagram(ByteSpan datagram) {
  CounterShard& c = shard();
  auto d = udp::Open(udp_key_, datagram, udp::Direction::kHubToClient, udp::kMaxValueBytes);
  if (!d.ok() || d->client_id != id()) {
    // Spoofed (no valid MAC under this connection's key) or malformed.
    Count(c.datagrams_dropped_bad, 1);
    return;
  }
  if (!udp_replay_.Accept(d->counter)) {
    // Authentic but seen before: duplicated on the way, or replayed.
    Count(c.datagrams_dropped_stale, 1);
    return;
  }
  if (d->type == udp::Type::kRegistered) {
    udp_registered_ = true;
    udp_ready_.store(true);
    return;
  }
  if (d->type == udp::Type::kAck || d->piggy_ack) OnUdpAck(d->ack);
  if (d->type != udp::Type::kData) return;
  const uint32_t attr_id = d->data.header.attr_id;
  auto it = by_hub_.find(attr_id);
  if (it == by_hub_.end()) return;
  Replica& r = *replicas_[it->second].load();
  if (d->type != udp::Type::kData) return;
  const uint64_t stale0 = reassembler_.stale(), incomplete0 = reassembler_.incomplete();
  auto done = reassembler_.Add(attr_id, d->data);
  Count(c.datagrams_dropped_stale, reassembler_.stale() - stale0);
  Count(c.fragments_incomplete, reassembler_.incomplete() - incomplete0);
  if (!done) return;
  const uint64_t before = r.version.load();
  auto frame = std::make_shared<Frame>(std::move(done->value));
  if (done->header.codec) {
    // A tensor delta against the version this client acknowledged (or a whole codec value):
    // applied only to exactly its base and kept only if its hash verifies, as on the
    // reliable path (which asks for the whole value when it cannot).
    Update u{attr_id,
             done->header.seq,
             done->header.clock,
             done->header.writer,
             done->header.write_ns,
             ByteSpan(*frame),
             /*codec=*/true};
    OnUpdate(u, frame);
  } else {
    const UpdateInfo info{done->header.seq, done->header.clock, done->header.writer,
                          ToLocal(done->header.write_ns), 0};
    if (Apply(r, std::move(frame), 0, info, std::nullopt)) Ring();
  }
  if (r.version.load() == before) {
    Count(c.datagrams_dropped_stale, 1);  // older than what is held: never applied
  }
  // Tell the hub what we hold, so it stops sending this value again: a tensor at once (the
  // hub's next delta needs this version as its base), anything else a little later.
  acks_owed_.insert(attr_id);
  if (UseCodec(r.kind, r.info.bytes)) {
    SendOwedAcks();
  } else if (acks_due_ns_ == 0) {
    acks_due_ns_ = MonotonicNanos() + kAckDelayNs;
  }
}

void NetClient::SendOwedAcks() {
  for (uint32_t attr_id : acks_owed_) {
    auto it = by_hub_.find(attr_id);
    if (it == by_hub_.end()) continue;
    udp::Datagram ack;
    ack.type = udp::Type::kAck;
    ack.ack.attr_id = attr_id;
    ack.ack.seq = replicas_[it->second].load()->version.load();
    SendDatagram(ack);
  }
  acks_owed_.clear();
  acks_due_ns_ = 0;
}

Result<std::optional<UpdateInfo>> NetClient::ReadIfNewer(AttrId attr, uint64_t have,
                                                         FunctionRef<Status(ByteSpan)> decode) {
  Replica* r = Find(attr);
  if (r == nullptr) return Status::InvalidArgument("unknown attribute id");
  if (r->version.load(std::memory_order_acquire) <= have) return std::optional<UpdateInfo>();
  std::shared_ptr<const Frame> holder;
  size_t offset;
  UpdateInfo info;
  {
    std::lock_guard<std::mutex> lock(r->mu);
    holder = r->holder;
    offset = r->offset;
    info = r->info;
  }
  if (info.version <= have || !holder) return std::optional<UpdateInfo>();
  EASYSYNC_RETURN_IF_ERROR(decode(ByteSpan(*holder).subspan(offset)));
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

uint16_t UdpPortForTests(Client& client) {
  auto* c = dynamic_cast<NetClient*>(&client);
  return c != nullptr ? c->udp_port_for_tests() : 0;
}

udp::Key UdpKeyForTests(Client& client) {
  auto* c = dynamic_cast<NetClient*>(&client);
  return c != nullptr ? c->udp_key_for_tests() : udp::Key{};
}

void SetDevicePathForHostTensors(Client& client, bool on) {
  if (auto* c = dynamic_cast<NetClient*>(&client)) c->set_device_path_for_host_tensors(on);
}

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
