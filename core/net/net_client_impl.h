// NetClient: the network client's class, shared by its translation units
// (net_client.cc: connection, requests, replicas and reliable writes; net_client_udp.cc: the
// best-effort UDP path; net_client_device.cc: writes of GPU tensors). Internal to core/: the
// public API is easysync/net.h.
//
// A local replica of each declared attribute, fed by the hub. Reads never leave the process.
// The UCX progress thread applies updates to the replicas (swapping in the received value,
// which readers share: a reader sees a whole value) and rings the bell waiters sleep on.
// Declare and reliable writes wait for the hub's answer; UDP writes do not.
#pragma once

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

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>
#include "easysync/device_codec.h"
#include "easysync/sole_owner.h"
#include "net/ordered_pool.h"
#include "net/protocol.h"
#include "net/task_queue.h"
#include "net/ucx_worker.h"
#include "net/udp_socket.h"
#include "net/udp_wire.h"
#include "net/wire_value.h"

#include "easysync/client.h"
#include "easysync/net.h"

namespace easysync::net {

constexpr uint32_t kMaxAttributes = 1u << 16;
// Datagram writes not acknowledged, and REGISTER until answered, go again this often.
constexpr int64_t kUdpResendNs = 20'000'000;
// How long a received value's ACK may wait to go with others (under kUdpResendNs).
constexpr int64_t kAckDelayNs = 10'000'000;

class NetClient final : public Client, public UcxWorker::Handler {
 public:
  NetClient(const NetOptions& options, uint16_t version)
      : options_(options),
        version_(version),
        cluster_(options.host + ":" + std::to_string(options.port)),
        replicas_(new std::atomic<Replica*>[kMaxAttributes]),
        device_direct_(options.device_direct) {
    for (uint32_t i = 0; i < kMaxAttributes; ++i) replicas_[i].store(nullptr);
  }
  ~NetClient() override {
    SayGoodbye();
    StopCallbacks();
    // The decodes in flight finish (while the worker can still take what they post); a
    // segment the progress thread hands over from here on is decoded on that thread.
    if (decode_queue_) decode_queue_->Close();
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
  void set_in_place_for_host_tensors(bool on) { in_place_for_host_ = on; }
  bool ucx_moves_cuda_memory() const { return worker_ && worker_->cuda_memory(); }
  void set_device_direct(NetOptions::DeviceDirect mode) { device_direct_ = mode; }
  void ForgetDeviceBase(AttrId attr);
  uint64_t LatestVersion(AttrId attr) override {
    Replica* r = Find(attr);
    return r == nullptr ? 0 : r->version.load(std::memory_order_acquire);
  }
  bool CanReadShared() const override { return true; }
  Result<std::optional<SharedValue>> ReadSharedIfNewer(AttrId attr, uint64_t have) override;
  Result<std::optional<UpdateInfo>> ReadIfNewer(AttrId attr, uint64_t have,
                                                FunctionRef<Status(ByteSpan)> decode) override;
  bool WaitUntil(FunctionRef<bool()> ready, Deadline deadline) override;
  // Polls ready() for up to options_.spin (longer while traffic flows, never past deadline),
  // driving the worker when it is free and yielding the CPU otherwise; whether it got ready.
  // The caller holds none of our locks.
  bool SpinUntil(FunctionRef<bool()> ready, Deadline deadline);
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
    // When the value came or went in segments (wire_value.h): each segment's hash, the base
    // hashes of the next segmented write. Empty otherwise.
    std::vector<uint64_t> segment_hashes;
    // A segmented update being received (guarded by mu): its segments are decoded into
    // `out` against `base`, on the progress thread or the decode threads (decode_queue_),
    // and installed once the last is done.
    struct Incoming {
      uint64_t serial = 0;  // which update this is (incoming_serial)
      uint64_t version = 0;
      uint32_t count = 0;
      std::shared_ptr<Frame> base, out;
      size_t base_offset = 0;
      std::vector<uint64_t> base_hashes, hashes;          // hashes: by segment, as they are decoded
      uint32_t received = 0, decoded = 0, in_flight = 0;  // in_flight: on the decode threads
    };
    std::optional<Incoming> incoming;
    uint64_t incoming_serial = 0;
    std::condition_variable decoded;  // a segment's decode finished (with mu)
    // Written while disconnected: info.version is provisional, the value not yet sent.
    bool dirty = false;
    bool resync_requested = false;  // a whole value was asked for; deltas wait for it
    std::shared_ptr<Frame> spare;   // a former value buffer, reused for the next one
    // A host tensor write is changing the holder's bytes in place (WriteSegments): while
    // holder.get() is this, its bytes are neither read nor used as a base, until the write is
    // installed or put back (any Install clears it).
    const Frame* in_flux = nullptr;
    // Writes of device tensors: the delta is computed where the tensor lives.
    std::mutex device_mu;  // guards device, device_acked; taken before mu
    std::unique_ptr<codec::DeviceEncoder> device;
    uint64_t device_acked = 0;  // the hub's version of the device encoder's base
    // Segments whose payload UCX still reads from the device encoder's memory (in-place
    // whole values): the encoder may not stage the next update before they are done.
    std::shared_ptr<std::atomic<int>> device_tails = std::make_shared<std::atomic<int>>(0);
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
    bool holder_in_flux() const { return holder && holder.get() == in_flux; }
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

  // On destruction, while connected: tells the hub this client is going (so it logs a close,
  // not a lost peer) and waits, at most kGoodbyeLimit, until that and everything sent before
  // it left. The client is failed from then on: the hub closing its end starts no reconnect.
  void SayGoodbye();

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
  void SendFrame(std::shared_ptr<const Frame> frame, UcxWorker::SendDone done = {});
  // Sends a request and waits for its answer. REQUIRES: not on the progress thread.
  // Pending::lost when the connection is down or went down before the answer. `more`
  // (optional) runs once the request is registered and `frame` on its way, on this thread, to
  // send the frames that follow it, or (frame null) every frame of it (a segmented write's).
  Result<Pending> Request(uint32_t id, Pending p, std::shared_ptr<const Frame> frame,
                          std::string_view what, const std::function<Status()>& more = {});
  // ResourceExhausted (naming `what`) when frame is over the message limit.
  Status CheckMessageSize(const Frame& frame, std::string_view what) {
    return CheckMessageSize(frame.size(), what);
  }
  Status CheckMessageSize(size_t bytes, std::string_view what);

  uint32_t NextRequest() {
    std::lock_guard<std::mutex> lock(mu_);
    return next_request_++;
  }
  // Keeps a write made while disconnected; returns its provisional version.
  uint64_t QueueDirty(Replica& r, std::shared_ptr<Frame> holder, size_t offset, uint64_t clock,
                      int64_t now);
  // A segmented write of a host tensor against the replica's value (the caller checked that
  // it can go so); fills holder's data from `data` when not null. *hashes gets the segments'
  // hashes. Sends every segment; the answer is the last one's.
  // in_place: holder is the replica's own (TakeHolderInPlace) and `data` is not null: a
  // segment that goes as a sparse delta writes its changes into it as they are found, the
  // others are copied in once the hub took the write. When the write does not go through
  // (an error, a lost connection, a stale base), what it changed is put back and *put_back is
  // set: the holder then holds the replica's value again.
  Result<Pending> WriteSegments(Replica& r, uint32_t request, Frame& holder, const std::byte* data,
                                uint64_t clock, int64_t now, std::vector<uint64_t>* hashes,
                                bool in_place = false, bool* put_back = nullptr);
  // The replica's holder, marked in flux, for a segmented write of this tensor to change in
  // place; null when it may not (someone else holds it, a decode uses it, or the write would
  // not go in segments against it).
  std::shared_ptr<Frame> TakeHolderInPlace(Replica& r, size_t size, const TensorView& tensor);
  // Encodes bytes [offset, offset + bytes) of a tensor's data as a codec frame into `frame`
  // (EncodeBound bytes), against the same range of the base, with `encoder` (the worker's);
  // base_hash: that range's XXH3-64 in the base, where known.
  // An encoder may instead write only the frame's header there and leave its payload where it
  // is (*tail): then the segment goes with UcxWorker::SendSplit, the payload read in place.
  struct SegmentTail {
    const uint8_t* data = nullptr;  // nullptr: the frame is whole in `frame`
    size_t bytes = 0;
    bool device = false;  // CUDA device memory
  };
  // Sends head ++ tail, the tail read where it is (UcxWorker::SendSplit); done runs once UCX no
  // longer reads it (sent, or failed: also when there is no connection to send it on).
  void SendSplitFrame(std::shared_ptr<const Frame> head, const SegmentTail& tail,
                      std::function<void()> done);
  using SegmentEncoder = FunctionRef<Result<size_t>(codec::Encoder& encoder, size_t offset,
                                                    size_t bytes, std::optional<uint64_t> base_hash,
                                                    std::span<uint8_t> frame, SegmentTail* tail)>;
  // Sends a tensor write of n data bytes (dtype, tensor_header) as segments that `encode`
  // makes, each sent as soon as it and those before it are made; base_hashes: the base's
  // segment hashes (empty where unknown); *hashes gets the new ones (all of them only when
  // every segment was made). With `parallel`, `encode` runs on several threads at once (for
  // different ranges); else in order on this one. Once every segment is on its way, and
  // before the answer is awaited, `after_sent` (when given) runs for each segment on the same
  // workers (offset, bytes): work that the readers need not wait for. The answer is the last
  // segment's.
  using SegmentWork = FunctionRef<void(size_t offset, size_t bytes)>;
  Result<Pending> SendSegments(Replica& r, uint32_t request, ByteSpan tensor_header, DType dtype,
                               size_t n, uint64_t clock, int64_t now,
                               std::vector<uint64_t> base_hashes, bool parallel,
                               SegmentEncoder encode, std::vector<uint64_t>* hashes,
                               std::optional<SegmentWork> after_sent = std::nullopt);
  void OnSegment(Replica& r, const Update& m, const UpdateInfo& info, std::shared_ptr<Frame> frame);
  // One segment's decode, done: records it, and installs the update after its last segment.
  // `pooled`: on a decode thread (not the one driving the worker).
  struct SegmentDone {
    Replica* r;
    uint64_t serial;
    uint32_t index;
    uint64_t hash;
    UpdateInfo info;
  };
  void FinishSegment(const SegmentDone& d, const Status& st, bool pooled);
  // Waits until no segment of r's incoming update is decoding. REQUIRES: lock holds r.mu.
  static void AwaitDecodes(Replica& r, std::unique_lock<std::mutex>& lock);
  // Whether a codec write of `value` can go in segments: large, against the replica's value.
  bool Segmentable(Replica& r, const Frame& value);
  bool SegmentableLocked(const Replica& r, ByteSpan value) const;  // REQUIRES: r.mu
  // A codec WRITE of `value` (an encoded tensor value of raw_bytes before encoding), counted
  // in the codec statistics as a delta or a whole value.
  std::shared_ptr<const Frame> CodecWrite(Replica& r, uint32_t request, uint64_t clock, int64_t now,
                                          ByteSpan value, size_t raw_bytes, bool delta);
  // The hub acknowledged this client's write: the replica takes the written value (and a
  // segmented write's hashes, while no other value came meanwhile).
  void InstallWritten(Replica& r, std::shared_ptr<Frame> holder, size_t offset,
                      const UpdateInfo& info, std::optional<uint64_t> hash,
                      std::vector<uint64_t> segment_hashes);
  // Encodes a codec WRITE of the raw value against the replica's acknowledged value (or
  // whole); *hash gets the XXH3-64 of the tensor data (the next write's base hash).
  // With data_from, raw holds only the tensor header yet; the encoder fills in the tensor's
  // bytes from data_from as it reads them (see EncodeCodecValue).
  Result<std::shared_ptr<const Frame>> EncodeTensorWrite(Replica& r, uint32_t request, ByteSpan raw,
                                                         uint64_t clock, int64_t now, bool whole,
                                                         std::optional<uint64_t>* hash,
                                                         const std::byte* data_from = nullptr);
  // Write, for a host tensor of the attribute's size: `tensor` (not null) is the value's
  // data, and `encode` writes the whole raw value (header and data). A codec write reads the
  // tensor once, encoding it and copying it into the replica in the same pass.
  Result<uint64_t> WriteValue(AttrId attr, size_t size, FunctionRef<void(std::byte*)> encode,
                              const TensorView* tensor);
  // The UDP path (progress thread).
  void StartUdp();
  bool OnUdp();
  void HandleDatagram(ByteSpan datagram);
  void SendDatagram(udp::Datagram& d);
  void SendOwedAcks();
  void SendOwedAcksLocked();  // REQUIRES: udp_mu_ held
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
  // The Lamport clock moves up to a clock seen on an update.
  void SeeClock(uint64_t seen) {
    uint64_t c = clock_.load(std::memory_order_relaxed);
    while (c < seen && !clock_.compare_exchange_weak(c, seen)) {
    }
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
  udp::ReplayWindow udp_replay_;
  bool udp_registered_ = false;
  // Next REGISTER or resend check of pending writes (INT64_MAX: none). Atomic: a writer
  // sending from its own thread moves it earlier.
  std::atomic<int64_t> next_udp_ns_{0};
  // Sending: a datagram write goes out from the writer's own thread (no wake-up of the
  // progress thread on the way), so what sending touches is behind udp_mu_.
  std::mutex udp_mu_;
  udp::Key udp_key_{};        // written under udp_mu_ (by the progress thread)
  uint64_t udp_counter_ = 0;  // guarded by udp_mu_
  // ACKs of received values go a little later, together, or ride on a write's datagram: an
  // ACK only stops resends (20 ms apart) and names a delta base, and sending it at once
  // would wake the hub while the value's reader still needs the CPU. Guarded by udp_mu_.
  std::map<uint32_t, Replica*> acks_owed_;  // by hub attribute id
  int64_t acks_due_ns_ = 0;                 // 0: none owed
  // REQUIRES: udp_mu_ held.
  void SendDatagramLocked(udp::Datagram& d);
  udp::Reassembler reassembler_{udp::kMaxValueBytes};

  std::unique_ptr<std::atomic<Replica*>[]> replicas_;
  std::atomic<uint32_t> count_{0};

  std::atomic<bool> device_path_for_host_{false};
  // Tests: the host backend's whole values go in place too (UCX reads host memory then).
  std::atomic<bool> in_place_for_host_{false};
  std::atomic<NetOptions::DeviceDirect> device_direct_;  // NetOptions's, changed by benches
  std::atomic<bool> hub_rdma_{false};              // the connection to the hub has an RDMA lane
  std::atomic<bool> device_direct_failed_{false};  // a send from device memory failed
  // An encoder and the buffer its frames go to (uninitialized, grown as needed: encoders
  // write what they use).
  struct Coder {
    codec::Encoder encoder;
    std::unique_ptr<std::byte[]> scratch;
    size_t scratch_bytes = 0;
    std::byte* Scratch(size_t bytes) {
      if (scratch_bytes < bytes) {
        scratch.reset(new std::byte[bytes]);
        scratch_bytes = bytes;
      }
      return scratch.get();
    }
  };
  // Segmented writes: each segment is encoded by one of several workers (the writing thread
  // and a pool's threads, NetOptions::encode_threads), each with a Coder of its own.
  static constexpr size_t kMaxSegmentWorkers = 4;  // the automatic choice's bound
  std::mutex segments_mu_;  // one segmented write at a time: guards the three below
  std::unique_ptr<OrderedPool> segment_pool_;  // created with the first segmented write
  OrderedPool serial_pool_{0};
  std::vector<std::unique_ptr<Coder>> segment_workers_;
  // Segmented updates received: their segments are decoded on these threads (created with
  // the first one, where the process may run on more than one CPU), each with a decoder.
  std::once_flag decode_once_;
  std::unique_ptr<TaskQueue> decode_queue_;
  std::vector<std::unique_ptr<codec::Decoder>> decoders_;
  TaskQueue* DecodeQueue();

  std::mutex encode_mu_;  // guards coder_
  Coder coder_;
  // The scratch buffer, at least `bytes` long. REQUIRES: encode_mu_ held.
  std::byte* Scratch(size_t bytes) { return coder_.Scratch(bytes); }

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

}  // namespace easysync::net
