// The network client's best-effort UDP path (docs/net_protocol.md, "UDP"): registering the
// client's address, datagram writes resent until acknowledged, received values reassembled
// and applied if newer, ACKs that ride on datagrams going anyway.
#include "net/net_client_impl.h"

namespace easysync::net {

void NetClient::StartUdp() {
  {
    std::lock_guard<std::mutex> lock(udp_mu_);
    udp_key_ = udp::DeriveKey(options_.token, nonce_, hub_nonce_);
    udp_counter_ = 0;
    acks_owed_.clear();
    acks_due_ns_ = 0;
  }
  udp_replay_ = udp::ReplayWindow();
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
  std::lock_guard<std::mutex> lock(udp_mu_);
  SendDatagramLocked(d);
}

void NetClient::SendDatagramLocked(udp::Datagram& d) {
  if (d.type == udp::Type::kData && !d.piggy_ack && !acks_owed_.empty()) {
    // An owed ACK rides along: no datagram (and no wake-up at the hub) of its own.
    const auto [attr_id, replica] = *acks_owed_.begin();
    acks_owed_.erase(acks_owed_.begin());
    if (acks_owed_.empty()) acks_due_ns_ = 0;
    d.piggy_ack = true;
    d.ack = udp::Ack{attr_id, replica->version.load(), 0};
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
      auto e = EncodeCodecValue(coder_.encoder, value, ByteSpan(*base).subspan(base_offset),
                                base_version, base_hash, base_version + 1, {Scratch(bound), bound});
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
  // Sent from this thread: waking the progress thread to send it would cost more than the
  // datagram. The progress thread resends it if no ACK comes; it only needs telling when it
  // has no resend check scheduled (it may be asleep for up to a second).
  SendUdpWrite(r);
  if (next_udp_ns_.load() == INT64_MAX) {
    worker_->Post([this] {
      int64_t next = next_udp_ns_.load();
      const int64_t want = MonotonicNanos() + kUdpResendNs;
      while (want < next && !next_udp_ns_.compare_exchange_weak(next, want)) {
      }
    });
  }
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
  auto frame = std::make_shared<Frame>(done->value.begin(), done->value.end());
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
  std::lock_guard<std::mutex> lock(udp_mu_);
  acks_owed_[attr_id] = &r;
  if (UseCodec(r.kind, r.info.bytes)) {
    SendOwedAcksLocked();
  } else if (acks_due_ns_ == 0) {
    acks_due_ns_ = MonotonicNanos() + kAckDelayNs;
  }
}

void NetClient::SendOwedAcks() {
  std::lock_guard<std::mutex> lock(udp_mu_);
  SendOwedAcksLocked();
}

void NetClient::SendOwedAcksLocked() {
  for (const auto& [attr_id, replica] : acks_owed_) {
    udp::Datagram ack;
    ack.type = udp::Type::kAck;
    ack.ack.attr_id = attr_id;
    ack.ack.seq = replica->version.load();
    SendDatagramLocked(ack);
  }
  acks_owed_.clear();
  acks_due_ns_ = 0;
}

}  // namespace easysync::net
