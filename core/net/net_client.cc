// The network client: connection, handshake, reconnect and resync, requests, replicas and
// reliable writes (see net_client_impl.h).
#include "net/net_client.h"

#include <sched.h>

#include <span>
#include <tuple>

#include "net/admission.h"
#include "net/net_client_impl.h"

namespace easysync::net {
namespace {

Status ValidName(std::string_view what, std::string_view name) {
  if (name.empty() || name.size() > kMaxNameBytes || name.find('\0') != name.npos) {
    return Status::InvalidArgument(std::string(what) + " name '" + std::string(name) +
                                   "' must have 1 to 255 bytes and no NUL");
  }
  return Status::Ok();
}

// Timings that would make the client spin or give up at once are refused up front.
Status CheckOptions(const NetOptions& o) {
  using std::chrono::milliseconds;
  const auto bad = [](const std::string& why) {
    return Status::InvalidArgument("NetOptions: " + why);
  };
  if (o.connect_timeout <= milliseconds(0) || o.request_timeout <= milliseconds(0)) {
    return bad("connect_timeout and request_timeout must be positive");
  }
  if (o.keepalive_interval < milliseconds(1)) return bad("keepalive_interval must be >= 1 ms");
  if (o.keepalive_timeout <= o.keepalive_interval) {
    return bad("keepalive_timeout must be longer than keepalive_interval");
  }
  if (o.reconnect_backoff_min < milliseconds(1) ||
      o.reconnect_backoff_max < o.reconnect_backoff_min) {
    return bad("reconnect backoff must be >= 1 ms, its maximum no less than its minimum");
  }
  if (o.max_message_bytes < 1024) return bad("max_message_bytes must be >= 1024");
  if (o.encode_threads > 64) return bad("encode_threads must be <= 64");
  if (o.decode_threads > 64) return bad("decode_threads must be <= 64");
  return Status::Ok();
}

// How long a client waits for admission (net/admission.h) before it connects anyway: when
// it connects (at most half its connect_timeout), and when it reconnects (on the progress
// thread).
constexpr std::chrono::milliseconds kKnockLimit{2000};
constexpr std::chrono::milliseconds kReconnectKnockLimit{300};

}  // namespace

Status NetClient::Connect() {
  if (options_.token.empty()) {
    if (const char* env = std::getenv("EASYSYNC_TOKEN")) options_.token = env;
  }
  if (options_.token.empty()) {
    return Status::InvalidArgument(
        "no token: give the hub's token (NetOptions::token; in Python, connect(token=...)) or set "
        "EASYSYNC_TOKEN");
  }
  EASYSYNC_RETURN_IF_ERROR(CheckOptions(options_));
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
  // A hub takes TCP connections only from addresses that proved the token over UDP first
  // (net/admission.h). Without an answer the client tries anyway: the hub may admit every
  // address (--admission off, or this is a loopback address) and UDP be what is blocked.
  const auto deadline = std::chrono::steady_clock::now() + options_.connect_timeout;
  const Status admitted = admission::Knock(options_.host, options_.port, options_.token,
                                           std::min(options_.connect_timeout / 2, kKnockLimit));
  if (admitted.code() == StatusCode::kPermissionDenied) return admitted;
  EASYSYNC_ASSIGN_OR_RETURN(ep_, worker_->Connect(options_.host, options_.port));
  worker_->Start();
  worker_->Post([this] {
    attempt_started_ns_ = last_heard_ns_ = MonotonicNanos();
    nonce_ = RandomNonce();
    SendFrame(std::make_shared<const Frame>(Encode(Hello{version_, nonce_})));
  });
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_until(lock, deadline, [&] { return state_ != State::kConnecting; })) {
    return Status::Timeout("no answer from the hub at " + cluster_ + " within " +
                           std::to_string(options_.connect_timeout.count()) + " ms" +
                           (admitted.ok() ? "" : " (" + admitted.message() + ")"));
  }
  return state_ == State::kReady ? Status::Ok() : failure_;
}

void NetClient::SendFrame(std::shared_ptr<const Frame> frame, UcxWorker::SendDone done) {
  if (ep_ == nullptr || !worker_) return;  // (no worker: posted work run as it goes)
  CounterShard& c = shard();
  Count(c.bytes_sent, frame->size());
  Count(c.packets_sent, 1);
  worker_->Send(ep_, std::move(frame), std::move(done));
}

void NetClient::SendSplitFrame(std::shared_ptr<const Frame> head, const SegmentTail& tail,
                               std::function<void()> done) {
  if (ep_ == nullptr || !worker_) {
    done();
    return;
  }
  CounterShard& c = shard();
  Count(c.bytes_sent, head->size() + tail.bytes);
  Count(c.packets_sent, 1);
  worker_->SendSplit(
      ep_, std::move(head), tail.data, tail.bytes,
      tail.device ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST,
      [this, done = std::move(done)](ucs_status_t st) {
        // UCX reported CUDA memory it then failed to send from (a transport
        // that cannot read it): stage from now on. The write is sent again
        // after the reconnect that follows.
        if (st != UCS_OK && st != UCS_ERR_CANCELED && !device_direct_failed_.exchange(true)) {
          std::fprintf(stderr,
                       "easysync: UCX could not send from device memory (%s); "
                       "whole values are staged through the host from now on\n",
                       ucs_status_string(st));
        }
        done();
      });
}

void NetClient::ForgetDeviceBase(AttrId attr) {
  Replica* r = Find(attr);
  if (r == nullptr) return;
  std::lock_guard<std::mutex> lock(r->device_mu);
  if (r->device) r->device->Reset();
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
  if (ep_ != nullptr) worker_->Close(ep_);
  ep_ = nullptr;
  next_attempt_ns_ = 0;
  Ring();
}

void NetClient::SayGoodbye() {
  if (!worker_) return;
  worker_->SendLast(
      [this](const UcxWorker::SendDone& sent) -> size_t {
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (state_ != State::kReady && state_ != State::kResyncing) return 0;
          state_ = State::kFailed;
          failure_ = Status::Unavailable("the client is closed");
        }
        if (ep_ == nullptr) return 0;
        SendFrame(
            std::make_shared<const Frame>(Encode(ErrorMsg{ErrorCode::kShuttingDown, /*fatal=*/true,
                                                          0, "the client closed its connection"})),
            sent);
        return 1;
      },
      kGoodbyeLimit);
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
  if (ep_ != nullptr) worker_->Close(ep_);
  ep_ = nullptr;
  resync_outstanding_ = 0;
  by_hub_.clear();
  udp_registered_ = false;
  udp_ready_.store(false);
  reassembler_ = udp::Reassembler(udp::kMaxValueBytes);
  {
    std::lock_guard<std::mutex> lock(udp_mu_);
    acks_owed_.clear();
    acks_due_ns_ = 0;
  }
  // Datagram writes not acknowledged yet are kept like any write made while disconnected.
  const uint32_t n = count_.load();
  for (uint32_t i = 0; i < n; ++i) {
    Replica& r = *replicas_[i].load();
    std::lock_guard<std::mutex> lock(r.mu);
    // A whole value asked for on the lost connection will never come, and the resume step
    // installs only a newer version: deltas must not keep waiting for it.
    r.resync_requested = false;
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
  // Admission first, as in Connect, briefly: this thread waits meanwhile.
  const Status admitted =
      admission::Knock(options_.host, options_.port, options_.token, kReconnectKnockLimit);
  if (admitted.code() == StatusCode::kPermissionDenied) return Fail(admitted);
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
      worker_->Close(ep_);
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
    wake = std::min(wake, next_udp_ns_.load());
    int64_t acks_due;
    {
      std::lock_guard<std::mutex> lock(udp_mu_);
      if (acks_due_ns_ != 0 && now >= acks_due_ns_) SendOwedAcksLocked();
      acks_due = acks_due_ns_;
    }
    if (acks_due != 0) wake = std::min(wake, acks_due);
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
  if (detail::SoleOwner(b) && b->size() == bytes) return b;
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
  r.segment_hashes.clear();  // a segmented update sets them after
  r.incoming.reset();        // a segmented update still arriving is superseded
  r.in_flux = nullptr;       // the holder's bytes are its version's
  r.dirty = false;
  r.resync_requested = false;
  r.version.store(info.version, std::memory_order_release);
}

bool NetClient::Apply(Replica& r, std::shared_ptr<Frame> holder, size_t offset, UpdateInfo info,
                      std::optional<uint64_t> hash, bool local) {
  SeeClock(info.clock);
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

TaskQueue* NetClient::DecodeQueue() {
  std::call_once(decode_once_, [this] {
    // Automatic: every CPU the process may use, the progress thread's too (it mostly waits
    // meanwhile), but none with one CPU.
    const size_t cpus = OrderedPool::ThreadsForThisProcess(SIZE_MAX) + 1;
    const size_t threads = options_.decode_threads >= 0
                               ? static_cast<size_t>(options_.decode_threads)
                               : (cpus > 1 ? std::min(cpus, kMaxSegmentWorkers) : 0);
    if (threads == 0) return;  // the progress thread decodes
    for (size_t w = 0; w < threads; ++w) decoders_.push_back(std::make_unique<codec::Decoder>());
    decode_queue_ = std::make_unique<TaskQueue>(threads);
  });
  return decode_queue_.get();
}

void NetClient::AwaitDecodes(Replica& r, std::unique_lock<std::mutex>& lock) {
  r.decoded.wait(lock, [&r] { return !r.incoming || r.incoming->in_flight == 0; });
}

void NetClient::OnSegment(Replica& r, const Update& m, const UpdateInfo& info,
                          std::shared_ptr<Frame> frame) {
  auto s = PeekSegmentValue(m.value);
  std::unique_lock<std::mutex> lock(r.mu);
  if (!s.ok() || r.kind != ValueKind::kTensor) {
    r.incoming.reset();
    return RequestResync(r);
  }
  SeeClock(m.clock);
  const bool delta = !s->info.is_full_value();
  if (s->index == 0) {
    AwaitDecodes(r, lock);  // the update before may still be decoding: it may be the base
    r.incoming.reset();
    if (m.version <= r.info.version || r.resync_requested) return;
    if (r.dirty || r.holder_in_flux() || r.value().size() != s->raw_bytes ||
        !SameTensorHeader(r.value(), s->tensor_header) ||
        (delta && s->info.base_version != r.info.version)) {
      return RequestResync(r);
    }
    Replica::Incoming in;
    in.serial = ++r.incoming_serial;
    in.version = m.version;
    in.count = s->count;
    in.base = r.holder;
    in.base_offset = r.offset;
    if (r.segment_hashes.size() == s->count) in.base_hashes = r.segment_hashes;
    in.hashes.assign(s->count, 0);
    if (detail::SoleOwner(r.spare) && r.spare->size() == s->raw_bytes) {
      in.out = std::move(r.spare);
    } else {
      r.spare.reset();
      in.out = std::make_shared<Frame>(s->raw_bytes);
    }
    std::memcpy(in.out->data(), s->tensor_header.data(), detail::kTensorHeaderBytes);
    r.incoming = std::move(in);
  }
  if (!r.incoming || r.incoming->version != m.version || r.incoming->count != s->count ||
      r.incoming->received != s->index) {
    return;  // not part of the update being received (superseded, or after a failure)
  }
  // The base stays what it was at segment 0: the incoming update holds it, so it is never
  // written in place meanwhile.
  Replica::Incoming& in = *r.incoming;
  ++in.received;
  const auto* base = reinterpret_cast<const uint8_t*>(in.base->data()) + in.base_offset +
                     detail::kTensorHeaderBytes + s->offset;
  auto* out = reinterpret_cast<uint8_t*>(in.out->data()) + detail::kTensorHeaderBytes + s->offset;
  codec::DecodeOptions options;
  if (!in.base_hashes.empty()) options.known_base_hash = in.base_hashes[s->index];
  const SegmentDone done{&r, in.serial, s->index, s->info.result_hash, info};
  const std::span<const uint8_t> wire{reinterpret_cast<const uint8_t*>(s->frame.data()),
                                      s->frame.size()};
  const size_t bytes = s->bytes;
  // Held until the decode is done: the frame (wire points into it), the base and the output.
  auto decode = [this, done, wire, base = delta ? base : nullptr, out, bytes, options,
                 keep = std::make_tuple(std::move(frame), in.base, in.out)](codec::Decoder& decoder,
                                                                            bool pooled) {
    const Status st =
        decoder.Decode(wire, base, base != nullptr ? bytes : 0, {out, bytes}, options);
    FinishSegment(done, st, pooled);
  };
  if (TaskQueue* q = s->count > 1 ? DecodeQueue() : nullptr) {
    ++in.in_flight;
    lock.unlock();
    q->Post([this, decode = std::move(decode)](size_t w) { decode(*decoders_[w], true); });
    return;
  }
  lock.unlock();
  decode(decoder_, false);
}

void NetClient::FinishSegment(const SegmentDone& d, const Status& st, bool pooled) {
  Replica& r = *d.r;
  std::unique_lock<std::mutex> lock(r.mu);
  const bool current = r.incoming && r.incoming->serial == d.serial;
  if (current && pooled && --r.incoming->in_flight == 0) {
    r.decoded.notify_all();  // AwaitDecodes may wait for this one (a later update has come)
  }
  if (!current) {
    r.decoded.notify_all();
    return;  // superseded meanwhile
  }
  if (!st.ok()) {
    r.incoming.reset();
    r.decoded.notify_all();
    if (!pooled) return RequestResync(r);
    lock.unlock();
    // A request goes from the thread that drives the worker.
    worker_->RunOrPost([this, &r] {
      std::lock_guard<std::mutex> again(r.mu);
      RequestResync(r);
    });
    return;
  }
  Replica::Incoming& in = *r.incoming;
  in.hashes[d.index] = d.hash;
  if (++in.decoded < in.count) return;
  Replica::Incoming whole = std::move(in);
  r.incoming.reset();
  r.decoded.notify_all();
  // A local write may have come in between.
  if (r.dirty || r.holder != whole.base || d.info.version <= r.info.version) return;
  Install(r, std::move(whole.out), 0, d.info, std::nullopt);
  r.segment_hashes = std::move(whole.hashes);
  Count(shard().deltas_recv, 1);
  lock.unlock();
  Ring();
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
  if (m.segment) return OnSegment(r, m, info, std::move(frame));
  CounterShard& c = shard();
  auto peek = PeekCodecValue(m.value);
  if (!peek.ok() || r.kind != ValueKind::kTensor) {
    std::lock_guard<std::mutex> lock(r.mu);
    return RequestResync(r);
  }
  SeeClock(m.clock);
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
  AwaitDecodes(r, lock);  // a segmented update still decoding may be the base
  if (m.version <= r.info.version) return;
  if (r.resync_requested) return;  // the whole value is on its way
  if (r.dirty || r.holder_in_flux() || peek->frame.base_version != r.info.version ||
      r.value().size() != peek->raw_bytes) {
    return RequestResync(r);
  }
  Status st;
  if (detail::SoleOwner(r.holder)) {
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
    if (!detail::SoleOwner(out) || out->size() != peek->raw_bytes) {
      out = std::make_shared<Frame>();
      out->resize(peek->raw_bytes);
    }
    st = DecodeCodecValue(decoder_, m.value, ByteSpan(*base).subspan(base_offset), base_hash, *out);
    lock.lock();
    // Only the thread driving the worker installs received values, but a local write may have
    // come in between.
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
      if (r.info.version > 0 && !r.holder_in_flux() &&
          r.value().size() + kHeaderBytes + 1024 <= MaxMessageBytes()) {
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
      hub_rdma_.store(ep_ != nullptr && worker_->HasRdmaLane(ep_));
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
      m->segment = (h->flags & kFlagSegment) != 0;
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

Status NetClient::CheckMessageSize(size_t bytes, std::string_view what) {
  if (bytes <= MaxMessageBytes()) return Status::Ok();
  return Status::ResourceExhausted(
      std::string(what) + " of " + std::to_string(bytes) + " bytes is over the message limit of " +
      std::to_string(MaxMessageBytes()) +
      " (the smaller of NetOptions::max_message_bytes and the hub's --max-message-bytes)");
}

Result<NetClient::Pending> NetClient::Request(uint32_t id, Pending p,
                                              std::shared_ptr<const Frame> frame,
                                              std::string_view what,
                                              const std::function<Status()>& more) {
  if (frame) EASYSYNC_RETURN_IF_ERROR(CheckMessageSize(*frame, what));
  std::unique_lock<std::mutex> lock(mu_);
  if (state_ == State::kFailed) return failure_;
  if (state_ != State::kReady) {
    p.done = p.lost = true;
    p.status = Status::Unavailable("not connected to the hub at " + cluster_);
    return p;
  }
  pending_.emplace(id, std::move(p));
  // Sent from this thread when the worker is free (SendFrame takes no lock of ours).
  if (frame) {
    worker_->RunOrPost([this, frame = std::move(frame)]() mutable { SendFrame(std::move(frame)); });
  }
  if (more) {
    lock.unlock();
    const Status st = more();
    lock.lock();
    if (!st.ok()) {
      pending_.erase(id);
      return st;
    }
  }
  if (!pending_.at(id).done) {
    // The answer is usually a round trip away: wait for it driving the worker (so that it is
    // handled on this thread, not handed over from another), then sleep.
    lock.unlock();
    SpinUntil(
        [&] {
          std::lock_guard<std::mutex> relock(mu_);
          return pending_.at(id).done;
        },
        Clock::now() + options_.request_timeout);
    lock.lock();
  }
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
                                                                  std::optional<uint64_t>* hash,
                                                                  const std::byte* data_from) {
  std::shared_ptr<Frame> base;
  size_t base_offset = 0;
  uint64_t base_version = 0;
  std::optional<uint64_t> base_hash;
  if (!whole) {
    std::lock_guard<std::mutex> lock(r.mu);
    if (!r.dirty && r.info.version > 0 && !r.holder_in_flux()) {
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
  EASYSYNC_ASSIGN_OR_RETURN(
      EncodedValue e, EncodeCodecValue(coder_.encoder, raw, base_value, base_version, base_hash,
                                       base_version + 1, {Scratch(bound), bound}, data_from));
  *hash = e.result_hash;
  return CodecWrite(r, request, clock, now, {coder_.scratch.get(), e.bytes}, raw.size(), e.delta);
}

std::shared_ptr<const Frame> NetClient::CodecWrite(Replica& r, uint32_t request, uint64_t clock,
                                                   int64_t now, ByteSpan value, size_t raw_bytes,
                                                   bool delta) {
  CounterShard& c = shard();
  Count(c.codec_raw_bytes, raw_bytes);
  Count(c.codec_wire_bytes, value.size());
  Count(delta ? c.deltas_sent : c.full_sent, 1);
  return std::make_shared<const Frame>(EncodeWrite(
      net::Write{request, r.hub_id.load(), clock, ToHub(now), {}, /*codec=*/true}, value.size(),
      [&](std::byte* dst) { std::memcpy(dst, value.data(), value.size()); }));
}

void NetClient::InstallWritten(Replica& r, std::shared_ptr<Frame> holder, size_t offset,
                               const UpdateInfo& info, std::optional<uint64_t> hash,
                               std::vector<uint64_t> segment_hashes) {
  Count(shard().updates_sent, 1);
  const Frame* written = holder.get();
  if (Apply(r, std::move(holder), offset, info, hash, /*local=*/true)) Ring();
  if (!segment_hashes.empty()) {
    std::lock_guard<std::mutex> lock(r.mu);
    if (r.holder.get() == written) r.segment_hashes = std::move(segment_hashes);
  }
}

Result<uint64_t> NetClient::Write(AttrId attr, size_t size, FunctionRef<void(std::byte*)> encode) {
  return WriteValue(attr, size, encode, nullptr);
}

Result<uint64_t> NetClient::WriteValue(AttrId attr, size_t size,
                                       FunctionRef<void(std::byte*)> encode,
                                       const TensorView* tensor) {
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
  // A host tensor's bytes, not yet in holder: the first encode copies them in.
  const std::byte* unfilled = nullptr;
  // holder is the replica's own, changed in place by WriteSegments (TakeHolderInPlace).
  bool in_place = false;
  const auto own_buffer = [&] {
    holder = Buffer(*r, size);
    detail::EncodeTensorHeader(tensor->dtype, tensor->shape, holder->data());
    unfilled = static_cast<const std::byte*>(tensor->data);
  };
  // Whatever way this ends, the replica's holder is no longer in flux for it.
  const Frame* flux = nullptr;
  struct FluxGuard {
    Replica& r;
    const Frame*& flux;
    void Release() {
      if (flux == nullptr) return;
      std::lock_guard<std::mutex> lock(r.mu);
      if (r.in_flux == flux) r.in_flux = nullptr;
      flux = nullptr;
    }
    ~FluxGuard() { Release(); }
  } flux_guard{*r, flux};
  const auto leave_in_place = [&] {
    if (!in_place) return;
    in_place = false;
    flux_guard.Release();
    own_buffer();
  };
  if (codec && tensor != nullptr) {
    holder = TakeHolderInPlace(*r, size, *tensor);
    if (holder) {
      in_place = true;
      flux = holder.get();
      unfilled = static_cast<const std::byte*>(tensor->data);
    } else {
      own_buffer();
    }
  } else if (codec) {
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
      if (state_ != State::kReady) {
        leave_in_place();
        if (unfilled != nullptr) encode(holder->data());  // kept until the reconnect
        return QueueDirty(*r, std::move(holder), offset, clock, now);
      }
    }
    std::vector<uint64_t> segment_hashes;
    Pending done;
    if (codec && !whole && Segmentable(*r, *holder)) {
      bool put_back = false;
      Result<Pending> sent = WriteSegments(*r, request, *holder, unfilled, clock, now,
                                           &segment_hashes, in_place, &put_back);
      if (put_back) leave_in_place();  // unfilled is the data again
      if (!sent.ok()) return sent.status();
      done = *sent;
      if (!put_back) unfilled = nullptr;
      hash.reset();  // the data's hash is not known; its segments' are
    } else {
      leave_in_place();
      if (codec) {
        EASYSYNC_ASSIGN_OR_RETURN(
            frame, EncodeTensorWrite(*r, request, *holder, clock, now, whole, &hash, unfilled));
        unfilled = nullptr;
      }
      EASYSYNC_ASSIGN_OR_RETURN(done, Request(request, Pending{}, frame, "WRITE"));
    }
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
    InstallWritten(*r, std::move(holder), offset,
                   UpdateInfo{done.version, done.clock, id(), now, 0}, hash,
                   std::move(segment_hashes));
    return done.version;
  }
}

bool NetClient::Segmentable(Replica& r, const Frame& value) {
  std::lock_guard<std::mutex> lock(r.mu);
  // A holder in flux is a base only for the write that changes it.
  return SegmentableLocked(r, value) && (!r.holder_in_flux() || r.in_flux == &value);
}

bool NetClient::SegmentableLocked(const Replica& r, ByteSpan value) const {
  return value.size() >= detail::kTensorHeaderBytes + kSegmentMinDataBytes && !r.dirty &&
         r.info.version > 0 && !r.udp && r.value().size() == value.size() &&
         SameTensorHeader(r.value(), value);
}

std::shared_ptr<Frame> NetClient::TakeHolderInPlace(Replica& r, size_t size,
                                                    const TensorView& tensor) {
  std::array<std::byte, detail::kTensorHeaderBytes> header;
  if (size < header.size()) return nullptr;
  detail::EncodeTensorHeader(tensor.dtype, tensor.shape, header.data());
  std::lock_guard<std::mutex> lock(r.mu);
  // Only the replica holds it (no reader shares its bytes, no send or decode reads them), and
  // a write of these bytes goes in segments against it.
  if (!detail::SoleOwner(r.holder) || r.offset != 0 || r.in_flux != nullptr || r.incoming ||
      r.resync_requested || r.holder->size() != size ||
      !SameTensorHeader(r.value(), ByteSpan(header.data(), header.size())) ||
      !SegmentableLocked(r, r.value())) {
    return nullptr;
  }
  r.in_flux = r.holder.get();
  if (r.spare.use_count() == 1) r.spare.reset();  // a writer in place needs no second buffer
  return r.holder;
}

Result<NetClient::Pending> NetClient::WriteSegments(Replica& r, uint32_t request, Frame& holder,
                                                    const std::byte* data, uint64_t clock,
                                                    int64_t now, std::vector<uint64_t>* hashes,
                                                    bool in_place, bool* put_back) {
  constexpr size_t H = detail::kTensorHeaderBytes;
  std::shared_ptr<const Frame> base;
  size_t base_offset;
  uint64_t base_version;
  std::vector<uint64_t> base_hashes;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    base = r.holder;
    base_offset = r.offset;
    base_version = r.info.version;
    base_hashes = r.segment_hashes;
  }
  detail::TensorBytes t;
  EASYSYNC_RETURN_IF_ERROR(detail::ParseTensorHeader(holder, &t));
  const size_t esize = DTypeSize(t.dtype);
  const size_t n = holder.size() - H;
  const auto* base_data = reinterpret_cast<const uint8_t*>(base->data()) + base_offset + H;
  auto* value = reinterpret_cast<uint8_t*>(holder.data()) + H;
  in_place = in_place && data != nullptr && base.get() == &holder && base_offset == 0;
  const size_t count = (n + kSegmentBytes - 1) / kSegmentBytes;
  // In place: the frames of the segments the encoder changed (sparse deltas; empty for the
  // others), to put them back with if the write does not go through.
  std::vector<std::vector<uint8_t>> undo(in_place ? count : 0);
  // Each segment encoded against the same range of the base, on several threads. From data,
  // the holder gets its copy once every segment is on its way (not in the encode's pass: the
  // readers wait for the last segment, not for the writer's copy); in place, only the
  // segments the encoder did not update, once the hub took the write.
  std::atomic<size_t> filled{0};  // segments copied
  const auto fill = [&](size_t off, size_t bytes) { std::memcpy(value + off, data + off, bytes); };
  Result<Pending> done = SendSegments(
      r, request, {holder.data(), H}, t.dtype, n, clock, now, std::move(base_hashes),
      /*parallel=*/true,
      [&](codec::Encoder& encoder, size_t off, size_t bytes, std::optional<uint64_t> base_hash,
          std::span<uint8_t> frame, SegmentTail*) -> Result<size_t> {
        const uint8_t* cur =
            data != nullptr ? reinterpret_cast<const uint8_t*>(data) + off : value + off;
        const codec::TensorBytes now_t{t.dtype, bytes / esize, cur};
        const codec::TensorBytes was{t.dtype, bytes / esize, base_data + off};
        codec::EncodeHints hints;
        hints.known_base_hash = base_hash;
        bool updated = false;
        if (in_place) {
          hints.update_base = value + off;
          hints.base_updated = &updated;
        }
        Result<size_t> f =
            encoder.Encode(now_t, &was, base_version, base_version + 1, frame, hints);
        if (f.ok() && updated) undo[off / kSegmentBytes].assign(frame.begin(), frame.begin() + *f);
        return f;
      },
      hashes,
      data == nullptr || in_place ? std::nullopt
                                  : std::optional<SegmentWork>([&](size_t off, size_t bytes) {
                                      fill(off, bytes);
                                      filled.fetch_add(1);
                                    }));
  if (in_place) {
    const bool took = done.ok() && !done->lost && !done->stale_base && done->status.ok();
    codec::Decoder decoder;
    for (size_t i = 0; i < count; ++i) {
      const size_t off = i * kSegmentBytes;
      const size_t bytes = std::min(kSegmentBytes, n - off);
      if (took) {
        if (undo[i].empty()) fill(off, bytes);
        continue;
      }
      if (undo[i].empty()) continue;
      // The encoder stored exactly the frame's changes: undoing the frame gives the base back
      // (Revert checks its hash), unless memory was corrupted.
      const Status st = decoder.Revert(undo[i], {value + off, bytes});
      if (!st.ok()) {
        std::fprintf(stderr, "easysync: putting back segment %zu of a write in place: %s\n", i,
                     st.ToString().c_str());
        std::abort();
      }
    }
    if (!took && put_back != nullptr) *put_back = true;
    return done;
  }
  // Not connected, or a segment failed: the holder must hold the whole value still.
  if (data != nullptr && filled.load() < count) fill(0, n);
  return done;
}

Result<NetClient::Pending> NetClient::SendSegments(
    Replica& r, uint32_t request, ByteSpan tensor_header, DType dtype, size_t n, uint64_t clock,
    int64_t now, std::vector<uint64_t> base_hashes, bool parallel, SegmentEncoder encode,
    std::vector<uint64_t>* hashes, std::optional<SegmentWork> after_sent) {
  constexpr size_t H = detail::kTensorHeaderBytes;
  const size_t esize = DTypeSize(dtype);
  const auto count = static_cast<uint32_t>((n + kSegmentBytes - 1) / kSegmentBytes);
  if (base_hashes.size() != count) base_hashes.clear();
  hashes->clear();
  std::lock_guard<std::mutex> segments_lock(segments_mu_);
  if (parallel && !segment_pool_) {
    segment_pool_ = std::make_unique<OrderedPool>(
        options_.encode_threads >= 0 ? static_cast<size_t>(options_.encode_threads)
                                     : OrderedPool::ThreadsForThisProcess(kMaxSegmentWorkers));
  }
  OrderedPool& pool = parallel ? *segment_pool_ : serial_pool_;
  while (segment_workers_.size() < pool.workers()) {
    segment_workers_.push_back(std::make_unique<Coder>());
  }
  struct Made {
    std::shared_ptr<const Frame> frame;  // the whole WRITE, or its head (tail.data set)
    SegmentTail tail;
    uint64_t hash = 0;
    size_t wire = 0;
    bool full = false;
  };
  std::vector<Made> made(count);
  // Segment i as a WRITE, by worker w.
  const auto segment = [&](size_t i, size_t w) -> Status {
    Coder& worker = *segment_workers_[w];
    const size_t off = i * kSegmentBytes;
    const size_t bytes = std::min(kSegmentBytes, n - off);
    const size_t bound = codec::EncodeBound(dtype, bytes / esize);
    std::byte* out = worker.Scratch(kSegmentHeaderBytes + H + bound);
    WriteSegmentHeader(static_cast<uint32_t>(i), count, kSegmentBytes, out);
    std::memcpy(out + kSegmentHeaderBytes, tensor_header.data(), H);
    auto* frame = reinterpret_cast<uint8_t*>(out) + kSegmentHeaderBytes + H;
    std::optional<uint64_t> base_hash;
    if (!base_hashes.empty()) base_hash = base_hashes[i];
    SegmentTail tail;
    EASYSYNC_ASSIGN_OR_RETURN(size_t f,
                              encode(worker.encoder, off, bytes, base_hash, {frame, bound}, &tail));
    EASYSYNC_ASSIGN_OR_RETURN(codec::FrameInfo info, codec::PeekFrame({frame, f}));
    const size_t head_bytes = kSegmentHeaderBytes + H + f;
    const size_t value_bytes = head_bytes + (tail.data != nullptr ? tail.bytes : 0);
    net::Write m{request, r.hub_id.load(), clock, ToHub(now), {}, /*codec=*/true};
    m.segment = true;
    made[i].frame = std::make_shared<const Frame>(EncodeWriteHead(
        m, value_bytes, head_bytes, [&](std::byte* dst) { std::memcpy(dst, out, head_bytes); }));
    made[i].tail = tail;
    made[i].hash = info.result_hash;
    made[i].wire = value_bytes;
    made[i].full = info.is_full_value();
    return Status::Ok();
  };
  // Every segment, the first one too, is encoded on the workers; each is sent once it and
  // those before it are made (from the writing thread when the worker is free: no hand-over
  // per segment). Segment 0 carries the request: it goes once the request is registered.
  size_t sent = 0;
  const std::function<Status()> all = [&]() -> Status {
    const Status st = pool.Run(
        count, [&](size_t i, size_t w) { return segment(i, w); },
        [&](size_t i) -> Status {
          const SegmentTail& tail = made[i].tail;
          EASYSYNC_RETURN_IF_ERROR(CheckMessageSize(
              made[i].frame->size() + tail.bytes * (tail.data != nullptr), "WRITE"));
          if (tail.data != nullptr) {
            // The tail is read in place: the replica counts it until UCX is done with it.
            r.device_tails->fetch_add(1);
            worker_->RunOrPost(
                [this, f = std::move(made[i].frame), tail, tails = r.device_tails]() mutable {
                  SendSplitFrame(std::move(f), tail, [tails] { tails->fetch_sub(1); });
                });
          } else {
            worker_->RunOrPost(
                [this, f = std::move(made[i].frame)]() mutable { SendFrame(std::move(f)); });
          }
          sent = i + 1;
          return Status::Ok();
        });
    if (!st.ok() || !after_sent) return st;
    return pool.Run(
        count,
        [&](size_t i, size_t) {
          const size_t off = i * kSegmentBytes;
          (*after_sent)(off, std::min(kSegmentBytes, n - off));
          return Status::Ok();
        },
        [](size_t) { return Status::Ok(); });
  };
  Result<Pending> done = Request(request, Pending{}, nullptr, "WRITE", all);
  size_t wire = 0;
  bool whole = true;  // every segment a full frame: a whole value, not a delta
  for (size_t i = 0; i < sent; ++i) {
    hashes->push_back(made[i].hash);
    wire += made[i].wire;
    whole = whole && made[i].full;
  }
  CounterShard& c = shard();
  Count(c.codec_raw_bytes, H + n);
  Count(c.codec_wire_bytes, wire);
  Count(whole ? c.full_sent : c.deltas_sent, 1);
  return done;
}

Result<std::optional<UpdateInfo>> NetClient::ReadIfNewer(AttrId attr, uint64_t have,
                                                         FunctionRef<Status(ByteSpan)> decode) {
  EASYSYNC_ASSIGN_OR_RETURN(std::optional<SharedValue> v, ReadSharedIfNewer(attr, have));
  if (!v) return std::optional<UpdateInfo>();
  EASYSYNC_RETURN_IF_ERROR(decode(v->bytes));
  return std::optional<UpdateInfo>(v->info);
}

Result<std::optional<Client::SharedValue>> NetClient::ReadSharedIfNewer(AttrId attr,
                                                                        uint64_t have) {
  // A replica's holder is never written while someone else holds it: a delta is applied in
  // place only when the replica holds the only reference (OnUpdate, TakeHolderInPlace), else
  // into another buffer; a holder that a write changes in place is not handed out meanwhile.
  Replica* r = Find(attr);
  if (r == nullptr) return Status::InvalidArgument("unknown attribute id");
  if (r->version.load(std::memory_order_acquire) <= have) return std::optional<SharedValue>();
  SharedValue v;
  size_t offset;
  std::shared_ptr<const Frame> holder;
  {
    std::lock_guard<std::mutex> lock(r->mu);
    if (r->holder_in_flux())
      return std::optional<SharedValue>();  // this process's write changes it
    holder = r->holder;
    offset = r->offset;
    v.info = r->info;
  }
  if (v.info.version <= have || !holder) return std::optional<SharedValue>();
  v.bytes = ByteSpan(*holder).subspan(offset);
  v.owner = std::move(holder);
  return std::optional<SharedValue>(std::move(v));
}

bool NetClient::SpinUntil(FunctionRef<bool()> ready, Deadline deadline) {
  if (ready()) return true;
  Deadline spin_until = std::min(deadline, Clock::now() + options_.spin);
  while (Clock::now() < spin_until) {
    if (worker_->TryProgress()) {
      // Traffic: keep spinning for a while after it.
      spin_until = std::min(deadline, Clock::now() + options_.spin);
    } else if (!YieldQuickly()) {  // gives way to whichever thread has the next step
      break;  // a thread computes on this CPU: sleep, so that the change preempts it
    }
    if (ready()) return true;
  }
  return false;
}

bool NetClient::WaitUntil(FunctionRef<bool()> ready, Deadline deadline) {
  if (SpinUntil(ready, deadline)) return true;
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

void SetInPlaceForHostTensors(Client& client, bool on) {
  if (auto* c = dynamic_cast<NetClient*>(&client)) c->set_in_place_for_host_tensors(on);
}

void SetDeviceDirect(Client& client, NetOptions::DeviceDirect mode) {
  if (auto* c = dynamic_cast<NetClient*>(&client)) c->set_device_direct(mode);
}

void ForgetDeviceBase(Client& client, AttrId attr) {
  if (auto* c = dynamic_cast<NetClient*>(&client)) c->ForgetDeviceBase(attr);
}

bool UcxMovesCudaMemory(Client& client) {
  auto* c = dynamic_cast<NetClient*>(&client);
  return c != nullptr && c->ucx_moves_cuda_memory();
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
