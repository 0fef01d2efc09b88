// The hub of network mode: authenticates clients, keeps the latest value of every attribute
// for late joiners, orders writes per attribute and relays them (docs/net_protocol.md).
//
// Everything the hub does runs on its UCX progress thread, so its tables need no locks; only
// applying a segmented write to the hub's copy runs on a thread of its own (BackgroundApply),
// on buffers no one else touches meanwhile.
// Thread-safety: Start/Stop/port from the owning thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "easysync/codec.h"
#include "easysync/sole_owner.h"
#include "hub/background_apply.h"
#include "net/admission.h"
#include "net/protocol.h"
#include "net/tcp_filter.h"
#include "net/ucx_worker.h"
#include "net/udp_socket.h"
#include "net/udp_wire.h"
#include "net/wire_value.h"

namespace easysync::hub {

struct HubOptions {
  std::string bind = "127.0.0.1";
  uint16_t port = 5000;  // 0: any free port (see Hub::port())
  std::string token;     // REQUIRES: not empty
  uint64_t max_message_bytes = net::kDefaultMaxMessageBytes;
  std::string ucx_transports;
  // A peer that has not authenticated by then is dropped (it holds a connection slot).
  std::chrono::milliseconds handshake_timeout{10000};
  // How long the progress thread keeps polling (yielding the CPU between polls) after the
  // last message before it sleeps on UCX's wake-up fd; negative: net::kDefaultSpin.
  std::chrono::nanoseconds spin{-1};
  // Bounds on what the hub keeps: the latest values of all attributes together, and the
  // number of attributes. A declare or write past them is refused (that request only).
  uint64_t max_total_value_bytes = 16ull << 30;
  uint32_t max_attributes = 1u << 20;
  // Segmented writes are applied to the hub's copy on a thread of its own (BackgroundApply);
  // false: on the progress thread, once a write's relay has left (a hub kept to one CPU).
  bool apply_thread = true;
  // Who may open a TCP connection to the hub (UCX's connection setup, then the handshake):
  // kOn, addresses that proved the token over UDP (net/admission.h) and the loopback
  // addresses 127.0.0.1 and ::1; kStrict, only the former; kOff, any address.
  enum class Admission { kOff, kOn, kStrict };
  Admission admission = Admission::kOn;
};

class Hub final : public net::UcxWorker::Handler {
 public:
  static Result<std::unique_ptr<Hub>> Start(const HubOptions& options);
  ~Hub() override;  // stops serving and closes every peer

  uint16_t port() const { return worker_->listen_port(); }
  const std::string& ucx_description() const { return worker_->description(); }

 private:
  enum class PeerState { kNew, kChallenged, kReady };
  struct Peer {
    uint32_t id = 0;
    std::string address;
    PeerState state = PeerState::kNew;
    int64_t connected_ns = 0;
    net::Nonce client_nonce{}, hub_nonce{};
    std::set<uint32_t> declared;  // attribute ids
    // The UDP path (best effort): the key derived in the handshake, where the client's
    // datagrams come from, and per attribute what it acknowledged.
    net::udp::Key udp_key{};
    std::optional<net::UdpAddress> udp_addr;
    net::udp::ReplayWindow udp_replay;
    uint64_t udp_counter = 0;
    std::set<uint32_t> udp_attrs;               // declared with kDeclareUdp: relayed by UDP
    std::map<uint32_t, uint64_t> udp_acked;     // the version it holds
    std::map<uint32_t, uint64_t> udp_wseq;      // its last write accepted (its own seq)
    std::map<uint32_t, uint64_t> udp_wversion;  // ... and the version that write got
  };
  struct OpenSegments;
  struct Attr {
    std::string object, name;
    ValueKind kind;
    uint64_t version = 0, clock = 0;
    uint32_t writer = 0;
    int64_t write_ns = 0;
    // The latest value, raw: holder's bytes from offset on (version > 0). The holder is the
    // message that brought it or a buffer the hub decoded it into; a delta is applied in
    // place when no send still holds it.
    std::shared_ptr<net::Frame> holder;
    size_t offset = 0;
    std::optional<uint64_t> data_hash;  // XXH3-64 of a tensor's data, when verified
    std::set<ucp_ep_h> subscribers;
    // For UDP subscribers of a tensor: the previous version's value, the base of the delta
    // they get when they acknowledged that version (and the delta, made once per version).
    size_t udp_subscribers = 0;
    std::shared_ptr<net::Frame> prev_holder;
    size_t prev_offset = 0;
    uint64_t prev_version = 0;
    std::optional<uint64_t> prev_hash;
    std::shared_ptr<const std::vector<std::byte>> udp_delta;  // for version, against prev
    // When the value came in segments: each segment's hash (the next write's base hashes).
    std::vector<uint64_t> segment_hashes;
    // A segmented write in progress (see OpenSegments).
    std::shared_ptr<OpenSegments> open;
    // The value before the last segmented write, reused for the next one's result.
    std::shared_ptr<net::Frame> spare;

    ByteSpan value() const { return holder ? ByteSpan(*holder).subspan(offset) : ByteSpan(); }
    ByteSpan prev_value() const {
      return prev_holder ? ByteSpan(*prev_holder).subspan(prev_offset) : ByteSpan();
    }
  };

  explicit Hub(const HubOptions& options) : options_(options) {}
  void OnFrame(ucp_ep_h ep, net::Frame frame) override;
  void OnOversize(ucp_ep_h ep, size_t bytes) override;
  void OnEndpointError(ucp_ep_h ep, ucs_status_t status) override;
  void OnConnectRequest(ucp_conn_request_h request) override;
  int OnIdle() override;
  // Drains the UDP socket.
  bool OnUdp();
  void HandleDatagram(const net::UdpAddress& from, ByteSpan datagram);
  // A KNOCK or PROOF (net/admission.h): answered, and the sender admitted after a PROOF.
  void HandleAdmission(const net::UdpAddress& from, ByteSpan datagram);
  // Lets `a` open connections to the hub's port from now on.
  Status Admit(const net::IpAddress& a);
  // The filter for the addresses admitted, on the listener of the hub's port.
  Status FilterListeners();
  // The addresses let in without a proof (--admission on: 127.0.0.1 and ::1).
  std::vector<net::IpAddress> Unasked() const;
  bool LetInUnasked(const net::IpAddress& a) const;
  // A subscriber says which version of an attribute it holds.
  void OnUdpAck(ucp_ep_h ep, Peer& peer, const net::udp::Ack& ack);
  // Seals and sends one datagram to the peer's registered address.
  void SendDatagram(Peer& peer, net::udp::Datagram& d);
  // Sends the attribute's latest value to a UDP subscriber, in fragments (best effort: it is
  // sent again until the peer acknowledges it).
  void SendUdpValue(Peer& peer, uint32_t id, Attr& a);
  // Relays an UPDATE to every subscriber but `except`: over UCX, or over UDP to those that
  // asked for it (they get the whole value).
  void Relay(uint32_t id, Attr& a, std::shared_ptr<const net::Frame> update, ucp_ep_h except);
  // Whether `ep` gets the attribute's values by datagrams: it asked for UDP, told the hub
  // its address, and the value fits the UDP path (else it goes over UCX, like everyone's).
  bool ByUdp(ucp_ep_h ep, uint32_t id, size_t value_bytes);
  // Sends the latest value by datagrams and schedules its resend.
  void SendByUdp(ucp_ep_h ep, uint32_t id, Attr& a);

  void Handle(ucp_ep_h ep, Peer& peer, const net::Header& h, ByteSpan payload);
  void HandleDeclare(ucp_ep_h ep, Peer& peer, const net::Declare& m);
  void HandleWrite(ucp_ep_h ep, Peer& peer, const net::Write& m, net::Frame&& frame);
  // The header of a codec WRITE's value, when it may be applied (else the request, or the
  // peer, was answered).
  std::optional<net::CodecValueInfo> CheckCodecWrite(ucp_ep_h ep, const Attr& a,
                                                     const net::Write& m);
  // Decodes a checked codec value against the attribute's value: in place when possible.
  Status DecodeInto(const Attr& a, ByteSpan wire, const net::CodecValueInfo& info,
                    std::shared_ptr<net::Frame>* holder, size_t* offset);
  // Installs a new value and sends it to every subscriber but `except` (kEveryone: to no
  // one, it was relayed already): as `codec_value` when that is a delta, else re-encoded as
  // a delta against the previous value when that pays, else as it came.
  static inline const ucp_ep_h kEveryone = reinterpret_cast<ucp_ep_h>(~uintptr_t{0});
  struct Stamp {
    uint64_t version, clock;
    uint32_t writer;
    int64_t write_ns;
  };
  void Publish(uint32_t id, Attr& a, const Stamp& stamp, std::shared_ptr<net::Frame> holder,
               size_t offset, std::optional<uint64_t> hash, ByteSpan codec_value, ucp_ep_h except);
  // A segmented write in progress (net/wire_value.h, "Segments"): each segment is relayed
  // as it comes, against the latest version (Head); once the last came it is applied, on
  // the applier thread (PendingApply). A write of the attribute by anyone else supersedes it.
  struct OpenSegments {
    ucp_ep_h ep = nullptr;
    uint32_t request_id = 0;
    uint32_t count = 0;
    Stamp stamp{};
    std::vector<std::shared_ptr<net::Frame>> writes;  // the WRITE frames
    std::vector<net::SegmentInfo> segments;           // pointing into them
    std::set<ucp_ep_h> relayed;                       // subscribers that got every segment so far
    std::shared_ptr<int> sends_left = std::make_shared<int>(0);
    // A large whole value in one WRITE, taken as one segment covering the tensor
    // (TakeWholeInBackground): the writer's WRITTEN waits until the hub applied it.
    bool whole = false;
    ByteSpan whole_value;  // its codec value (in writes)
    // ... relayed only once applied, as the UPDATE made then (a delta against the value it
    // replaces, else the value as it came).
    bool relay_after = false;
    std::shared_ptr<const net::Frame> relay;
  };
  // A codec WRITE of a whole value of at least kWholeInBackgroundBytes is decoded like a
  // segmented write (on the applier thread), so the progress thread goes on serving everyone
  // else meanwhile (a 1 GiB value takes seconds). When the subscribers hold a value of the
  // same tensor header, the same thread then encodes the UPDATE they get as a delta against
  // it (Publish's rule), sent once that is done; else the value is relayed as it came, at once.
  static constexpr size_t kWholeInBackgroundBytes = size_t{4} << 20;
  void TakeWholeInBackground(ucp_ep_h ep, Attr& a, const net::Write& m, const Stamp& stamp,
                             const net::CodecValueInfo& info, std::shared_ptr<net::Frame> write);
  // Sends u, whose value points into the WRITE frame `write`, without copying the value.
  void RelayAsItCame(ucp_ep_h ep, const net::Update& u, std::shared_ptr<net::Frame> write,
                     const std::shared_ptr<int>& in_flight);
  void HandleSegment(ucp_ep_h ep, Peer& peer, Attr& a, const net::Write& m, net::Frame&& frame);

  // A delta relayed before the hub applied it (cut-through): applied once the relay has
  // left (its sends completed), or at once when something needs the attribute's value (a
  // frame about it, a datagram) or by the deadline. The progress thread stays free to move
  // the relay meanwhile: applying takes a pass over the whole tensor. A segmented write is
  // applied on the applier thread (BackgroundApply), at low priority; when something needs
  // the value first, the progress thread applies what is left itself. The next segmented
  // write of the attribute may be relayed before it is applied (the writes of an attribute
  // are applied in order).
  struct PendingApply {
    uint32_t id = 0;
    Stamp stamp{};
    std::shared_ptr<net::Frame> write;  // the WRITE frame; value points into it
    ByteSpan value;
    net::CodecValueInfo info;
    std::shared_ptr<int> sends_left = std::make_shared<int>(0);  // relay sends in flight
    int64_t deadline_ns = 0;
    std::shared_ptr<OpenSegments> segments;  // a segmented write instead of write/value/info
    // A segmented write's application: the buffer it goes into (from out_offset on; the
    // value's own buffer when applied in place), and the job that fills it (both null until
    // it is handed to the applier, or applied here).
    std::shared_ptr<net::Frame> out;
    size_t out_offset = 0;
    std::shared_ptr<ApplyJob> job;
  };
  std::vector<std::shared_ptr<PendingApply>> pending_;
  // Applies the pending delta of attribute id (every one: kAll), if any.
  static constexpr uint32_t kAll = ~uint32_t{0};
  void Settle(uint32_t id);
  void SettleWhere(FunctionRef<bool(const PendingApply&)> which);
  // Whether a segment of attribute id may be taken without applying the writes pending for
  // it first: they are all segmented writes (none, or the same attribute's size and header).
  bool SegmentsMayChain(uint32_t id) const;
  // The stamp of the attribute's latest write: the last one pending, else the value's.
  Stamp Head(uint32_t id, const Attr& a) const;
  // The application of p (a segmented write) to the attribute's value: in place when nothing
  // else holds the value and every segment is a delta, else into another buffer; either way
  // a segment that does not verify leaves the hub's value as it was (in place, the segments
  // applied before it are reverted). For the applier, or for this thread when it needs the
  // value before the applier had the write. Sets p.out.
  std::shared_ptr<ApplyJob> MakeJob(Attr& a, PendingApply& p);
  // Whether a delta may be applied to a's value in place: nothing else holds it (no send in
  // flight reads it) and no UDP subscriber keeps it as the base of its deltas.
  static bool MayApplyInPlace(const Attr& a) {
    return detail::SoleOwner(a.holder) && a.udp_subscribers == 0;
  }
  // Moves the first pending write that may be applied now on (OnIdle): applies it (or, for
  // a segmented write, hands it to the applier, or collects it from there). True when
  // something was applied.
  bool StepPending(int64_t now);
  // Sends frame to ep, counting it in *in_flight until it completed (or failed).
  void SendCounted(ucp_ep_h ep, std::shared_ptr<const net::Frame> frame,
                   const std::shared_ptr<int>& in_flight);
  // An UPDATE with the attribute's value as the hub holds it, raw.
  static std::shared_ptr<const net::Frame> WholeUpdate(uint32_t id, const Attr& a);
  // Applies a relayed delta (what is left of it); on failure publishes the hub's value anew
  // so everyone converges, dropping the attribute's writes relayed after it (their base).
  void ApplyRelayed(PendingApply& p);
  // Whether `bytes` more of values fit the hub's bound (answers the request when not).
  bool Fits(ucp_ep_h ep, uint32_t request_id, const Attr& a, size_t bytes);
  void HandleResync(ucp_ep_h ep, Peer& peer, const net::Resync& m);
  // Answers one request with a non-fatal error.
  void Refuse(ucp_ep_h ep, uint32_t request_id, net::ErrorCode code, std::string text);
  void Send(ucp_ep_h ep, net::Frame frame);
  // Sends a fatal ERROR, logs the rejection and drops the peer once the error went out.
  void Reject(ucp_ep_h ep, net::ErrorCode code, const std::string& why);
  // Removes the peer from every table (its subscriptions, UDP state, id).
  void Forget(ucp_ep_h ep, const Peer& peer);
  // Forgets the peer and closes its endpoint.
  void Drop(ucp_ep_h ep);

  HubOptions options_;
  std::unique_ptr<net::UcxWorker> worker_;
  std::unordered_map<ucp_ep_h, Peer> peers_;
  std::map<ucp_ep_h, int64_t> closing_;  // rejected peers: force-closed at this deadline
  std::vector<Attr> attrs_;
  std::map<std::pair<std::string, std::string>, uint32_t> attr_index_;
  uint64_t total_value_bytes_ = 0;
  // Of the whole values taken and not yet applied (TakeWholeInBackground): counted against
  // max_total_value_bytes already, so that two of them cannot both fit where one does.
  uint64_t pending_whole_bytes_ = 0;
  // Of the attributes' spare buffers (Attr::spare), kept only while values and spares
  // together stay within max_total_value_bytes.
  uint64_t spare_bytes_ = 0;
  std::optional<net::UdpSocket> udp_;
  net::admission::Cookies cookies_;
  // Addresses admitted, the least recently admitted first (dropped first past the bound).
  std::vector<net::IpAddress> admitted_;
  std::unordered_map<uint32_t, ucp_ep_h> by_id_;  // authenticated peers by client id
  net::udp::Reassembler reassembler_{64u << 20};
  // (peer, attribute) behind the latest version: sent again at `next`, backing off (the
  // wait doubles per try, from a floor that grows with the value's size, up to 1 s) so a
  // slow or lossy receiver of a large value is not flooded.
  struct Resend {
    int64_t next_ns = 0;
    int tries = 0;
  };
  std::map<std::pair<ucp_ep_h, uint32_t>, Resend> udp_unacked_;
  // ACKs of accepted datagram writes go a little later, together (client id, ACK): at once,
  // they would wake the writer while the readers of its value still need the CPU.
  std::vector<std::pair<uint32_t, net::udp::Ack>> acks_owed_;
  int64_t acks_due_ns_ = 0;  // 0: none owed
  void SendOwedAcks();
  void ScheduleResend(ucp_ep_h ep, uint32_t id, size_t value_bytes);
  int64_t next_udp_resend_ns_ = 0;
  // Datagrams that did not authenticate (or were malformed): logged at most once a minute,
  // with the last sender, so an operator sees spoofing or a misconfigured client.
  uint64_t udp_dropped_bad_ = 0, udp_dropped_logged_ = 0;
  int64_t udp_drop_logged_ns_ = 0;
  std::string udp_last_bad_from_;
  void DroppedBadDatagram(const net::UdpAddress& from);
  codec::Encoder encoder_;
  codec::Decoder decoder_;
  std::unique_ptr<BackgroundApply> applier_;
  uint32_t next_peer_id_ = 1;
  size_t handshaking_ = 0;  // peers not yet authenticated
  int64_t last_handshake_check_ns_ = 0;
};

}  // namespace easysync::hub
