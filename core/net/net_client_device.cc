// The network client's writes of tensors that may live on a GPU: the delta is computed where
// the tensor lives and only changed blocks cross PCIe (docs/decisions.md).
#include <array>
#include <optional>

#include "net/net_client_impl.h"
#include "net/wire_value.h"

namespace easysync::net {

Result<uint64_t> NetClient::WriteTensor(AttrId attr, const TensorView& view) {
  Replica* r = Find(attr);
  if (r == nullptr) return Status::InvalidArgument("unknown attribute id");
  const bool device = view.device == DeviceType::kCUDA || device_path_for_host_.load();
  if (r->kind != ValueKind::kTensor || view.shape.size() > kMaxTensorDims) {
    return Client::WriteTensor(attr, view);
  }
  EASYSYNC_ASSIGN_OR_RETURN(size_t numel, ShapeNumel(view.shape));
  const size_t bytes = numel * DTypeSize(view.dtype);
  const size_t raw = detail::EncodedTensorSize(view.dtype, bytes);
  if (!device) {
    // A host tensor: read once, for the delta and for the replica at the same time.
    return WriteValue(
        attr, raw,
        [&](std::byte* dst) {
          detail::EncodeTensorHeader(view.dtype, view.shape, dst);
          if (bytes != 0) std::memcpy(dst + detail::kTensorHeaderBytes, view.data, bytes);
        },
        &view);
  }
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
  const auto* data = static_cast<const uint8_t*>(view.data);
  std::array<std::byte, detail::kTensorHeaderBytes> header;
  detail::EncodeTensorHeader(view.dtype, view.shape, header.data());
  for (bool whole = false;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (state_ == State::kFailed) return failure_;
    }
    uint64_t base_version;
    std::vector<uint64_t> base_hashes;
    bool segments, same_shape;
    {
      std::lock_guard<std::mutex> lock(r->mu);
      // The encoder's base is what this client last wrote; anything since (another writer, a
      // resync) makes the next frame whole.
      if (whole || r->dirty || r->info.version != r->device_acked) dev.Reset();
      base_version = r->info.version;
      base_hashes = r->segment_hashes;
      segments = bytes >= kSegmentMinDataBytes && !r->udp;
      same_shape = r->info.version > 0 && r->value().size() == raw &&
                   SameTensorHeader(r->value(), {header.data(), header.size()});
    }
    const uint32_t request = NextRequest();
    // UCX may still read an earlier write's payload from the encoder's memory (after a write
    // that failed): the encoder must not overwrite it before that ends.
    if (!SpinUntil([&] { return r->device_tails->load() == 0; },
                   Clock::now() + options_.request_timeout)) {
      dev.Reset();
      return Status::Timeout("an earlier write's data is still being sent");
    }
    // A whole value in segments, where UCX reads the tensor's memory itself (CUDA memory, and
    // the headers fit in an active message header) and that pays (NetOptions::device_direct),
    // goes from where it lives: each segment is hashed on the device and its bytes are not
    // staged through the host first.
    const NetOptions::DeviceDirect direct = device_direct_.load();
    const bool in_place =
        segments && !whole && same_shape && dev.NextIsFull(view.dtype, numel) &&
        (direct == NetOptions::DeviceDirect::kAlways ||
         (direct == NetOptions::DeviceDirect::kAuto && hub_rdma_.load())) &&
        !device_direct_failed_.load() &&
        (dev.device_memory() ? worker_->cuda_memory() : in_place_for_host_.load()) &&
        worker_->max_frame_head() >= kWriteValueOffset + kSegmentHeaderBytes +
                                         detail::kTensorHeaderBytes + codec::kFrameHeaderBytes;
    Result<codec::DeviceEncoder::Staged> staged = codec::DeviceEncoder::Staged::kFull;
    if (in_place) {
      if (Status st = dev.StageInPlace(view.dtype, numel, data, base_version + 1); !st.ok()) {
        dev.Reset();
        return st;
      }
    } else {
      staged = dev.Stage(view.dtype, numel, data, base_version + 1);
    }
    if (!staged.ok()) {
      dev.Reset();
      return staged.status();
    }
    // A large tensor goes in segments, each encoded from what was staged while the one before
    // travels: a delta, or whole values of the shape the hub holds (those need no base) unless
    // the hub asked for the whole value, which goes in one frame so that it always lands.
    segments =
        segments && (*staged != codec::DeviceEncoder::Staged::kFull || (!whole && same_shape));
    std::vector<uint64_t> segment_hashes;
    Result<Pending> sent = Pending{};
    // The replica's next value: filled range by range as the segments go, else from the
    // shadow once the hub has it.
    std::shared_ptr<Frame> holder;
    if (segments) {
      holder = Buffer(*r, raw);
      std::memcpy(holder->data(), header.data(), header.size());
      sent = SendSegments(
          *r, request, header, view.dtype, bytes, clock, now, std::move(base_hashes),
          /*parallel=*/true,
          [&](codec::Encoder& encoder, size_t off, size_t len, std::optional<uint64_t> base_hash,
              std::span<uint8_t> out, SegmentTail* tail) -> Result<size_t> {
            if (in_place) {
              EASYSYNC_ASSIGN_OR_RETURN(
                  const uint8_t* payload,
                  dev.EncodeRangeInPlace(off, len, out.first(codec::kFrameHeaderBytes)));
              *tail = SegmentTail{payload, len, dev.device_memory()};
              return codec::kFrameHeaderBytes;
            }
            // The replica's range is filled within the encoder's pass over the new bytes.
            return dev.EncodeRange(
                encoder, off, len, base_hash, out,
                reinterpret_cast<uint8_t*>(holder->data()) + detail::kTensorHeaderBytes + off);
          },
          &segment_hashes);
    } else {
      std::shared_ptr<const Frame> frame;
      {
        std::lock_guard<std::mutex> lock(encode_mu_);
        const size_t bound = detail::kTensorHeaderBytes + codec::EncodeBound(view.dtype, numel);
        std::byte* out = Scratch(bound);
        std::memcpy(out, header.data(), header.size());
        const std::optional<uint64_t> base_hash = *staged == codec::DeviceEncoder::Staged::kFull
                                                      ? std::nullopt
                                                      : std::optional(dev.shadow_hash());
        auto n = dev.EncodeRange(0, bytes, base_hash,
                                 {reinterpret_cast<uint8_t*>(out) + detail::kTensorHeaderBytes,
                                  bound - detail::kTensorHeaderBytes});
        if (!n.ok()) {
          dev.Reset();
          return n.status();
        }
        const size_t value_bytes = detail::kTensorHeaderBytes + *n;
        auto info = PeekCodecValue({out, value_bytes});
        if (!info.ok()) {
          dev.Reset();
          return info.status();
        }
        frame = CodecWrite(*r, request, clock, now, {out, value_bytes}, raw,
                           !info->frame.is_full_value());
      }
      sent = Request(request, Pending{}, frame, "WRITE");
    }
    if (!sent.ok()) {
      dev.Reset();
      return sent.status();
    }
    const Pending& done = *sent;
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
    if (Status st = dev.Commit(data); !st.ok()) {
      dev.Reset();
      return st;
    }
    dev.Acknowledge(done.version);
    r->device_acked = done.version;
    // The replica keeps the value on the host: the encoder's shadow is exactly it.
    if (in_place) {
      std::memcpy(holder->data() + detail::kTensorHeaderBytes, dev.shadow().data(), bytes);
    } else if (!segments) {
      holder = Buffer(*r, raw);
      std::memcpy(holder->data(), header.data(), header.size());
      if (bytes != 0) {
        std::memcpy(holder->data() + detail::kTensorHeaderBytes, dev.shadow().data(), bytes);
      }
    }
    const std::optional<uint64_t> hash = segments ? std::nullopt : std::optional(dev.shadow_hash());
    InstallWritten(*r, std::move(holder), 0, UpdateInfo{done.version, done.clock, id(), now, 0},
                   hash, std::move(segment_hashes));
    return done.version;
  }
}

}  // namespace easysync::net
