// The hub (see hub.h). Runs entirely on the UCX progress thread.
#include "hub/hub.h"

#include "net/wire_value.h"

#include <time.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <utility>

namespace easysync::hub {
namespace {

int64_t NowNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

void Log(const std::string& line) {
  std::fprintf(stderr, "easysync-hub: %s\n", line.c_str());
  std::fflush(stderr);
}

constexpr int64_t kRejectGraceNs = 1'000'000'000;   // a rejected peer's ERROR gets this long
constexpr int64_t kUdpResendNs = 20'000'000;        // unacknowledged UDP values go again
constexpr int64_t kUdpResendMaxNs = 1'000'000'000;  // ... backing off up to this
constexpr int64_t kNsPerByte = 10;                  // ... from a floor of 10 ns per byte
constexpr int64_t kAckDelayNs = 10'000'000;         // ACKs of datagram writes wait this long
// A relayed delta is applied by then even if its relay has not left (a stalled subscriber).
constexpr int64_t kApplyDeadlineNs = 1'000'000'000;
constexpr size_t kMaxChained = 2;  // writes of one attribute relayed and not yet applied

// The first wait before a UDP value goes again: more for a value that takes longer to send.
int64_t ResendFloorNs(size_t value_bytes) {
  return std::max<int64_t>(kUdpResendNs, static_cast<int64_t>(value_bytes) * kNsPerByte);
}

// The UPDATE u (its value ignored) carrying `value` encoded against `base` (EncodeCodecValue:
// a delta where that is smaller, for receivers that hold base at base_version). Sets
// *result_hash to the hash of value's data.
Result<net::Frame> EncodeUpdateAgainst(codec::Encoder& encoder, net::Update u, ByteSpan value,
                                       ByteSpan base, uint64_t base_version,
                                       std::optional<uint64_t> base_hash, uint64_t* result_hash) {
  u.codec = true;
  u.value = {};
  net::Frame f = net::Encode(u);
  f.resize(net::kUpdateValueOffset + net::CodecValueBound(value));
  EASYSYNC_ASSIGN_OR_RETURN(
      const net::EncodedValue enc,
      net::EncodeCodecValue(encoder, value, base, base_version, base_hash, u.version,
                            std::span<std::byte>(f).subspan(net::kUpdateValueOffset)));
  net::ShrinkFrame(&f, net::kUpdateValueOffset + enc.bytes);
  *result_hash = enc.result_hash;
  return f;
}

// Whether anyone but `except` subscribes.
bool OthersSubscribe(const std::set<ucp_ep_h>& subscribers, ucp_ep_h except) {
  return subscribers.size() > (subscribers.count(except) != 0 ? 1u : 0u);
}

// Whether the subscribers get a whole tensor value as a delta against the one it replaces
// (Publish's rule): they hold that one, it is the version just before, and of the same tensor
// header and size. `head` begins with the value's tensor header (the value, or its codec
// value); value_bytes is the value's size.
bool DeltaForSubscribers(ByteSpan head, size_t value_bytes, uint64_t version, ByteSpan prev,
                         uint64_t prev_version) {
  return prev_version + 1 == version && prev.size() == value_bytes &&
         net::SameTensorHeader(head, prev);
}

}  // namespace

Result<std::unique_ptr<Hub>> Hub::Start(const HubOptions& options) {
  if (options.token.empty()) return Status::InvalidArgument("the hub needs a token");
  std::unique_ptr<Hub> hub(new Hub(options));
  net::UcxOptions uo;
  uo.relay = true;
  uo.transports = options.ucx_transports;
  uo.spin = options.spin;
  uo.max_frame_bytes = options.max_message_bytes;
  uo.who = "easysync-hub";
  EASYSYNC_ASSIGN_OR_RETURN(hub->worker_, net::UcxWorker::Create(uo, hub.get()));
  EASYSYNC_RETURN_IF_ERROR(hub->worker_->Listen(options.bind, options.port));
  // The best-effort path: UDP on the same port number.
  EASYSYNC_ASSIGN_OR_RETURN(net::UdpSocket udp, net::UdpSocket::Bind(options.bind, hub->port()));
  hub->udp_.emplace(std::move(udp));
  Hub* h = hub.get();
  hub->worker_->WatchFd(hub->udp_->fd(), [h] { return h->OnUdp(); });
  if (options.admission != HubOptions::Admission::kOff) {
    EASYSYNC_RETURN_IF_ERROR(hub->FilterListeners());
  }
  // A job that ended wakes the progress thread, which collects it (StepPending).
  if (options.apply_thread) {
    hub->applier_ = std::make_unique<BackgroundApply>([h] { h->worker_->Post([] {}); });
  }
  hub->worker_->Start();
  return hub;
}

Hub::~Hub() {
  // Clients hear that the hub is going (they reconnect, with backoff), not an endpoint error.
  if (worker_) {
    worker_->SendLast(
        [this](const net::UcxWorker::SendDone& sent) {
          auto bye = std::make_shared<const net::Frame>(net::Encode(net::ErrorMsg{
              net::ErrorCode::kShuttingDown, /*fatal=*/true, 0, "the hub is shutting down"}));
          for (const auto& [ep, peer] : peers_) worker_->Send(ep, bye, sent);
          return peers_.size();
        },
        net::kGoodbyeLimit);
  }
  if (worker_) worker_->Stop();  // before reset(): the thread still uses worker_
  applier_.reset();              // after the progress thread, the one that gives it jobs
  worker_.reset();
}

void Hub::OnConnectRequest(ucp_conn_request_h request) {
  std::string address = "?";
  auto ep = worker_->Accept(request, &address);
  if (!ep.ok()) {
    Log("rejected a connection from " + address + ": " + ep.status().ToString());
    return;
  }
  Peer& p = peers_[*ep];
  p.address = address;
  p.connected_ns = NowNanos();
  ++handshaking_;
}

void Hub::OnEndpointError(ucp_ep_h ep, ucs_status_t status) {
  if (closing_.erase(ep) != 0) {
    worker_->Close(ep);
    return;
  }
  auto it = peers_.find(ep);
  if (it == peers_.end()) return;
  if (it->second.state == PeerState::kReady) {
    Log("client " + std::to_string(it->second.id) + " (" + it->second.address +
        ") disconnected: " + ucs_status_string(status));
  }
  Drop(ep);
}

void Hub::Forget(ucp_ep_h ep, const Peer& peer) {
  for (uint32_t a : peer.udp_attrs) --attrs_[a].udp_subscribers;
  for (uint32_t a : peer.declared) {
    attrs_[a].subscribers.erase(ep);
    if (attrs_[a].open && attrs_[a].open->ep == ep) attrs_[a].open.reset();
    if (attrs_[a].open) attrs_[a].open->relayed.erase(ep);
    udp_unacked_.erase({ep, a});
    reassembler_.Forget((uint64_t{peer.id} << 32) | a);
  }
  if (peer.id != 0) by_id_.erase(peer.id);
}

void Hub::Drop(ucp_ep_h ep) {
  auto it = peers_.find(ep);
  if (it != peers_.end()) {
    if (it->second.state != PeerState::kReady) --handshaking_;
    Forget(ep, it->second);
    peers_.erase(it);
  }
  closing_.erase(ep);
  worker_->Close(ep);
}

void Hub::Reject(ucp_ep_h ep, net::ErrorCode code, const std::string& why) {
  auto it = peers_.find(ep);
  if (it == peers_.end()) return;
  Log("rejected " +
      (it->second.id != 0 ? "client " + std::to_string(it->second.id) + " (" : "peer (") +
      it->second.address + "): " + why);
  if (it->second.state != PeerState::kReady) --handshaking_;
  Forget(ep, it->second);
  peers_.erase(it);
  closing_[ep] = NowNanos() + kRejectGraceNs;
  net::ErrorMsg err{code, /*fatal=*/true, 0, why};
  // Close only once the ERROR reached the peer (a local send completion is not enough), or
  // at the grace deadline (OnIdle) if the peer does not take it.
  worker_->Send(ep, std::make_shared<const net::Frame>(net::Encode(err)));
  worker_->Flush(ep, [this, ep](ucs_status_t) {
    if (closing_.erase(ep) != 0) worker_->Close(ep);
  });
}

int Hub::OnIdle() {
  int pending_ms = -1;  // until the next relayed delta's deadline
  if (!pending_.empty()) {
    const int64_t now = NowNanos();
    if (StepPending(now)) {
      pending_ms = 0;  // more to apply after the next pass
    } else {
      // Until the next deadline of a relay still in flight; the others wait for the
      // applier (it wakes this thread) or for a write before them.
      for (const auto& p : pending_) {
        if (*p->sends_left == 0 || p->deadline_ns <= now) continue;
        const int64_t ms = (p->deadline_ns - now) / 1'000'000 + 1;
        pending_ms = static_cast<int>(pending_ms < 0 ? ms : std::min<int64_t>(pending_ms, ms));
      }
    }
  }
  const auto until = [pending_ms](int ms) {
    return pending_ms < 0 ? ms : (ms < 0 ? pending_ms : std::min(ms, pending_ms));
  };
  if (closing_.empty() && handshaking_ == 0 && udp_unacked_.empty() && acks_due_ns_ == 0) {
    return until(-1);
  }
  const int64_t now = NowNanos();
  if (acks_due_ns_ != 0 && now >= acks_due_ns_) SendOwedAcks();
  if (!udp_unacked_.empty() && now >= next_udp_resend_ns_) {
    Settle(kAll);  // resend the latest value
    // Latest value wins, and converges: a UDP subscriber behind the latest version gets it
    // again until it acknowledges it.
    next_udp_resend_ns_ = INT64_MAX;
    for (auto it = udp_unacked_.begin(); it != udp_unacked_.end();) {
      auto p = peers_.find(it->first.first);
      Attr& a = attrs_[it->first.second];
      if (p == peers_.end() || p->second.udp_acked[it->first.second] >= a.version) {
        it = udp_unacked_.erase(it);
        continue;
      }
      Resend& r = it->second;
      if (now >= r.next_ns) {
        SendUdpValue(p->second, it->first.second, a);
        ++r.tries;
        r.next_ns = now + std::min<int64_t>(kUdpResendMaxNs, ResendFloorNs(a.value().size())
                                                                 << std::min(r.tries, 10));
      }
      next_udp_resend_ns_ = std::min(next_udp_resend_ns_, r.next_ns);
      ++it;
    }
  }
  if (closing_.empty() && handshaking_ == 0) {
    int64_t wake = udp_unacked_.empty() ? INT64_MAX : next_udp_resend_ns_;
    if (acks_due_ns_ != 0) wake = std::min(wake, acks_due_ns_);
    if (wake == INT64_MAX) return until(-1);
    return until(static_cast<int>(std::clamp<int64_t>((wake - now) / 1'000'000 + 1, 1, 1000)));
  }
  for (auto it = closing_.begin(); it != closing_.end();) {
    if (it->second <= now) {
      worker_->Close(it->first);
      it = closing_.erase(it);
    } else {
      ++it;
    }
  }
  if (handshaking_ > 0 && now - last_handshake_check_ns_ > 20'000'000) {
    last_handshake_check_ns_ = now;
    const int64_t limit = options_.handshake_timeout.count() * 1'000'000;
    std::vector<ucp_ep_h> late;
    for (const auto& [ep, peer] : peers_) {
      if (peer.state != PeerState::kReady && now - peer.connected_ns > limit) late.push_back(ep);
    }
    for (ucp_ep_h ep : late) {
      Reject(
          ep, net::ErrorCode::kUnexpected,
          "no authentication within " + std::to_string(options_.handshake_timeout.count()) + " ms");
    }
  }
  return until(acks_due_ns_ != 0 ? 1 : static_cast<int>(kUdpResendNs / 1'000'000));
}

void Hub::Send(ucp_ep_h ep, net::Frame frame) {
  worker_->Send(ep, std::make_shared<const net::Frame>(std::move(frame)));
}

void Hub::OnOversize(ucp_ep_h ep, size_t bytes) {
  if (ep == nullptr) return;
  Reject(ep, net::ErrorCode::kTooLarge,
         "a message of " + std::to_string(bytes) + " bytes is over the hub's limit of " +
             std::to_string(options_.max_message_bytes) + " (--max-message-bytes)");
}

void Hub::OnFrame(ucp_ep_h ep, net::Frame frame) {
  if (ep == nullptr) {
    Log("dropped a message from a peer that did not identify itself");
    return;
  }
  auto it = peers_.find(ep);
  if (it == peers_.end()) return;  // being closed
  auto h = net::DecodeHeader(frame, options_.max_message_bytes);
  if (!h.ok()) {
    const bool big = h.status().code() == StatusCode::kResourceExhausted;
    Reject(ep, big ? net::ErrorCode::kTooLarge : net::ErrorCode::kMalformed, h.status().message());
    return;
  }
  if (h->version != net::kProtocolVersion) {
    Reject(ep, net::ErrorCode::kVersionMismatch,
           "protocol version " + std::to_string(h->version) +
               " is not supported: this hub speaks version " +
               std::to_string(net::kProtocolVersion));
    return;
  }
  if (h->type == net::MsgType::kWrite && it->second.state == PeerState::kReady) {
    auto m = net::DecodeWrite(net::Payload(frame));
    if (!m.ok()) return Reject(ep, net::ErrorCode::kMalformed, m.status().message());
    m->codec = (h->flags & net::kFlagCodec) != 0;
    m->segment = (h->flags & net::kFlagSegment) != 0;
    return HandleWrite(ep, it->second, *m, std::move(frame));
  }
  Handle(ep, it->second, *h, net::Payload(frame));
}

void Hub::Handle(ucp_ep_h ep, Peer& peer, const net::Header& h, ByteSpan payload) {
  using net::MsgType;
  const auto unexpected = [&] {
    Reject(ep, net::ErrorCode::kUnexpected,
           std::string(net::MsgTypeName(h.type)) + " is not expected at this point");
  };
  switch (peer.state) {
    case PeerState::kNew: {
      if (h.type != MsgType::kHello) return unexpected();
      auto m = net::DecodeHello(payload);
      if (!m.ok()) return Reject(ep, net::ErrorCode::kMalformed, m.status().message());
      if (m->version != net::kProtocolVersion) {
        return Reject(ep, net::ErrorCode::kVersionMismatch,
                      "protocol version " + std::to_string(m->version) +
                          " is not supported: this hub speaks version " +
                          std::to_string(net::kProtocolVersion));
      }
      peer.client_nonce = m->nonce;
      peer.hub_nonce = net::RandomNonce();
      peer.state = PeerState::kChallenged;
      return Send(ep, net::Encode(net::Challenge{peer.hub_nonce}));
    }
    case PeerState::kChallenged: {
      if (h.type != MsgType::kAuth) return unexpected();
      auto m = net::DecodeAuth(payload);
      if (!m.ok()) return Reject(ep, net::ErrorCode::kMalformed, m.status().message());
      const net::Mac want = net::ComputeProof(options_.token, net::kClientProofLabel,
                                              peer.client_nonce, peer.hub_nonce);
      if (!net::ProofMatches(want, m->mac)) {
        return Reject(ep, net::ErrorCode::kAuthFailed,
                      "authentication failed: the client's token does not match the hub's");
      }
      peer.state = PeerState::kReady;
      --handshaking_;
      peer.id = next_peer_id_++;
      peer.udp_key = net::udp::DeriveKey(options_.token, peer.client_nonce, peer.hub_nonce);
      by_id_[peer.id] = ep;
      Log("client " + std::to_string(peer.id) + " (" + peer.address + ") connected");
      net::Welcome w{
          peer.id, NowNanos(),
          net::ComputeProof(options_.token, net::kHubProofLabel, peer.client_nonce, peer.hub_nonce),
          options_.max_message_bytes};
      return Send(ep, net::Encode(w));
    }
    case PeerState::kReady: {
      if (h.type == MsgType::kDeclare) {
        auto m = net::DecodeDeclare(payload);
        if (!m.ok()) return Reject(ep, net::ErrorCode::kMalformed, m.status().message());
        return HandleDeclare(ep, peer, *m);
      }
      if (h.type == MsgType::kResync) {
        auto m = net::DecodeResync(payload);
        if (!m.ok()) return Reject(ep, net::ErrorCode::kMalformed, m.status().message());
        return HandleResync(ep, peer, *m);
      }
      if (h.type == MsgType::kPing) {
        auto m = net::DecodePing(payload);
        if (!m.ok()) return Reject(ep, net::ErrorCode::kMalformed, m.status().message());
        return Send(ep, net::Encode(net::Pong{m->client_ns, NowNanos()}));
      }
      if (h.type == MsgType::kError) {
        auto m = net::DecodeError(payload);
        if (m.ok() && m->fatal && m->code == net::ErrorCode::kShuttingDown) {
          Log("client " + std::to_string(peer.id) + " (" + peer.address +
              ") disconnected: it closed its connection");
          return Drop(ep);
        }
        Log("client " + std::to_string(peer.id) +
            " reported an error: " + (m.ok() ? m->text : m.status().message()));
        if (!m.ok() || m->fatal) Drop(ep);
        return;
      }
      return unexpected();
    }
  }
}

void Hub::Refuse(ucp_ep_h ep, uint32_t request_id, net::ErrorCode code, std::string text) {
  Send(ep, net::Encode(net::ErrorMsg{code, /*fatal=*/false, request_id, std::move(text)}));
}

bool Hub::Fits(ucp_ep_h ep, uint32_t request_id, const Attr& a, size_t bytes) {
  const uint64_t after = total_value_bytes_ + pending_whole_bytes_ - a.value().size() + bytes;
  if (after <= options_.max_total_value_bytes) return true;
  Refuse(ep, request_id, net::ErrorCode::kHubFull,
         "the hub keeps at most " + std::to_string(options_.max_total_value_bytes) +
             " bytes of values (--max-total-value-bytes); " + a.object + "." + a.name + " (" +
             std::to_string(bytes) + " bytes) does not fit");
  return false;
}

void Hub::HandleDeclare(ucp_ep_h ep, Peer& peer, const net::Declare& m) {
  auto key = std::make_pair(m.object, m.attribute);
  auto found = attr_index_.find(key);
  uint32_t id;
  if (found == attr_index_.end()) {
    if (attrs_.size() >= options_.max_attributes) {
      return Refuse(ep, m.request_id, net::ErrorCode::kHubFull,
                    "the hub keeps at most " + std::to_string(options_.max_attributes) +
                        " attributes (--max-attributes)");
    }
    id = static_cast<uint32_t>(attrs_.size());
    Attr a;
    a.object = m.object;
    a.name = m.attribute;
    a.kind = m.kind;
    attrs_.push_back(std::move(a));
    attr_index_.emplace(std::move(key), id);
  } else {
    id = found->second;
    if (attrs_[id].kind != m.kind) {
      return Refuse(ep, m.request_id, net::ErrorCode::kTypeMismatch,
                    m.object + "." + m.attribute + " is declared as " +
                        std::string(ValueKindName(m.kind)) + " here but as " +
                        std::string(ValueKindName(attrs_[id].kind)) + " in the cluster");
    }
  }
  Settle(id);  // the snapshot is the latest value
  Attr& a = attrs_[id];
  // Joining never resets: a first value counts only when there is none. A resuming client
  // (one that held this value before a reconnect, e.g. across a hub restart) brings back
  // what it had when that is newer than what the hub has.
  const bool adopt = m.has_initial && (m.resume ? m.version > a.version : a.version == 0);
  if (adopt && Fits(ep, m.request_id, a, m.initial.size())) {
    a.open.reset();  // a segmented write in progress is against the value this replaces
    auto holder = std::make_shared<net::Frame>(m.initial.begin(), m.initial.end());
    const Stamp stamp{m.resume ? m.version : 1, std::max(a.clock, m.clock) + 1, peer.id,
                      NowNanos()};
    Publish(id, a, stamp, std::move(holder), 0, std::nullopt, {}, ep);
  } else if (adopt) {
    return;  // refused
  }
  a.subscribers.insert(ep);
  peer.declared.insert(id);
  if (m.udp) {
    if (peer.udp_attrs.insert(id).second) ++a.udp_subscribers;
  } else if (peer.udp_attrs.erase(id) != 0) {
    --a.udp_subscribers;
  }
  peer.udp_acked[id] = a.version;  // DECLARED carries the snapshot, reliably
  Send(ep, net::Encode(net::Declared{m.request_id, id, a.version, a.clock, a.writer, a.write_ns,
                                     a.value()}));
}

void Hub::Publish(uint32_t id, Attr& a, const Stamp& stamp, std::shared_ptr<net::Frame> holder,
                  size_t offset, std::optional<uint64_t> hash, ByteSpan codec_value,
                  ucp_ep_h except) {
  // The previous value stays alive until the relayed UPDATE is built: it may be the base.
  std::shared_ptr<net::Frame> prev = std::move(a.holder);
  const size_t prev_offset = a.offset;
  const ByteSpan prev_value = prev ? ByteSpan(*prev).subspan(a.offset) : ByteSpan();
  const std::optional<uint64_t> prev_hash = a.data_hash;
  const uint64_t prev_version = a.version;
  // UDP subscribers of a tensor may get this version as a delta against the previous one:
  // keep it (unless it was overwritten in place, then they get the whole value).
  a.udp_delta.reset();
  if (a.udp_subscribers > 0 && net::UseCodec(a.kind, prev_value.size()) && prev != holder) {
    a.prev_holder = prev;
    a.prev_offset = prev_offset;
    a.prev_version = prev_version;
    a.prev_hash = prev_hash;
  } else {
    a.prev_holder.reset();
    a.prev_version = 0;
  }
  total_value_bytes_ -= prev_value.size();
  a.segment_hashes.clear();  // of the value being replaced (a segmented write sets them after)
  a.holder = std::move(holder);
  a.offset = offset;
  a.data_hash = hash;
  total_value_bytes_ += a.value().size();
  a.version = stamp.version;
  a.clock = stamp.clock;
  a.writer = stamp.writer;
  a.write_ns = stamp.write_ns;

  if (except == kEveryone) {
    // Relayed already over UCX; the UDP subscribers get the whole value now.
    for (ucp_ep_h s : a.subscribers) {
      if (peers_.at(s).id != a.writer && ByUdp(s, id, a.value().size())) SendByUdp(s, id, a);
    }
    return;
  }
  if (!OthersSubscribe(a.subscribers, except)) return;
  net::Update u{id, a.version, a.clock, a.writer, a.write_ns, a.value(), false};
  std::shared_ptr<const net::Frame> relay;
  // A delta goes on as it came: every subscriber holds its base. A whole value is sent as a
  // delta against the previous one when every subscriber holds that, else as it came.
  const bool came_as_delta =
      !codec_value.empty() && !net::PeekCodecValue(codec_value)->frame.is_full_value();
  if (came_as_delta) {
    u.codec = true;
    u.value = codec_value;
  } else if (net::UseCodec(a.kind, a.value().size()) &&
             DeltaForSubscribers(a.value(), a.value().size(), a.version, prev_value,
                                 prev_version)) {
    // A whole value, but every subscriber holds the previous one: send them a delta.
    uint64_t hash_of_value = 0;
    auto f = EncodeUpdateAgainst(encoder_, u, a.value(), prev_value, prev_version, prev_hash,
                                 &hash_of_value);
    if (f.ok()) {
      a.data_hash = hash_of_value;
      relay = std::make_shared<const net::Frame>(std::move(f).value());
    } else {
      Log("could not encode a delta of " + a.object + "." + a.name + ": " + f.status().ToString() +
          "; sending it whole");
      u.codec = !codec_value.empty();
      u.value = u.codec ? codec_value : a.value();
    }
  } else if (!codec_value.empty()) {
    u.codec = true;
    u.value = codec_value;
  }
  if (!relay) relay = std::make_shared<const net::Frame>(net::Encode(u));
  Relay(id, a, relay, except);
}

void Hub::ScheduleResend(ucp_ep_h ep, uint32_t id, size_t value_bytes) {
  // A new version was just sent: its own first wait, from the floor.
  const int64_t next = NowNanos() + ResendFloorNs(value_bytes);
  udp_unacked_[{ep, id}] = Resend{next, 0};
  next_udp_resend_ns_ = std::min(next_udp_resend_ns_, next);
}

bool Hub::ByUdp(ucp_ep_h ep, uint32_t id, size_t value_bytes) {
  auto it = peers_.find(ep);
  return it != peers_.end() && it->second.udp_addr && it->second.udp_attrs.count(id) != 0 &&
         value_bytes <= net::udp::kMaxValueBytes;
}

void Hub::SendByUdp(ucp_ep_h ep, uint32_t id, Attr& a) {
  SendUdpValue(peers_.at(ep), id, a);
  ScheduleResend(ep, id, a.value().size());
}

void Hub::Relay(uint32_t id, Attr& a, std::shared_ptr<const net::Frame> update, ucp_ep_h except) {
  for (ucp_ep_h s : a.subscribers) {
    if (s == except) continue;
    if (ByUdp(s, id, a.value().size())) {
      SendByUdp(s, id, a);
    } else {
      worker_->Send(s, update);
    }
  }
}

std::optional<net::CodecValueInfo> Hub::CheckCodecWrite(ucp_ep_h ep, const Attr& a,
                                                        const net::Write& m) {
  auto info = net::PeekCodecValue(m.value);
  if (!info.ok() || a.kind != ValueKind::kTensor) {
    Reject(
        ep, net::ErrorCode::kMalformed,
        "bad codec value for " + a.object + "." + a.name + ": " +
            (info.ok() ? std::string("the attribute is not a tensor") : info.status().message()));
    return std::nullopt;
  }
  if (info->raw_bytes > options_.max_message_bytes) {
    Reject(ep, net::ErrorCode::kTooLarge,
           "a tensor of " + std::to_string(info->raw_bytes) + " bytes is over the hub's limit of " +
               std::to_string(options_.max_message_bytes) + " (--max-message-bytes)");
    return std::nullopt;
  }
  if (!Fits(ep, m.request_id, a, info->raw_bytes)) return std::nullopt;
  if (!info->frame.is_full_value() &&
      (info->frame.base_version != a.version || a.value().size() != info->raw_bytes)) {
    Refuse(ep, m.request_id, net::ErrorCode::kStaleBase,
           "the delta is against version " + std::to_string(info->frame.base_version) + " of " +
               a.object + "." + a.name + " but the hub has version " + std::to_string(a.version) +
               ": send the whole value");
    return std::nullopt;
  }
  return *info;
}

Status Hub::DecodeInto(const Attr& a, ByteSpan wire, const net::CodecValueInfo& info,
                       std::shared_ptr<net::Frame>* holder, size_t* offset) {
  // A delta in place (MayApplyInPlace); on failure the value is left as it was.
  const bool in_place = !info.frame.is_full_value() && MayApplyInPlace(a);
  std::shared_ptr<net::Frame> out;
  size_t out_offset = 0;
  if (in_place) {
    out = a.holder;
    out_offset = a.offset;
  } else {
    out = std::make_shared<net::Frame>();
    out->resize(info.raw_bytes);
  }
  const std::span<std::byte> dst = std::span<std::byte>(*out).subspan(out_offset, info.raw_bytes);
  EASYSYNC_RETURN_IF_ERROR(net::DecodeCodecValue(decoder_, wire, a.value(), a.data_hash, dst));
  *holder = std::move(out);
  *offset = out_offset;
  return Status::Ok();
}

void Hub::HandleWrite(ucp_ep_h ep, Peer& peer, const net::Write& m, net::Frame&& frame) {
  if (m.attr_id >= attrs_.size() || peer.declared.count(m.attr_id) == 0) {
    return Refuse(ep, m.request_id, net::ErrorCode::kNotFound,
                  "attribute id " + std::to_string(m.attr_id) + " was not declared by this client");
  }
  // A delta relayed before: applied first, it is the base. A segment may go on against
  // segmented writes not applied yet: they are applied in order, and the relay of this one
  // does not wait for them.
  if (!m.segment || !SegmentsMayChain(m.attr_id)) {
    Settle(m.attr_id);
  } else {
    // At most kMaxChained writes of an attribute wait to be applied: a writer faster than the
    // hub's apply makes the hub hold no more than that many writes' frames.
    size_t waiting = static_cast<size_t>(std::count_if(
        pending_.begin(), pending_.end(), [&](const auto& p) { return p->id == m.attr_id; }));
    if (waiting >= kMaxChained) {
      SettleWhere([&](const PendingApply& p) {
        if (p.id != m.attr_id || waiting < kMaxChained) return false;
        --waiting;
        return true;
      });
    }
  }
  Attr& a = attrs_[m.attr_id];
  if (m.segment) return HandleSegment(ep, peer, a, m, std::move(frame));
  a.open.reset();  // a segmented write still in progress is superseded: this one came first
  const Stamp stamp{a.version + 1, std::max(a.clock, m.clock) + 1, peer.id, m.write_ns};
  const auto written = [&] {
    Send(ep, net::Encode(net::Written{m.request_id, m.attr_id, stamp.version, stamp.clock}));
  };
  // Keeps the WRITE frame (and so m.value) alive until the relay is built.
  auto write = std::make_shared<net::Frame>(std::move(frame));
  if (!m.codec) {
    if (!Fits(ep, m.request_id, a, m.value.size())) return;
    // The relay first: it is what the readers wait for; the writer's WRITTEN can follow.
    Publish(m.attr_id, a, stamp, std::move(write), net::kWriteValueOffset, std::nullopt, {}, ep);
    return written();
  }
  const auto info = CheckCodecWrite(ep, a, m);
  if (!info) return;
  const bool delta = !info->frame.is_full_value();
  // Cut through: a delta against exactly the value the hub holds (same version, same
  // verified hash) goes on to the subscribers before the hub applies it, so applying it is
  // off the path from writer to readers. Each receiver verifies the result itself.
  const bool cut_through = delta && a.data_hash && *a.data_hash == info->frame.base_hash;
  if (cut_through) {
    net::Update u{m.attr_id,      stamp.version, stamp.clock,   stamp.writer,
                  stamp.write_ns, m.value,       /*codec=*/true};
    auto relay = std::make_shared<const net::Frame>(net::Encode(u));
    auto p = std::make_shared<PendingApply>();
    p->id = m.attr_id;
    p->stamp = stamp;
    p->value = m.value;
    p->write = std::move(write);
    p->info = *info;
    p->deadline_ns = NowNanos() + kApplyDeadlineNs;
    for (ucp_ep_h s : a.subscribers) {
      // UDP subscribers get the whole value once it is applied (Publish, in ApplyRelayed).
      if (s != ep && !ByUdp(s, m.attr_id, info->raw_bytes)) SendCounted(s, relay, p->sends_left);
    }
    written();
    // Applied once the relay has left (OnIdle): a large delta's relay is a rendezvous that
    // moves only while this thread progresses UCX.
    pending_.push_back(std::move(p));
    return;
  }
  if (!delta && info->raw_bytes >= kWholeInBackgroundBytes) {
    return TakeWholeInBackground(ep, a, m, stamp, *info, std::move(write));
  }
  std::shared_ptr<net::Frame> holder;
  size_t offset = 0;
  Status st = DecodeInto(a, m.value, *info, &holder, &offset);
  if (!st.ok()) {
    return Refuse(ep, m.request_id, net::ErrorCode::kStaleBase,
                  "the value of " + a.object + "." + a.name +
                      " does not verify against the hub's: " + st.message() +
                      "; send the whole value");
  }
  // Here WRITTEN goes first: Publish may re-encode a whole tensor for the subscribers, and the
  // writer need not wait for that.
  written();
  Publish(m.attr_id, a, stamp, std::move(holder), offset, info->frame.result_hash, m.value, ep);
}

void Hub::TakeWholeInBackground(ucp_ep_h ep, Attr& a, const net::Write& m, const Stamp& stamp,
                                const net::CodecValueInfo& info,
                                std::shared_ptr<net::Frame> write) {
  constexpr size_t H = detail::kTensorHeaderBytes;
  net::SegmentInfo s;
  s.index = 0;
  s.count = 1;
  s.segment_bytes = s.bytes = info.raw_bytes - H;
  s.raw_bytes = info.raw_bytes;
  s.tensor_header = m.value.first(H);
  s.frame = m.value.subspan(H);
  s.info = info.frame;
  auto o = std::make_shared<OpenSegments>();
  o->ep = ep;
  o->request_id = m.request_id;
  o->count = 1;
  o->stamp = stamp;
  o->whole = true;
  o->whole_value = m.value;
  o->segments.push_back(s);
  o->writes.push_back(write);  // m.value points into it
  // Relayed as a delta once decoded when Publish would send one.
  o->relay_after =
      OthersSubscribe(a.subscribers, ep) &&
      DeltaForSubscribers(m.value, info.raw_bytes, stamp.version, a.value(), a.version);
  const net::Update u{m.attr_id,      stamp.version, stamp.clock,   stamp.writer,
                      stamp.write_ns, m.value,       /*codec=*/true};
  if (!o->relay_after) {
    for (ucp_ep_h sub : a.subscribers) {
      // UDP subscribers get the value once it is applied (Publish, in ApplyRelayed).
      if (sub == ep || ByUdp(sub, m.attr_id, info.raw_bytes)) continue;
      o->relayed.insert(sub);
      RelayAsItCame(sub, u, write, o->sends_left);
    }
  }
  pending_whole_bytes_ += info.raw_bytes;
  auto p = std::make_shared<PendingApply>();
  p->id = m.attr_id;
  p->stamp = stamp;
  p->sends_left = o->sends_left;
  p->deadline_ns = NowNanos() + kApplyDeadlineNs;
  p->segments = std::move(o);
  pending_.push_back(std::move(p));
}

void Hub::RelayAsItCame(ucp_ep_h ep, const net::Update& u, std::shared_ptr<net::Frame> write,
                        const std::shared_ptr<int>& in_flight) {
  // The value is sent from the WRITE frame (no copy of it on this thread); the send keeps
  // that frame alive. (Where UCX takes no header that long, the frame whole.)
  auto head = std::make_shared<const net::Frame>(net::EncodeUpdateHead(u, u.value.size(), 0));
  if (head->size() > worker_->max_frame_head()) {
    return SendCounted(ep, std::make_shared<const net::Frame>(net::Encode(u)), in_flight);
  }
  ++*in_flight;
  worker_->SendSplit(ep, std::move(head), u.value.data(), u.value.size(), UCS_MEMORY_TYPE_HOST,
                     [in_flight, keep = std::move(write)](ucs_status_t) { --*in_flight; });
}

void Hub::Settle(uint32_t id) {
  SettleWhere([id](const PendingApply& p) { return id == kAll || p.id == id; });
}

bool Hub::SegmentsMayChain(uint32_t id) const {
  return std::all_of(pending_.begin(), pending_.end(), [id](const auto& p) {
    return p->id != id || (p->segments != nullptr && !p->segments->whole);
  });
}

Hub::Stamp Hub::Head(uint32_t id, const Attr& a) const {
  for (auto it = pending_.rbegin(); it != pending_.rend(); ++it) {
    if ((*it)->id == id) return (*it)->stamp;
  }
  return Stamp{a.version, a.clock, a.writer, a.write_ns};
}

bool Hub::StepPending(int64_t now) {
  for (size_t i = 0; i < pending_.size(); ++i) {
    PendingApply& p = *pending_[i];
    // Its relay left, or it is late; and no earlier write of the attribute waits.
    if (*p.sends_left > 0 && now < p.deadline_ns) continue;
    const auto earlier = pending_.begin() + static_cast<ptrdiff_t>(i);
    if (std::any_of(pending_.begin(), earlier, [&](const auto& q) { return q->id == p.id; })) {
      continue;
    }
    // A segmented write goes to the applier once it is free, and is published here once the
    // applier is done with it (without an applier thread: applied here, below).
    if (p.segments && !p.job && applier_) {
      if (!applier_->busy()) {
        p.job = MakeJob(attrs_[p.id], p);
        applier_->Start(p.job);
      }
      continue;
    }
    if (p.job && !applier_->Done(*p.job)) continue;
    const std::shared_ptr<PendingApply> last = std::move(pending_[i]);
    pending_.erase(earlier);
    ApplyRelayed(*last);
    return true;
  }
  return false;
}

void Hub::SettleWhere(FunctionRef<bool(const PendingApply&)> which) {
  for (size_t i = 0; i < pending_.size();) {
    if (!which(*pending_[i])) {
      ++i;
      continue;
    }
    const std::shared_ptr<PendingApply> p = std::move(pending_[i]);
    pending_.erase(pending_.begin() + static_cast<ptrdiff_t>(i));
    ApplyRelayed(*p);
  }
}

void Hub::SendCounted(ucp_ep_h ep, std::shared_ptr<const net::Frame> frame,
                      const std::shared_ptr<int>& in_flight) {
  ++*in_flight;
  worker_->Send(ep, std::move(frame), [in_flight](ucs_status_t) { --*in_flight; });
}

std::shared_ptr<const net::Frame> Hub::WholeUpdate(uint32_t id, const Attr& a) {
  return std::make_shared<const net::Frame>(
      net::Encode(net::Update{id, a.version, a.clock, a.writer, a.write_ns, a.value(), false}));
}

void Hub::ApplyRelayed(PendingApply& p) {
  Attr& a = attrs_[p.id];
  std::shared_ptr<net::Frame> holder;
  size_t offset = 0;
  Status st;
  if (p.segments) {
    // What the applier did not get to (all of it, when it never had the write) is done here.
    std::shared_ptr<ApplyJob> job = std::move(p.job);
    if (job) {
      applier_->Stop(*job);  // after the segment in progress, if it still runs
      st = job->status;
    } else {
      job = MakeJob(a, p);
    }
    if (job->prepare) std::exchange(job->prepare, nullptr)(*job);
    for (size_t i = job->applied.load(); st.ok() && i < job->segments.size(); ++i) {
      st = ApplySegment(decoder_, *job, i);
      if (st.ok()) job->applied.store(i + 1);
    }
    if (st.ok() && job->finish) std::exchange(job->finish, nullptr)(*job);
    if (!st.ok() && job->in_place) {
      // The failed segment was left as it was; those before it go back to the base.
      const Status reverted = RevertApplied(decoder_, *job);
      if (!reverted.ok()) {
        // Cannot happen unless memory was corrupted (each segment verified when applied): a
        // hub whose value is unknown must not serve it. Clients reconnect to the next hub
        // and converge there.
        Log("the value of " + a.object + "." + a.name +
            " could not be restored after a failed apply (" + reverted.ToString() + "); exiting");
        std::abort();
      }
    }
    holder = std::move(p.out);
    offset = p.out_offset;
    if (p.segments->whole) pending_whole_bytes_ -= p.segments->segments.front().raw_bytes;
  } else {
    st = DecodeInto(a, p.value, p.info, &holder, &offset);
  }
  if (!st.ok() && p.segments && p.segments->whole) {
    // Nothing was relayed against it (SegmentsMayChain): the hub keeps its value and version,
    // and the writer hears, as when the hub decoded a whole value at once.
    const OpenSegments& o = *p.segments;
    Log("a whole value of " + a.object + "." + a.name + " from client " +
        std::to_string(p.stamp.writer) + " did not verify (" + st.message() + ")" +
        (o.relay_after ? "" : "; its receivers drop it too"));
    if (peers_.count(o.ep) != 0) {
      Refuse(o.ep, o.request_id, net::ErrorCode::kStaleBase,
             "the value of " + a.object + "." + a.name +
                 " does not verify against the hub's: " + st.message() + "; send the whole value");
    }
    return;
  }
  if (!st.ok()) {
    // Already relayed: its receivers drop it (it does not verify for them either). Publish
    // the value the hub kept at a newer version, so that everyone, the writer too, converges.
    // The attribute's writes relayed after it had it as their base: they go too.
    Stamp top = p.stamp;
    std::erase_if(pending_, [&](const std::shared_ptr<PendingApply>& q) {
      if (q->id != p.id) return false;
      top = q->stamp;
      return true;
    });
    if (a.open) {
      top = a.open->stamp;
      a.open.reset();  // its writer is refused at its next segment and sends the whole value
    }
    Log("a delta of " + a.object + "." + a.name + " from client " + std::to_string(p.stamp.writer) +
        " did not verify after it was relayed (" + st.message() + "); republishing version " +
        std::to_string(a.version) + "'s value");
    const Stamp again{top.version + 1, top.clock + 1, a.writer, NowNanos()};
    a.version = again.version;
    a.clock = again.clock;
    a.write_ns = again.write_ns;
    Relay(p.id, a, WholeUpdate(p.id, a), nullptr);
    return;
  }
  // The delta was relayed already: Publish sends it to no one again (UDP subscribers aside).
  std::shared_ptr<net::Frame> old = p.segments ? a.holder : nullptr;
  const bool one_frame = p.segments && p.segments->whole;
  std::optional<uint64_t> hash;  // of the whole value's data, when one frame covers it
  if (!p.segments) hash = p.info.frame.result_hash;
  if (one_frame) hash = p.segments->segments.front().info.result_hash;
  Publish(p.id, a, p.stamp, std::move(holder), offset, hash, ByteSpan(), kEveryone);
  if (!p.segments) return;
  a.segment_hashes.clear();
  if (one_frame) {
    OpenSegments& o = *p.segments;
    if (peers_.count(o.ep) != 0) {
      Send(o.ep, net::Encode(net::Written{o.request_id, p.id, p.stamp.version, p.stamp.clock}));
    }
    if (o.relay_after) {
      const net::Update u{p.id,           p.stamp.version,  p.stamp.clock,
                          p.stamp.writer, p.stamp.write_ns, o.whole_value,
                          /*codec=*/true};
      for (ucp_ep_h sub : a.subscribers) {
        if (sub == o.ep || ByUdp(sub, p.id, a.value().size())) continue;
        o.relayed.insert(sub);
        if (o.relay) {
          worker_->Send(sub, o.relay);
        } else {
          RelayAsItCame(sub, u, o.writes.front(), o.sends_left);
        }
      }
    }
  } else {
    for (const net::SegmentInfo& s : p.segments->segments) {
      a.segment_hashes.push_back(s.info.result_hash);
    }
  }
  if (detail::SoleOwner(old) && old != a.holder && !a.spare &&
      total_value_bytes_ + spare_bytes_ + old->size() <= options_.max_total_value_bytes) {
    spare_bytes_ += old->size();
    a.spare = std::move(old);
  }
  // Those that did not get every segment (they joined or resynced meanwhile) get it whole.
  std::shared_ptr<const net::Frame> whole;
  for (ucp_ep_h s : a.subscribers) {
    if (s == p.segments->ep || p.segments->relayed.count(s) != 0 ||
        ByUdp(s, p.id, a.value().size())) {
      continue;
    }
    if (!whole) whole = WholeUpdate(p.id, a);
    worker_->Send(s, whole);
  }
}

void Hub::HandleSegment(ucp_ep_h ep, Peer& peer, Attr& a, const net::Write& m, net::Frame&& frame) {
  auto s = net::PeekSegmentValue(m.value);
  if (!s.ok() || a.kind != ValueKind::kTensor) {
    if (a.open && a.open->ep == ep) a.open.reset();
    return Reject(
        ep, net::ErrorCode::kMalformed,
        "bad segment value for " + a.object + "." + a.name + ": " +
            (s.ok() ? std::string("the attribute is not a tensor") : s.status().message()));
  }
  if (s->raw_bytes > options_.max_message_bytes) {
    if (a.open && a.open->ep == ep) a.open.reset();
    return Reject(ep, net::ErrorCode::kTooLarge,
                  "a tensor of " + std::to_string(s->raw_bytes) +
                      " bytes is over the hub's limit of " +
                      std::to_string(options_.max_message_bytes) + " (--max-message-bytes)");
  }
  const auto stale = [&](const std::string& why) {
    if (a.open && a.open->ep == ep) a.open.reset();
    Refuse(ep, m.request_id, net::ErrorCode::kStaleBase,
           "segment " + std::to_string(s->index) + " of " + a.object + "." + a.name + ": " + why +
               ": send the whole value");
  };
  // Against the latest write, applied or not (the size and header are the same either way).
  const Stamp head = Head(m.attr_id, a);
  if ((!s->info.is_full_value() && s->info.base_version != head.version) ||
      a.value().size() != s->raw_bytes || !net::SameTensorHeader(a.value(), s->tensor_header)) {
    return stale("its base is version " + std::to_string(s->info.base_version) +
                 " but the hub has version " + std::to_string(head.version));
  }
  if (s->index == 0) {
    if (!Fits(ep, m.request_id, a, s->raw_bytes)) return;
    auto o = std::make_shared<OpenSegments>();  // supersedes one in progress
    o->ep = ep;
    o->request_id = m.request_id;
    o->count = s->count;
    o->stamp = Stamp{head.version + 1, std::max(head.clock, m.clock) + 1, peer.id, m.write_ns};
    for (ucp_ep_h sub : a.subscribers) {
      if (sub != ep && !ByUdp(sub, m.attr_id, s->raw_bytes)) o->relayed.insert(sub);
    }
    a.open = std::move(o);
  } else if (!a.open || a.open->ep != ep || a.open->request_id != m.request_id ||
             a.open->count != s->count || a.open->segments.size() != s->index) {
    return stale("it does not continue a segmented write in progress");
  }
  OpenSegments& o = *a.open;
  net::Update u{m.attr_id,        o.stamp.version, o.stamp.clock, o.stamp.writer,
                o.stamp.write_ns, m.value,         /*codec=*/true};
  u.segment = true;
  auto relay = std::make_shared<const net::Frame>(net::Encode(u));
  for (ucp_ep_h sub : o.relayed) SendCounted(sub, relay, o.sends_left);
  o.segments.push_back(*s);  // its spans point into the frame's buffer, which moves along
  o.writes.push_back(std::make_shared<net::Frame>(std::move(frame)));
  if (o.segments.size() < o.count) return;
  Send(ep, net::Encode(net::Written{m.request_id, m.attr_id, o.stamp.version, o.stamp.clock}));
  auto p = std::make_shared<PendingApply>();
  p->id = m.attr_id;
  p->stamp = o.stamp;
  p->sends_left = o.sends_left;
  p->deadline_ns = NowNanos() + kApplyDeadlineNs;
  p->segments = std::move(a.open);
  pending_.push_back(std::move(p));
}

std::shared_ptr<ApplyJob> Hub::MakeJob(Attr& a, PendingApply& p) {
  const OpenSegments& o = *p.segments;
  const ByteSpan base = a.value();
  constexpr size_t H = detail::kTensorHeaderBytes;
  // In place (MayApplyInPlace) when every segment can be undone.
  const bool in_place = MayApplyInPlace(a) && std::none_of(o.segments.begin(), o.segments.end(),
                                                           [](const net::SegmentInfo& s) {
                                                             return s.info.is_full_value();
                                                           });
  auto job = std::make_shared<ApplyJob>();
  std::shared_ptr<net::Frame> out;
  size_t out_offset = 0;
  if (in_place) {
    out = a.holder;
    out_offset = a.offset;
  } else if (o.whole) {
    // Its own tensor header and size (the base may be another tensor, or none). The buffer is
    // made by whoever applies the job: the applier thread, off this one (in builds without
    // optimization, sizing a vector of 1 GiB takes seconds).
    out = std::make_shared<net::Frame>();
    job->prepare = [frame = out.get(), s = o.segments.front()](ApplyJob& j) {
      frame->resize(s.raw_bytes);
      std::memcpy(frame->data(), s.tensor_header.data(), H);
      j.out = reinterpret_cast<uint8_t*>(frame->data()) + H;
    };
    if (o.relay_after) {
      // The subscribers' UPDATE: a delta against the value they hold (base, kept alive by the
      // job), made here rather than on the progress thread. Not made: the value as it came.
      job->finish = [segments = p.segments.get(), id = p.id, frame = out.get(), base,
                     base_version = a.version, base_hash = a.data_hash](ApplyJob&) {
        const Stamp& st = segments->stamp;
        codec::Encoder encoder;
        uint64_t hash_of_value = 0;
        auto f = EncodeUpdateAgainst(
            encoder, net::Update{id, st.version, st.clock, st.writer, st.write_ns, {}, true},
            ByteSpan(*frame), base, base_version, base_hash, &hash_of_value);
        if (f.ok()) segments->relay = std::make_shared<const net::Frame>(std::move(f).value());
      };
    }
  } else {
    // Into the buffer the value before this one used, when free.
    if (a.spare) spare_bytes_ -= a.spare->size();
    out = std::move(a.spare);
    if (!detail::SoleOwner(out) || out->size() != base.size()) {
      out = std::make_shared<net::Frame>(base.size());
    }
    std::memcpy(out->data(), base.data(), H);
  }
  const bool known_base = a.segment_hashes.size() == o.count;
  for (uint32_t i = 0; i < o.count; ++i) {
    const net::SegmentInfo& s = o.segments[i];
    job->segments.push_back(
        {reinterpret_cast<const uint8_t*>(s.frame.data()), s.frame.size(), s.offset, s.bytes,
         known_base ? std::optional<uint64_t>(a.segment_hashes[i]) : std::nullopt});
  }
  // (A whole value has no base: full frames do not read it.)
  job->base = base.size() >= H ? reinterpret_cast<const uint8_t*>(base.data()) + H : nullptr;
  if (!job->prepare) job->out = reinterpret_cast<uint8_t*>(out->data()) + out_offset + H;
  job->in_place = in_place;
  // The frames, the value applied to (no one replaces it before the job ended: that takes
  // a Settle, which ends it first; no one reads it meanwhile either, in place) and the buffer
  // written.
  struct Keep {
    std::shared_ptr<OpenSegments> segments;
    std::shared_ptr<net::Frame> base, out;
  };
  job->keep = std::make_shared<const Keep>(Keep{p.segments, a.holder, out});
  p.out = std::move(out);
  p.out_offset = out_offset;
  return job;
}

void Hub::HandleResync(ucp_ep_h ep, Peer& peer, const net::Resync& m) {
  if (m.attr_id >= attrs_.size() || peer.declared.count(m.attr_id) == 0) {
    return Refuse(
        ep, 0, net::ErrorCode::kNotFound,
        "RESYNC of attribute id " + std::to_string(m.attr_id) + ", not declared by this client");
  }
  Settle(m.attr_id);
  const Attr& a = attrs_[m.attr_id];
  if (a.open) a.open->relayed.erase(ep);  // it gets the whole value once that is applied
  if (a.version == 0) return;
  worker_->Send(ep, WholeUpdate(m.attr_id, a));
}

bool Hub::OnUdp() {
  std::array<std::byte, net::udp::kMaxDatagram + 1> buf;
  bool any = false;
  for (int i = 0; i < 256; ++i) {  // bounded: UCX gets its turn
    net::UdpAddress from;
    const auto n = udp_->Receive(buf, &from);
    if (!n) break;
    any = true;
    const ByteSpan datagram(buf.data(), *n);
    if (net::admission::IsAdmission(datagram)) {
      HandleAdmission(from, datagram);
    } else {
      HandleDatagram(from, datagram);
    }
  }
  return any;
}

void Hub::HandleAdmission(const net::UdpAddress& from, ByteSpan datagram) {
  namespace adm = net::admission;
  auto in = adm::Decode(datagram);
  const auto address = net::AddressOf(from.addr);
  if (!in.ok() || !address || (in->type != adm::Type::kKnock && in->type != adm::Type::kProof)) {
    return DroppedBadDatagram(from);
  }
  const auto now = std::chrono::steady_clock::now();
  adm::Message out;
  out.nonce = in->nonce;
  if (in->type == adm::Type::kProof && cookies_.Valid(from.addr, in->nonce, in->cookie, now)) {
    if (net::ProofMatches(in->proof, adm::Prove(options_.token, in->nonce, in->cookie))) {
      out.type = adm::Type::kAdmitted;
      if (options_.admission != HubOptions::Admission::kOff && !LetInUnasked(*address)) {
        if (Status s = Admit(*address); !s.ok()) {
          Log("could not admit " + address->ToString() + ": " + s.ToString());
          return;
        }
      }
    } else {
      out.type = adm::Type::kDenied;
      Log("refused admission to " + address->ToString() + ": wrong token");
    }
  } else {
    // A KNOCK, or a PROOF whose cookie is not (or no longer) this hub's: a new challenge.
    out.type = adm::Type::kChallenge;
    out.cookie = cookies_.Make(from.addr, in->nonce, now);
  }
  const std::vector<std::byte> reply = adm::Encode(out);
  udp_->Send(ByteSpan(reply.data(), reply.size()), &from);
}

Status Hub::Admit(const net::IpAddress& a) {
  auto it = std::find(admitted_.begin(), admitted_.end(), a);
  const bool known = it != admitted_.end();
  if (known) admitted_.erase(it);
  admitted_.push_back(a);  // the most recent last
  if (known) return Status::Ok();
  if (admitted_.size() > net::kMaxAllowed - 2) admitted_.erase(admitted_.begin());
  Log("admitted " + a.ToString());
  return FilterListeners();
}

std::vector<net::IpAddress> Hub::Unasked() const {
  if (options_.admission != HubOptions::Admission::kOn) return {};
  net::IpAddress v4, v6;
  v4.bytes = {127, 0, 0, 1};
  v6.v6 = true;
  v6.bytes[15] = 1;
  return {v4, v6};
}

bool Hub::LetInUnasked(const net::IpAddress& a) const {
  const auto unasked = Unasked();
  return std::find(unasked.begin(), unasked.end(), a) != unasked.end();
}

Status Hub::FilterListeners() {
  std::vector<net::IpAddress> allowed = admitted_;
  for (const net::IpAddress& a : Unasked()) allowed.push_back(a);
  const std::vector<sock_filter> program = net::AllowOnly(allowed);
  // UCX's connection manager's listener, on the hub's port (the connections it accepts
  // inherit the filter). Not the TCP transport's listeners: a client's transport connects
  // from each of its interfaces' addresses, of which a knock proves only one.
  size_t filtered = 0;
  for (int fd : net::TcpSocketsOnPort(port())) {
    if (!net::IsListening(fd)) continue;
    EASYSYNC_RETURN_IF_ERROR(net::AttachFilter(fd, program));
    ++filtered;
  }
  if (filtered == 0) {  // closed, not open, when it cannot filter
    return Status::IoError("admission: no listening TCP socket found on port " +
                           std::to_string(port()) +
                           " in /proc/self/fd to filter (--admission off runs without it)");
  }
  return Status::Ok();
}

void Hub::SendDatagram(Peer& peer, net::udp::Datagram& d) {
  if (!peer.udp_addr) return;
  if (d.type == net::udp::Type::kData && !d.piggy_ack && acks_due_ns_ != 0) {
    // An ACK owed to this peer rides along: no datagram (and no wake-up) of its own.
    auto owed = std::find_if(acks_owed_.begin(), acks_owed_.end(),
                             [&](const auto& e) { return e.first == peer.id; });
    if (owed != acks_owed_.end()) {
      d.piggy_ack = true;
      d.ack = owed->second;
      acks_owed_.erase(owed);
      if (acks_owed_.empty()) acks_due_ns_ = 0;
    }
  }
  d.direction = net::udp::Direction::kHubToClient;
  d.client_id = peer.id;
  d.counter = ++peer.udp_counter;
  std::array<std::byte, net::udp::kMaxDatagram> out;
  const size_t n = net::udp::Seal(peer.udp_key, d, out);
  udp_->Send(ByteSpan(out.data(), n), &*peer.udp_addr);
}

void Hub::SendUdpValue(Peer& peer, uint32_t id, Attr& a) {
  net::udp::DataHeader h;
  h.attr_id = id;
  h.seq = a.version;
  h.clock = a.clock;
  h.writer = a.writer;
  h.write_ns = a.write_ns;
  ByteSpan value = a.value();
  // A tensor goes as a delta to a subscriber that acknowledged the version before: encoded
  // once per version, only against a base that subscriber said it holds.
  const ByteSpan prev = a.prev_value();
  if (net::UseCodec(a.kind, value.size()) && a.prev_holder && a.prev_version != 0 &&
      peer.udp_acked[id] == a.prev_version && prev.size() == value.size()) {
    if (!a.udp_delta) {
      std::vector<std::byte> out(net::CodecValueBound(value));
      auto e =
          net::EncodeCodecValue(encoder_, value, prev, a.prev_version, a.prev_hash, a.version, out);
      if (e.ok() && e->delta && e->bytes < value.size()) {
        out.resize(e->bytes);
        a.udp_delta = std::make_shared<const std::vector<std::byte>>(std::move(out));
      } else {
        a.udp_delta = std::make_shared<const std::vector<std::byte>>();  // none: send whole
      }
    }
    if (!a.udp_delta->empty()) {
      value = *a.udp_delta;
      h.codec = true;
    }
  }
  (void)net::udp::Fragment(h, value, [&](const net::udp::Data& fragment) {
    net::udp::Datagram d;
    d.type = net::udp::Type::kData;
    d.data = fragment;
    SendDatagram(peer, d);
  });
}

void Hub::DroppedBadDatagram(const net::UdpAddress& from) {
  ++udp_dropped_bad_;
  udp_last_bad_from_ = from.ToString();
  const int64_t now = NowNanos();
  if (now - udp_drop_logged_ns_ < 60'000'000'000 && udp_drop_logged_ns_ != 0) return;
  udp_drop_logged_ns_ = now;
  Log("dropped " + std::to_string(udp_dropped_bad_ - udp_dropped_logged_) +
      " UDP datagram(s) that did not authenticate or were malformed (the last from " +
      udp_last_bad_from_ + ")");
  udp_dropped_logged_ = udp_dropped_bad_;
}

void Hub::OnUdpAck(ucp_ep_h ep, Peer& peer, const net::udp::Ack& ack) {
  if (peer.declared.count(ack.attr_id) == 0) return;
  Settle(ack.attr_id);  // acknowledged against the latest version
  uint64_t& acked = peer.udp_acked[ack.attr_id];
  acked = std::max(acked, ack.seq);
  if (acked >= attrs_[ack.attr_id].version) udp_unacked_.erase({ep, ack.attr_id});
}

void Hub::HandleDatagram(const net::UdpAddress& from, ByteSpan datagram) {
  namespace udp = net::udp;
  // Whose key: the client id in the clear, then the MAC under that client's key, then the
  // replay window. Anything else is dropped without an answer (and counted).
  auto id = udp::PeekClientId(datagram);
  auto ep = id.ok() ? by_id_.find(*id) : by_id_.end();
  if (ep == by_id_.end()) {
    return DroppedBadDatagram(from);
  }
  Peer& peer = peers_.at(ep->second);
  auto d = udp::Open(peer.udp_key, datagram, udp::Direction::kClientToHub, udp::kMaxValueBytes);
  if (!d.ok() || !peer.udp_replay.Accept(d->counter)) {
    return DroppedBadDatagram(from);
  }
  peer.udp_addr = from;  // authenticated: follow the client's address (NAT rebinding)
  switch (d->type) {
    case udp::Type::kRegister: {
      udp::Datagram r;
      r.type = udp::Type::kRegistered;
      return SendDatagram(peer, r);
    }
    case udp::Type::kAck:
      return OnUdpAck(ep->second, peer, d->ack);
    case udp::Type::kData:
      break;
    default:
      return;
  }
  if (d->piggy_ack) OnUdpAck(ep->second, peer, d->ack);
  const uint32_t attr_id = d->data.header.attr_id;
  if (peer.declared.count(attr_id) == 0) {
    return DroppedBadDatagram(from);
  }
  auto done = reassembler_.Add((uint64_t{peer.id} << 32) | attr_id, d->data);
  if (!done) return;
  // A write by datagram: latest wins by the writer's own sequence; an older or repeated one
  // is acknowledged again (its ACK may have been lost) but never applied.
  const uint64_t wseq = done->header.seq;
  udp::Datagram ack;
  ack.type = udp::Type::kAck;
  ack.ack.attr_id = attr_id;
  ack.ack.seq = wseq;
  if (wseq <= peer.udp_wseq[attr_id]) {
    if (wseq == peer.udp_wseq[attr_id]) {
      ack.ack.version = peer.udp_wversion[attr_id];
      SendDatagram(peer, ack);
    }
    return;
  }
  Settle(attr_id);  // a write by datagram applies against the latest value
  Attr& a = attrs_[attr_id];
  std::shared_ptr<net::Frame> holder;
  size_t offset = 0;
  std::optional<uint64_t> hash;
  if (done->header.codec) {
    // A tensor delta against the version this writer's last write got: applied only if the
    // hub still holds exactly that. Otherwise ACK with version 0: "send it whole".
    auto info = net::PeekCodecValue(done->value);
    const bool usable =
        info.ok() && a.kind == ValueKind::kTensor && info->raw_bytes <= net::udp::kMaxValueBytes &&
        (info->frame.is_full_value() ||
         (info->frame.base_version == a.version && a.value().size() == info->raw_bytes &&
          (!a.data_hash || *a.data_hash == info->frame.base_hash)));
    if (!usable || !DecodeInto(a, done->value, *info, &holder, &offset).ok()) {
      ack.ack.version = 0;
      return SendDatagram(peer, ack);
    }
    hash = info->frame.result_hash;
  } else {
    holder = std::make_shared<net::Frame>(done->value.begin(), done->value.end());
  }
  if (total_value_bytes_ + pending_whole_bytes_ - a.value().size() + (holder->size() - offset) >
      options_.max_total_value_bytes) {
    return;  // over the hub's bound: dropped (best effort); the writer sends it again
  }
  const Stamp stamp{a.version + 1, std::max(a.clock, done->header.clock) + 1, peer.id,
                    done->header.write_ns};
  peer.udp_wseq[attr_id] = wseq;
  peer.udp_wversion[attr_id] = stamp.version;
  peer.udp_acked[attr_id] = stamp.version;
  ack.ack.version = stamp.version;
  if (net::UseCodec(a.kind, holder->size() - offset)) {
    SendDatagram(peer, ack);  // at once: the writer's next delta needs this version as base
  } else {
    acks_owed_.emplace_back(peer.id, ack.ack);
    if (acks_due_ns_ == 0) acks_due_ns_ = NowNanos() + kAckDelayNs;
  }
  Publish(attr_id, a, stamp, std::move(holder), offset, hash, {}, ep->second);
}

void Hub::SendOwedAcks() {
  for (const auto& [client, ack] : acks_owed_) {
    auto ep = by_id_.find(client);
    if (ep == by_id_.end()) continue;
    net::udp::Datagram d;
    d.type = net::udp::Type::kAck;
    d.ack = ack;
    SendDatagram(peers_.at(ep->second), d);
  }
  acks_owed_.clear();
  acks_due_ns_ = 0;
}

}  // namespace easysync::hub
