// Decoder: undoes the stages of a frame's chain and verifies the base and result hashes.
//
// The frame is hostile until proven otherwise: the header is checked by PeekFrame, every
// stage length against the tensor size before anything is written, and the sparse gap stream
// in full before the first change is applied. Applying runs block by block, fused with both
// hashes so that each block is read from memory once. In place, a failed check re-applies the
// delta (XOR is an involution), so the caller's base survives any bad frame.
#include <zstd.h>

#include <algorithm>
#include <cstring>

#include "codecs/buffers.h"
#include "codecs/frame.h"
#include "codecs/frame_format.h"
#include "codecs/kernels.h"
#include "codecs/sparse.h"
#include "easysync/codec.h"

namespace easysync::codec {
namespace {

using internal::Scratch;

constexpr size_t kBlock = 256 * 1024;  // see encoder.cc (64 KiB: ~4% slower here)

bool Overlaps(const void* a, size_t an, const void* b, size_t bn) {
  if (an == 0 || bn == 0) return false;
  const auto pa = reinterpret_cast<uintptr_t>(a);
  const auto pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + bn && pb < pa + an;
}

std::string Hex(uint64_t v) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[static_cast<size_t>(i)] = kDigits[v & 0xf];
  return s;
}

// The frame's header, which must describe exactly `frame` (header + payload).
Result<FrameInfo> PeekExactFrame(std::span<const uint8_t> frame) {
  Result<FrameInfo> info = PeekFrame(frame);
  if (info.ok() && frame.size() != info->frame_size) {
    return Status::Corruption("frame is " + std::to_string(frame.size()) +
                              " bytes but its header says " + std::to_string(info->frame_size));
  }
  return info;
}

Status NeedFullValue(const FrameInfo& info, const std::string& why) {
  return Status::Corruption(
      "delta frame against base version " + std::to_string(info.base_version) + " (base hash " +
      Hex(info.base_hash) + ") cannot apply: " + why + "; a full value is needed");
}

// How the (decompressed) payload turns into tensor bytes.
struct Plan {
  const uint8_t* inner = nullptr;  // payload after the zstd stage
  size_t inner_size = 0;
  internal::SparseBody sparse;
};

}  // namespace

struct Decoder::Impl {
  ZSTD_DCtx* dctx = nullptr;
  Scratch inner;
  Scratch staging;  // a full value decoded in place is verified here before it replaces out
  internal::StreamHash base_hash;
  internal::StreamHash result_hash;

  ~Impl() { ZSTD_freeDCtx(dctx); }

  Status Unzstd(const uint8_t* src, size_t n, uint8_t* dst, size_t cap, size_t* got) {
    if (dctx == nullptr) {
      dctx = ZSTD_createDCtx();
      if (dctx == nullptr) return Status::ResourceExhausted("ZSTD_createDCtx failed");
    }
    const size_t r = ZSTD_decompressDCtx(dctx, dst, cap, src, n);
    if (ZSTD_isError(r)) {
      return Status::Corruption(std::string("frame payload does not decompress: ") +
                                ZSTD_getErrorName(r));
    }
    *got = r;
    return Status::Ok();
  }

  // Undoes the frame's zstd stage (into direct when not null, else scratch) and checks the
  // shape of what is left against the tensor: the plan to apply.
  Status Prepare(std::span<const uint8_t> frame, const FrameInfo& info, uint8_t* direct,
                 Plan* plan);

  // Runs the apply step over tensor bytes [off, off + len) of out.
  // With undo, reverts what the same call without undo did.
  static void ApplyBlock(const FrameInfo& info, const Plan& plan, size_t esize, size_t off,
                         size_t len, internal::SparseApplier* applier, uint8_t* out, bool undo);
};

Decoder::Decoder() : impl_(std::make_unique<Impl>()) {}
Decoder::~Decoder() = default;
Decoder::Decoder(Decoder&&) noexcept = default;
Decoder& Decoder::operator=(Decoder&&) noexcept = default;

Status Decoder::Impl::Prepare(std::span<const uint8_t> frame, const FrameInfo& info,
                              uint8_t* direct, Plan* plan) {
  const size_t n = static_cast<size_t>(info.tensor_bytes);
  const size_t esize = DTypeSize(info.dtype);
  const uint8_t* payload = frame.data() + format::kHeaderSize;
  const size_t payload_size = static_cast<size_t>(info.payload_size);
  const bool sparse = (info.chain & kChainSparse) != 0;
  const size_t inner_limit = sparse ? n + format::kSparseBodySlack : n;
  if ((info.chain & kChainZstd) != 0) {
    uint8_t* dst = direct;
    if (dst == nullptr) {
      if (!inner.Reserve(inner_limit)) return internal::OutOfMemory(inner_limit);
      dst = inner.data();
    }
    if (payload_size == 0) return Status::Corruption("frame has an empty zstd payload");
    EASYSYNC_RETURN_IF_ERROR(Unzstd(payload, payload_size, dst, inner_limit, &plan->inner_size));
    plan->inner = dst;
  } else {
    plan->inner = payload;
    plan->inner_size = payload_size;
  }
  if (sparse) {
    if (plan->inner_size > inner_limit) return Status::Corruption("sparse body is too large");
    EASYSYNC_RETURN_IF_ERROR(
        internal::ParseSparseBody(plan->inner, plan->inner_size, info.element_count, esize,
                                  (info.chain & kChainPlanes) != 0, &plan->sparse));
    EASYSYNC_RETURN_IF_ERROR(internal::ValidateSparseGaps(plan->sparse, info.element_count));
    plan->sparse.diff = (info.chain & kChainDiff) != 0;
  } else if (plan->inner_size != n) {
    return Status::Corruption("frame payload holds " + std::to_string(plan->inner_size) +
                              " tensor bytes, its header says " + std::to_string(n));
  }
  return Status::Ok();
}

void Decoder::Impl::ApplyBlock(const FrameInfo& info, const Plan& plan, size_t esize, size_t off,
                               size_t len, internal::SparseApplier* applier, uint8_t* out,
                               bool undo) {
  const uint8_t chain = info.chain;
  const size_t first = off / esize;
  const size_t last = (off + len) / esize;
  if ((chain & kChainSparse) != 0) {
    applier->ApplyUntil(last, out, undo);
  } else if ((chain & kChainDiff) != 0) {
    internal::MergePlanesDiff(plan.inner, info.element_count, esize, first, last, undo, out);
  } else if ((chain & kChainPlanes) != 0) {
    if ((chain & kChainXor) != 0) {
      internal::MergePlanesXor(plan.inner, info.element_count, esize, first, last, out);
    } else {
      internal::MergePlanes(plan.inner, info.element_count, esize, first, last, out);
    }
  } else if ((chain & kChainXor) != 0) {
    internal::XorInto(plan.inner, off, off + len, out);
  } else if (plan.inner != out) {
    std::memcpy(out + off, plan.inner + off, len);
  }
}

Status Decoder::Decode(std::span<const uint8_t> frame, const uint8_t* base, size_t base_bytes,
                       std::span<uint8_t> out, const DecodeOptions& options) {
  Result<FrameInfo> peeked = PeekExactFrame(frame);
  if (!peeked.ok()) return peeked.status();
  const FrameInfo& info = *peeked;
  const size_t n = static_cast<size_t>(info.tensor_bytes);
  const size_t esize = DTypeSize(info.dtype);
  if (out.size() != n) {
    return Status::InvalidArgument("Decode: output has " + std::to_string(out.size()) +
                                   " bytes, the frame's tensor " + std::to_string(n));
  }
  if (Overlaps(out.data(), n, frame.data(), frame.size())) {
    return Status::InvalidArgument("Decode: output overlaps the frame");
  }
  const bool delta = !info.is_full_value();
  bool in_place = false;
  // A full value decoded over the caller's base goes through staging, so that a frame that
  // does not verify leaves that base intact, as it does for deltas.
  const bool stage_full = !delta && n != 0 && base == out.data();
  if (delta) {
    if (base == nullptr) return NeedFullValue(info, "no base given");
    if (base_bytes != n) {
      return NeedFullValue(info, "the base has " + std::to_string(base_bytes) +
                                     " bytes, the frame's tensor " + std::to_string(n));
    }
    in_place = base == out.data();
    if (!in_place && Overlaps(out.data(), n, base, n)) {
      return Status::InvalidArgument("Decode: output partially overlaps the base");
    }
    if (options.known_base_hash && *options.known_base_hash != info.base_hash) {
      return NeedFullValue(info, "the local base hash is " + Hex(*options.known_base_hash));
    }
  }
  if (!impl_->base_hash.ok() || !impl_->result_hash.ok()) {
    return Status::ResourceExhausted("Decode: hash state allocation failed");
  }

  // Stage zstd (into scratch, or straight into out for a zstd-only full value), then the
  // shape of what is left, checked before anything is written.
  Plan plan;
  EASYSYNC_RETURN_IF_ERROR(impl_->Prepare(
      frame, info, info.chain == kChainZstd && !stage_full ? out.data() : nullptr, &plan));

  // Apply, block by block, fused with hashing the base and the result.
  const bool hash_base = delta && !options.known_base_hash;
  internal::SparseApplier applier(plan.sparse, esize);
  impl_->base_hash.Reset();
  impl_->result_hash.Reset();
  uint8_t* o = out.data();
  if (stage_full) {
    if (info.chain == kChainZstd) {
      o = impl_->inner.data();  // already decompressed there
    } else {
      if (!impl_->staging.Reserve(n)) return internal::OutOfMemory(n);
      o = impl_->staging.data();
    }
  }
  for (size_t off = 0; off < n; off += kBlock) {
    const size_t len = std::min(kBlock, n - off);
    if (hash_base) impl_->base_hash.Update(base + off, len);
    if (delta && !in_place) std::memcpy(o + off, base + off, len);
    if (in_place && (info.chain & kChainSparse) != 0) {
      // Scattered read-modify-writes: fetch the block's lines at streaming speed first.
      uint64_t touch = 0;
      for (size_t i = 0; i < len; i += 64) touch += o[off + i];
      asm volatile("" : : "r"(touch));
    }
    Impl::ApplyBlock(info, plan, esize, off, len, &applier, o, /*undo=*/false);
    impl_->result_hash.Update(o + off, len);
  }

  Status failure;
  if (hash_base && impl_->base_hash.Digest() != info.base_hash) {
    failure = NeedFullValue(info, "the local base hashes to " + Hex(impl_->base_hash.Digest()));
  } else if (impl_->result_hash.Digest() != info.result_hash) {
    failure = Status::Corruption("decoded tensor does not match the frame's result hash " +
                                 Hex(info.result_hash) + "; the frame is corrupt");
  }
  if (failure.ok() && stage_full) std::memcpy(out.data(), o, n);
  if (!failure.ok() && in_place) {
    applier.Rewind();
    for (size_t off = 0; off < n; off += kBlock) {
      Impl::ApplyBlock(info, plan, esize, off, std::min(kBlock, n - off), &applier, o,
                       /*undo=*/true);
    }
  }
  return failure;
}

Status Decoder::Revert(std::span<const uint8_t> frame, std::span<uint8_t> value) {
  Result<FrameInfo> peeked = PeekExactFrame(frame);
  if (!peeked.ok()) return peeked.status();
  const FrameInfo& info = *peeked;
  if (info.is_full_value()) {
    return Status::InvalidArgument("Revert: a full-value frame has no base to go back to");
  }
  const size_t n = static_cast<size_t>(info.tensor_bytes);
  if (value.size() != n) {
    return Status::InvalidArgument("Revert: the value has " + std::to_string(value.size()) +
                                   " bytes, the frame's tensor " + std::to_string(n));
  }
  if (Overlaps(value.data(), n, frame.data(), frame.size())) {
    return Status::InvalidArgument("Revert: the value overlaps the frame");
  }
  if (!impl_->result_hash.ok()) {
    return Status::ResourceExhausted("Revert: hash state allocation failed");
  }
  Plan plan;
  EASYSYNC_RETURN_IF_ERROR(impl_->Prepare(frame, info, nullptr, &plan));
  const size_t esize = DTypeSize(info.dtype);
  internal::SparseApplier applier(plan.sparse, esize);
  uint8_t* o = value.data();
  impl_->result_hash.Reset();
  for (size_t off = 0; off < n; off += kBlock) {
    const size_t len = std::min(kBlock, n - off);
    Impl::ApplyBlock(info, plan, esize, off, len, &applier, o, /*undo=*/true);
    impl_->result_hash.Update(o + off, len);
  }
  if (impl_->result_hash.Digest() != info.base_hash) {
    return Status::Corruption("reverting the delta gave bytes that hash to " +
                              Hex(impl_->result_hash.Digest()) + ", not its base " +
                              Hex(info.base_hash) + ": the value was not its result");
  }
  return Status::Ok();
}

}  // namespace easysync::codec
