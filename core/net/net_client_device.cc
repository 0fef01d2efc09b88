// The network client's writes of tensors that may live on a GPU: the delta is computed where
// the tensor lives and only changed blocks cross PCIe (docs/decisions.md).
#include "net/net_client_impl.h"

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

}  // namespace easysync::net
