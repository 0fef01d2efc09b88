// The hub (see hub.h). Runs entirely on the UCX progress thread.
#include "hub/hub.h"

#include <time.h>

#include <cstdio>

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

constexpr int64_t kRejectGraceNs = 1'000'000'000;  // a rejected peer's ERROR gets this long

}  // namespace

Result<std::unique_ptr<Hub>> Hub::Start(const HubOptions& options) {
  if (options.token.empty()) return Status::InvalidArgument("the hub needs a token");
  std::unique_ptr<Hub> hub(new Hub(options));
  net::UcxOptions uo;
  uo.transports = options.ucx_transports;
  uo.spin = options.spin;
  uo.max_frame_bytes = options.max_message_bytes;
  uo.who = "easysync-hub";
  EASYSYNC_ASSIGN_OR_RETURN(hub->worker_, net::UcxWorker::Create(uo, hub.get()));
  EASYSYNC_RETURN_IF_ERROR(hub->worker_->Listen(options.bind, options.port));
  hub->worker_->Start();
  return hub;
}

Hub::~Hub() {
  if (worker_) worker_->Stop();  // before reset(): the thread still uses worker_
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
    worker_->Close(ep, /*flush=*/false);
    return;
  }
  auto it = peers_.find(ep);
  if (it == peers_.end()) return;
  if (it->second.state == PeerState::kReady) {
    Log("client " + std::to_string(it->second.id) + " (" + it->second.address +
        ") disconnected: " + ucs_status_string(status));
  }
  Drop(ep, /*flush=*/false);
}

void Hub::Drop(ucp_ep_h ep, bool flush) {
  auto it = peers_.find(ep);
  if (it != peers_.end()) {
    if (it->second.state != PeerState::kReady) --handshaking_;
    for (uint32_t a : it->second.declared) attrs_[a].subscribers.erase(ep);
    peers_.erase(it);
  }
  closing_.erase(ep);
  worker_->Close(ep, flush);
}

void Hub::Reject(ucp_ep_h ep, net::ErrorCode code, const std::string& why) {
  auto it = peers_.find(ep);
  if (it == peers_.end()) return;
  Log("rejected " +
      (it->second.id != 0 ? "client " + std::to_string(it->second.id) + " (" : "peer (") +
      it->second.address + "): " + why);
  if (it->second.state != PeerState::kReady) --handshaking_;
  for (uint32_t a : it->second.declared) attrs_[a].subscribers.erase(ep);
  peers_.erase(it);
  closing_[ep] = NowNanos() + kRejectGraceNs;
  net::ErrorMsg err{code, /*fatal=*/true, 0, why};
  // Close only once the ERROR reached the peer (a local send completion is not enough), or
  // at the grace deadline (OnIdle) if the peer does not take it.
  worker_->Send(ep, std::make_shared<const net::Frame>(net::Encode(err)));
  worker_->Flush(ep, [this, ep](ucs_status_t) {
    if (closing_.erase(ep) != 0) worker_->Close(ep, /*flush=*/false);
  });
}

int Hub::OnIdle() {
  if (closing_.empty() && handshaking_ == 0) return -1;
  const int64_t now = NowNanos();
  for (auto it = closing_.begin(); it != closing_.end();) {
    if (it->second <= now) {
      worker_->Close(it->first, /*flush=*/false);
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
  return 20;
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
      Log("client " + std::to_string(peer.id) + " (" + peer.address + ") connected");
      net::Welcome w{peer.id, NowNanos(),
                     net::ComputeProof(options_.token, net::kHubProofLabel, peer.client_nonce,
                                       peer.hub_nonce)};
      return Send(ep, net::Encode(w));
    }
    case PeerState::kReady: {
      if (h.type == MsgType::kDeclare) {
        auto m = net::DecodeDeclare(payload);
        if (!m.ok()) return Reject(ep, net::ErrorCode::kMalformed, m.status().message());
        return HandleDeclare(ep, peer, *m);
      }
      if (h.type == MsgType::kError) {
        auto m = net::DecodeError(payload);
        Log("client " + std::to_string(peer.id) +
            " reported an error: " + (m.ok() ? m->text : m.status().message()));
        if (!m.ok() || m->fatal) Drop(ep, /*flush=*/false);
        return;
      }
      return unexpected();
    }
  }
}

void Hub::HandleDeclare(ucp_ep_h ep, Peer& peer, const net::Declare& m) {
  auto key = std::make_pair(m.object, m.attribute);
  auto found = attr_index_.find(key);
  uint32_t id;
  if (found == attr_index_.end()) {
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
      net::ErrorMsg err{net::ErrorCode::kTypeMismatch, false, m.request_id,
                        m.object + "." + m.attribute + " is declared as " +
                            std::string(ValueKindName(m.kind)) + " here but as " +
                            std::string(ValueKindName(attrs_[id].kind)) + " in the cluster"};
      return Send(ep, net::Encode(err));
    }
  }
  Attr& a = attrs_[id];
  if (m.has_initial && a.version == 0) {  // joining never resets: only the first value counts
    a.version = 1;
    a.clock = a.clock + 1;
    a.writer = peer.id;
    a.write_ns = NowNanos();
    a.frame = std::make_shared<const net::Frame>(
        net::Encode(net::Update{id, a.version, a.clock, a.writer, a.write_ns, m.initial}));
    for (ucp_ep_h s : a.subscribers) worker_->Send(s, a.frame);
  }
  a.subscribers.insert(ep);
  peer.declared.insert(id);
  ByteSpan value;
  if (a.frame) value = ByteSpan(*a.frame).subspan(net::kUpdateValueOffset);
  Send(ep, net::Encode(
               net::Declared{m.request_id, id, a.version, a.clock, a.writer, a.write_ns, value}));
}

void Hub::HandleWrite(ucp_ep_h ep, Peer& peer, const net::Write& m, net::Frame&&) {
  if (m.attr_id >= attrs_.size() || peer.declared.count(m.attr_id) == 0) {
    net::ErrorMsg err{
        net::ErrorCode::kNotFound, false, m.request_id,
        "attribute id " + std::to_string(m.attr_id) + " was not declared by this client"};
    return Send(ep, net::Encode(err));
  }
  Attr& a = attrs_[m.attr_id];
  a.version += 1;
  a.clock = std::max(a.clock, m.clock) + 1;
  a.writer = peer.id;
  a.write_ns = m.write_ns;
  a.frame = std::make_shared<const net::Frame>(
      net::Encode(net::Update{m.attr_id, a.version, a.clock, a.writer, a.write_ns, m.value}));
  Send(ep, net::Encode(net::Written{m.request_id, m.attr_id, a.version, a.clock}));
  for (ucp_ep_h s : a.subscribers) {
    if (s != ep) worker_->Send(s, a.frame);
  }
}

}  // namespace easysync::hub
