// Encoder: picks the smallest chain for an update without running every chain in full.
//
// One fused pass over the tensor hashes cur (and base, unless its hash is known) block by
// block and builds the sparse form as it goes, giving up once the sparse form grows past a
// quarter of the tensor per stream (dense update). Then:
//   sparse body <= tensor / 16    -> only xor+sparse(+planes)(+zstd): dense cannot win;
//   larger, or sparse abandoned   -> also xor+planes+zstd, keep the smaller;
//   nothing below the raw size    -> raw (a full value).
// zstd therefore only sees the compacted sparse body unless the update is dense.
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <cstring>

#include "codecs/buffers.h"
#include "codecs/coding.h"
#include "codecs/frame.h"
#include "codecs/frame_format.h"
#include "codecs/kernels.h"
#include "codecs/sparse.h"
#include "easysync/codec.h"
#include "easysync/function_ref.h"

namespace easysync::codec {
namespace {

using internal::Scratch;

// Tensor bytes scanned and hashed per step of the fused pass: small enough that cur and base
// blocks stay in L2 between the scan and the hashes (256 KiB of each), large enough that the
// calls per block cost nothing.
constexpr size_t kBlock = 256 * 1024;
// Room left before the gap stream for the two count varints of the sparse head.
constexpr size_t kHeadRoom = 2 * format::kMaxVarintBytes;
// Dense candidates are skipped when the sparse body is at most 1/kSparseOnlyDivisor of the
// tensor: zstd of mostly-zero planes cannot beat it there, and would cost a full pass.
constexpr size_t kSparseOnlyDivisor = 16;
// The sparse scan of a delta stops once the part scanned, at least 1/kProjectDivisor of the
// tensor (and kProjectMinBytes), projects its two streams past their joint cap (half the
// tensor) for the whole: a uniform continuation would pass a stream's cap anyway, and a dense
// update (noise, every weight moved) spent its time there: 64 MiB of bf16 noise encoded at
// 2.4 GB/s, the scan running on to a quarter of the tensor.
constexpr size_t kProjectDivisor = 16;
constexpr size_t kProjectMinBytes = size_t{1} << 20;

bool Overlaps(const void* a, size_t an, const void* b, size_t bn) {
  if (an == 0 || bn == 0) return false;
  const auto pa = reinterpret_cast<uintptr_t>(a);
  const auto pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + bn && pb < pa + an;
}

}  // namespace

struct Encoder::Impl {
  EncoderOptions options;
  ZSTD_CCtx* cctx = nullptr;
  Scratch body;          // sparse body: kHeadRoom, gap stream, value planes
  Scratch values;        // element-major XOR values of the changes
  Scratch planes;        // dense XOR planes (or planes of a full value)
  Scratch alt;           // the second zstd candidate
  Scratch sample;        // compressed samples (SampleCompresses)
  Scratch plane_window;  // a sample window of planes not split yet (GatherPlanes)
  Scratch zeros;         // a zero block for scans of XOR blocks
  Scratch block;         // one block's new bytes, for scans of XOR blocks against a base
  size_t zeros_bytes = 0;
  internal::StreamHash cur_hash;
  internal::StreamHash base_hash;

  explicit Impl(EncoderOptions o) : options(o) {}
  ~Impl() { ZSTD_freeCCtx(cctx); }

  Status MakeCctx() {
    if (cctx == nullptr && (cctx = ZSTD_createCCtx()) == nullptr) {
      return Status::ResourceExhausted("ZSTD_createCCtx failed");
    }
    return Status::Ok();
  }

  // Compresses src into dst; 0 when it does not fit in cap (then it does not pay off).
  // sampled: the caller judged samples of src already (SampleCompresses).
  Result<size_t> Zstd(const uint8_t* src, size_t n, uint8_t* dst, size_t cap,
                      bool sampled = false) {
    EASYSYNC_RETURN_IF_ERROR(MakeCctx());
    if (cap == 0 || !options.allow_zstd) return size_t{0};
    if (!sampled && n >= kSampleMinBytes &&
        !SampleCompresses(n, cap, [&](size_t at) { return src + at; })) {
      return size_t{0};
    }
    const size_t r = ZSTD_compressCCtx(cctx, dst, cap, src, n, options.zstd_level);
    if (ZSTD_isError(r)) {
      if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall) return size_t{0};
      return Status::Internal(std::string("zstd compression failed: ") + ZSTD_getErrorName(r));
    }
    return r;
  }

  // Whether zstd is likely to bring n bytes under cap, judged on kSamples windows spread over
  // them: incompressible data (random mantissas, a dense update of noise) then costs a few
  // hundred KiB of zstd instead of all of it. Only a guess: a frame is valid either way.
  static constexpr size_t kSampleMinBytes = size_t{1} << 20;
  static constexpr size_t kSamples = 16;
  static constexpr size_t kSampleBytes = size_t{16} << 10;
  // window(at): the kSampleBytes bytes of the n at byte `at`. REQUIRES: cctx (MakeCctx).
  bool SampleCompresses(size_t n, size_t cap, FunctionRef<const uint8_t*(size_t)> window) {
    if (!sample.Reserve(ZSTD_compressBound(kSampleBytes))) return true;
    size_t in = 0, out = 0;
    for (size_t i = 0; i < kSamples; ++i) {
      const size_t at = (n - kSampleBytes) / (kSamples - 1) * i;
      const size_t r = ZSTD_compressCCtx(cctx, sample.data(), ZSTD_compressBound(kSampleBytes),
                                         window(at), kSampleBytes, options.zstd_level);
      if (ZSTD_isError(r)) return true;
      in += kSampleBytes;
      out += r;
    }
    // The sample's ratio, with a 2% margin, must reach what the caller needs.
    return static_cast<double>(out) * 1.02 < static_cast<double>(in) * cap / n;
  }

  Result<size_t> EncodeFull(const TensorBytes& cur, size_t n, const EncodeHints& hints,
                            FrameInfo* info, uint8_t* payload);
  // Sets up `sink` to collect a sparse form of at most n / 4 bytes per stream.
  Status StartSparse(size_t n, internal::SparseSink* sink);
  // EncodeXorBlocks, and with a base ApplyAndEncodeXorBlocks (result_hash then unused).
  Result<size_t> EncodeBlocks(const XorBlocks& blocks, uint8_t* base, uint64_t base_version,
                              uint64_t base_digest, uint64_t new_version, uint64_t result_digest,
                              std::span<uint8_t> out, uint8_t* copy_to = nullptr);
  // Turns a finished sparse scan into the best sparse frame payload; 0 when none beats raw n.
  // diff: the sink holds ZigzagDelta values (kDiff) rather than XOR bits.
  Result<size_t> FinishSparse(const internal::SparseSink& sink, size_t esize, size_t n, bool diff,
                              FrameInfo* info, uint8_t* payload, size_t* body_size);
  Result<size_t> EncodeDelta(const TensorBytes& cur, const uint8_t* base, size_t n,
                             const EncodeHints& hints, FrameInfo* info, uint8_t* payload);
};

Encoder::Encoder(EncoderOptions options) : impl_(std::make_unique<Impl>(options)) {}
Encoder::~Encoder() = default;
Encoder::Encoder(Encoder&&) noexcept = default;
Encoder& Encoder::operator=(Encoder&&) noexcept = default;
const EncoderOptions& Encoder::options() const { return impl_->options; }

Result<size_t> Encoder::Encode(const TensorBytes& cur, const TensorBytes* base,
                               uint64_t base_version, uint64_t new_version, std::span<uint8_t> out,
                               const EncodeHints& hints) {
  const size_t esize = DTypeSize(cur.dtype);
  if (esize == 0) return Status::InvalidArgument("Encode: invalid dtype");
  const size_t bound = EncodeBound(cur.dtype, cur.element_count);
  if (bound == 0) return Status::InvalidArgument("Encode: tensor size overflows");
  if (out.size() < bound) {
    return Status::InvalidArgument("Encode: output buffer of " + std::to_string(out.size()) +
                                   " bytes is below EncodeBound = " + std::to_string(bound));
  }
  const size_t n = bound - format::kHeaderSize;
  if (n != 0 && cur.data == nullptr) return Status::InvalidArgument("Encode: null tensor data");
  if (Overlaps(out.data(), out.size(), cur.data, n)) {
    return Status::InvalidArgument("Encode: output overlaps the tensor");
  }
  const bool delta = impl_->options.allow_delta && base != nullptr && n != 0 &&
                     base->dtype == cur.dtype && base->element_count == cur.element_count &&
                     base->data != nullptr;
  if (delta && Overlaps(out.data(), out.size(), base->data, n)) {
    return Status::InvalidArgument("Encode: output overlaps the base");
  }
  if (hints.copy_to != nullptr &&
      (Overlaps(hints.copy_to, n, cur.data, n) ||
       Overlaps(hints.copy_to, n, out.data(), out.size()) ||
       (base != nullptr && base->data != nullptr && Overlaps(hints.copy_to, n, base->data, n)))) {
    return Status::InvalidArgument("Encode: copy_to overlaps the tensor, the base or the output");
  }
  if (hints.update_base != nullptr || hints.base_updated != nullptr) {
    if (hints.base_updated == nullptr || base == nullptr || hints.update_base != base->data ||
        hints.copy_to != nullptr) {
      return Status::InvalidArgument(
          "Encode: update_base must be the base's data, with base_updated and without copy_to");
    }
    *hints.base_updated = false;
  }
  if (!impl_->cur_hash.ok() || !impl_->base_hash.ok()) {
    return Status::ResourceExhausted("Encode: hash state allocation failed");
  }
  FrameInfo info;
  info.dtype = cur.dtype;
  info.element_count = cur.element_count;
  info.new_version = new_version;
  uint8_t* payload = out.data() + format::kHeaderSize;
  Result<size_t> size = delta ? impl_->EncodeDelta(cur, base->data, n, hints, &info, payload)
                              : impl_->EncodeFull(cur, n, hints, &info, payload);
  if (!size.ok()) return size.status();
  if ((info.chain & kChainXor) != 0) {
    info.base_version = base_version;
  } else {
    info.base_version = 0;
    info.base_hash = 0;
  }
  info.payload_size = *size;
  internal::WriteHeader(info, out.data());
  return *size + format::kHeaderSize;
}

Result<size_t> Encoder::Impl::EncodeFull(const TensorBytes& cur, size_t n, const EncodeHints& hints,
                                         FrameInfo* info, uint8_t* payload) {
  const size_t esize = DTypeSize(cur.dtype);
  const size_t count = cur.element_count;
  const bool use_planes = esize > 1 && options.allow_planes;
  // Whether zstd may pay, judged on samples of what it would compress before any pass over
  // the whole value (the same windows Zstd() would judge, gathered from the planes not split
  // yet): an incompressible value (random initial weights, noise) costs no plane split.
  bool try_zstd = n != 0 && options.allow_zstd;
  if (try_zstd && n >= kSampleMinBytes) {
    EASYSYNC_RETURN_IF_ERROR(MakeCctx());
    if (use_planes && !plane_window.Reserve(kSampleBytes)) {
      return internal::OutOfMemory(kSampleBytes);
    }
    try_zstd = SampleCompresses(n, n - 1, [&](size_t at) {
      if (!use_planes) return cur.data + at;
      internal::GatherPlanes(cur.data, count, esize, at, kSampleBytes, plane_window.data());
      return static_cast<const uint8_t*>(plane_window.data());
    });
  }
  if (try_zstd) {
    if (hints.copy_to != nullptr) std::memcpy(hints.copy_to, cur.data, n);
    info->result_hash = internal::Hash64(cur.data, n);
    const uint8_t* src = cur.data;
    uint8_t chain = kChainZstd;
    if (use_planes) {
      if (!planes.Reserve(n)) return internal::OutOfMemory(n);
      internal::SplitPlanes(cur.data, nullptr, count, esize, 0, count, planes.data());
      src = planes.data();
      chain |= kChainPlanes;
    }
    EASYSYNC_ASSIGN_OR_RETURN(size_t z, Zstd(src, n, payload, n - 1, /*sampled=*/true));
    if (z != 0) {
      info->chain = chain;
      return z;
    }
    info->chain = 0;  // raw after all
    std::memcpy(payload, cur.data, n);
    return n;
  }
  // Raw: one pass reads the value; the hash and the second copy take it from cache.
  cur_hash.Reset();
  for (size_t off = 0; off < n; off += kBlock) {
    const size_t len = std::min(kBlock, n - off);
    std::memcpy(payload + off, cur.data + off, len);
    cur_hash.Update(cur.data + off, len);
    if (hints.copy_to != nullptr) std::memcpy(hints.copy_to + off, cur.data + off, len);
  }
  info->result_hash = cur_hash.Digest();
  info->chain = 0;
  return n;
}

Result<size_t> Encoder::Impl::EncodeDelta(const TensorBytes& cur, const uint8_t* base, size_t n,
                                          const EncodeHints& hints, FrameInfo* info,
                                          uint8_t* payload) {
  const size_t esize = DTypeSize(cur.dtype);
  const size_t count = cur.element_count;
  const bool use_planes = options.allow_planes && esize > 1;
  const bool use_diff = use_planes && options.allow_diff;

  // Pass 1: hashes, and the sparse form until it stops paying off.
  bool sparse = options.allow_sparse;
  internal::SparseSink sink;
  if (sparse) EASYSYNC_RETURN_IF_ERROR(StartSparse(n, &sink));
  const uint8_t* const pos_start = sink.pos;
  const uint8_t* const val_start = sink.val;
  bool projected = false;
  const bool hash_base = !hints.known_base_hash.has_value();
  // Updating the base as the scan goes (hints.update_base): undone below unless the sparse
  // delta is the frame.
  uint8_t* const update = sparse ? hints.update_base : nullptr;
  cur_hash.Reset();
  base_hash.Reset();
  // The scan goes first: it reads both blocks from memory as two streams at once, and the
  // hashes and the copy then read them from cache (hashing cur first made it a lone stream
  // from memory: a 256 MiB bf16 step took 35 ms instead of 28 without the copy). A base the
  // scan updates is hashed before.
  for (size_t off = 0; off < n; off += kBlock) {
    const size_t len = std::min(kBlock, n - off);
    if (hash_base && update != nullptr) base_hash.Update(base + off, len);
    if (sparse) {
      sparse = internal::SparseScan(cur.data, base, off, off + len, esize, &sink, use_diff, update);
      const size_t scanned = off + len;
      if (sparse && !projected && scanned >= n / kProjectDivisor && scanned >= kProjectMinBytes) {
        projected = true;
        const auto used = static_cast<double>((sink.pos - pos_start) + (sink.val - val_start));
        sparse = used / static_cast<double>(scanned) <= 0.5;
      }
    }
    cur_hash.Update(cur.data + off, len);
    if (hash_base && update == nullptr) base_hash.Update(base + off, len);
    if (hints.copy_to != nullptr) std::memcpy(hints.copy_to + off, cur.data + off, len);  // hot
  }
  info->result_hash = cur_hash.Digest();
  info->base_hash = hash_base ? base_hash.Digest() : *hints.known_base_hash;
  // The base as it was, for the dense candidates or after an error: from the changes the
  // scan emitted (the gap stream and the values FinishSparse leaves where they are).
  bool updated = update != nullptr;
  const auto restore = [&] {
    if (!updated) return;
    updated = false;
    internal::UndoSparseScan(cur.data, update, pos_start, sink.pos, sink.count, val_start, esize,
                             use_diff);
  };

  size_t best = n;  // a candidate must beat raw
  bool have = false;
  if (sparse) {
    size_t body_size = 0;
    Result<size_t> z = FinishSparse(sink, esize, n, use_diff, info, payload, &body_size);
    if (!z.ok()) {
      restore();
      return z.status();
    }
    if (*z != 0) {
      best = *z;
      have = true;
      if (body_size <= n / kSparseOnlyDivisor) {
        if (updated) *hints.base_updated = true;
        return best;
      }
    }
  }
  restore();

  // Dense candidate: XOR planes (element-major bytes when planes are off) through zstd.
  if (!planes.Reserve(n)) return internal::OutOfMemory(n);
  // Splitting every plane and running zstd over all of it costs more than the rest of the
  // encode: judge on samples first whether it can beat what there is (a dense update of
  // noise cannot).
  if (n >= kSampleMinBytes && options.allow_zstd) {
    const size_t units = use_planes ? count : n;  // elements split, or bytes
    const size_t unit_bytes = use_planes ? esize : 1;
    const size_t window = kSampleBytes / unit_bytes;
    size_t in = 0, out = 0;
    if (!sample.Reserve(ZSTD_compressBound(window))) return internal::OutOfMemory(window);
    EASYSYNC_RETURN_IF_ERROR(MakeCctx());
    for (size_t i = 0; i < kSamples && units > window; ++i) {
      const size_t first = (units - window) / (kSamples - 1) * i;
      if (use_diff) {
        internal::SplitPlanesDiff(cur.data, base, count, esize, first, first + window,
                                  planes.data());
      } else {
        internal::SplitPlanes(cur.data, base, units, unit_bytes, first, first + window,
                              planes.data());
      }
      for (size_t b = 0; b < unit_bytes; ++b) {
        const size_t r =
            ZSTD_compressCCtx(cctx, sample.data(), ZSTD_compressBound(window),
                              planes.data() + b * units + first, window, options.zstd_level);
        if (ZSTD_isError(r)) return Status::Internal("zstd failed on a sample");
        in += window;
        out += r;
      }
    }
    if (in != 0 && static_cast<double>(out) * 1.02 >= static_cast<double>(in) * best / n) {
      if (have) return best;
      info->chain = 0;  // nothing will beat raw: a full value
      std::memcpy(payload, cur.data, n);
      return n;
    }
  }
  if (use_diff) {
    internal::SplitPlanesDiff(cur.data, base, count, esize, 0, count, planes.data());
  } else if (use_planes) {
    internal::SplitPlanes(cur.data, base, count, esize, 0, count, planes.data());
  } else {
    internal::SplitPlanes(cur.data, base, n, 1, 0, n, planes.data());
  }
  const uint8_t dense_chain =
      kChainXor | kChainZstd | (use_planes ? kChainPlanes : 0) | (use_diff ? kChainDiff : 0);
  if (!have) {
    EASYSYNC_ASSIGN_OR_RETURN(size_t z, Zstd(planes.data(), n, payload, n - 1));
    if (z != 0) {
      info->chain = dense_chain;
      return z;
    }
  } else {
    if (!alt.Reserve(best)) return internal::OutOfMemory(best);
    EASYSYNC_ASSIGN_OR_RETURN(size_t z, Zstd(planes.data(), n, alt.data(), best - 1));
    if (z != 0) {
      std::memcpy(payload, alt.data(), z);
      info->chain = dense_chain;
      return z;
    }
    return best;
  }
  info->chain = 0;  // nothing beat raw: a full value
  std::memcpy(payload, cur.data, n);
  return n;
}

Status Encoder::Impl::StartSparse(size_t n, internal::SparseSink* sink) {
  const size_t stream_cap = n / 4;
  const size_t need = kHeadRoom + 2 * (stream_cap + internal::kSparseSinkSlack);
  if (!body.Reserve(need)) return internal::OutOfMemory(need);
  if (!values.Reserve(stream_cap + internal::kSparseSinkSlack)) {
    return internal::OutOfMemory(stream_cap);
  }
  *sink = internal::SparseSink{};
  sink->pos = body.data() + kHeadRoom;
  sink->pos_limit = sink->pos + stream_cap;
  sink->val = values.data();
  sink->val_limit = values.data() + stream_cap;
  return Status::Ok();
}

Result<size_t> Encoder::Impl::FinishSparse(const internal::SparseSink& sink, size_t esize, size_t n,
                                           bool diff, FrameInfo* info, uint8_t* payload,
                                           size_t* body_size) {
  const bool use_planes = options.allow_planes && esize > 1;
  const size_t gap_bytes = static_cast<size_t>(sink.pos - (body.data() + kHeadRoom));
  uint8_t* start = internal::PrependSparseHead(body.data() + kHeadRoom, sink.count, gap_bytes);
  uint8_t* vals = body.data() + kHeadRoom + gap_bytes;
  const size_t value_bytes = sink.count * esize;
  if (use_planes) {
    internal::SplitPlanes(values.data(), nullptr, sink.count, esize, 0, sink.count, vals);
  } else if (value_bytes != 0) {
    std::memcpy(vals, values.data(), value_bytes);
  }
  *body_size = static_cast<size_t>(vals + value_bytes - start);
  const uint8_t chain =
      kChainXor | kChainSparse | (use_planes ? kChainPlanes : 0) | (diff ? kChainDiff : 0);
  EASYSYNC_ASSIGN_OR_RETURN(size_t z,
                            Zstd(start, *body_size, payload, std::min(*body_size, n) - 1));
  if (z != 0) {
    info->chain = chain | kChainZstd;
    return z;
  }
  if (*body_size < n) {
    std::memcpy(payload, start, *body_size);
    info->chain = chain;
    return *body_size;
  }
  return size_t{0};
}

Result<size_t> Encoder::EncodeXorBlocks(const XorBlocks& blocks, uint64_t base_version,
                                        uint64_t base_hash, uint64_t new_version,
                                        uint64_t result_hash, std::span<uint8_t> out) {
  return impl_->EncodeBlocks(blocks, nullptr, base_version, base_hash, new_version, result_hash,
                             out);
}

Result<size_t> Encoder::ApplyAndEncodeXorBlocks(const XorBlocks& blocks, std::span<uint8_t> base,
                                                uint64_t base_version, uint64_t base_hash,
                                                uint64_t new_version, std::span<uint8_t> out,
                                                uint8_t* copy_to) {
  const size_t n = blocks.element_count * DTypeSize(blocks.dtype);
  if (base.size() != n) {
    return Status::InvalidArgument("ApplyAndEncodeXorBlocks: base is not the tensor's size");
  }
  if (copy_to != nullptr &&
      (Overlaps(copy_to, n, base.data(), n) || Overlaps(copy_to, n, out.data(), out.size()) ||
       (blocks.bytes != nullptr &&
        Overlaps(copy_to, n, blocks.bytes, blocks.count * blocks.block_bytes)))) {
    return Status::InvalidArgument(
        "ApplyAndEncodeXorBlocks: copy_to overlaps the base, the blocks or the output");
  }
  return impl_->EncodeBlocks(blocks, base.data(), base_version, base_hash, new_version, 0, out,
                             copy_to);
}

Result<size_t> Encoder::Impl::EncodeBlocks(const XorBlocks& blocks, uint8_t* base,
                                           uint64_t base_version, uint64_t base_digest,
                                           uint64_t new_version, uint64_t result_digest,
                                           std::span<uint8_t> out, uint8_t* copy_to) {
  const size_t esize = DTypeSize(blocks.dtype);
  if (esize == 0) return Status::InvalidArgument("EncodeXorBlocks: invalid dtype");
  const size_t bound = EncodeBound(blocks.dtype, blocks.element_count);
  if (bound == 0) return Status::InvalidArgument("EncodeXorBlocks: tensor size overflows");
  if (out.size() < bound) {
    return Status::InvalidArgument("EncodeXorBlocks: output buffer below EncodeBound");
  }
  const size_t b = blocks.block_bytes;
  if (b == 0 || b % 8 != 0) {
    return Status::InvalidArgument("EncodeXorBlocks: block_bytes must be a positive multiple of 8");
  }
  const size_t n = bound - format::kHeaderSize;
  if (blocks.count != 0 && (blocks.ids == nullptr || blocks.bytes == nullptr)) {
    return Status::InvalidArgument("EncodeXorBlocks: null blocks");
  }
  for (size_t j = 0, next_id = 0; j < blocks.count; ++j) {
    const uint64_t id = blocks.ids[j];
    if (id < next_id || id >= (n + b - 1) / b) {
      return Status::InvalidArgument(
          "EncodeXorBlocks: block ids must increase and lie in the tensor");
    }
    next_id = id + 1;
  }
  // Without the base, the scan compares the XOR bytes against zeros; with it, each block's
  // new bytes (base ^ XOR, made in `block`) against the base, which then takes them.
  if (base == nullptr) {
    if (!zeros.Reserve(b)) return internal::OutOfMemory(b);
    if (zeros_bytes < b) {
      std::memset(zeros.data(), 0, b);
      zeros_bytes = b;
    }
  } else if (!block.Reserve(b)) {
    return internal::OutOfMemory(b);
  }
  uint8_t* scratch = block.data();
  const bool diff = base != nullptr && options.allow_planes && options.allow_diff && esize > 1;
  bool sparse = options.allow_delta && options.allow_sparse && n != 0;
  internal::SparseSink sink;
  if (sparse) EASYSYNC_RETURN_IF_ERROR(StartSparse(n, &sink));
  if (base == nullptr) {
    for (size_t j = 0; j < blocks.count && sparse; ++j) {
      const size_t at = size_t{blocks.ids[j]} * b;
      sink.origin = at;
      sparse = internal::SparseScan(blocks.bytes + j * b, zeros.data(), 0,
                                    std::min<size_t>(b, n - at), esize, &sink);
    }
  } else {
    if (!cur_hash.ok()) {
      return Status::ResourceExhausted("EncodeXorBlocks: hash state allocation failed");
    }
    // Chunk by chunk (whole blocks): the chunk's blocks are applied, then the chunk is hashed
    // and copied to copy_to while it is in cache, so the result is read from memory once.
    const size_t chunk = std::max<size_t>(b, kBlock / b * b);
    cur_hash.Reset();
    size_t j = 0;
    for (size_t c = 0; c < n; c += chunk) {
      const size_t end = std::min(n, c + chunk);
      for (; j < blocks.count && size_t{blocks.ids[j]} * b < end; ++j) {
        const size_t at = size_t{blocks.ids[j]} * b;
        const size_t len = std::min<size_t>(b, n - at);
        const uint8_t* x = blocks.bytes + j * b;
        uint8_t* was = base + at;
        sink.origin = at;
        for (size_t k = 0; k < len; ++k) scratch[k] = static_cast<uint8_t>(was[k] ^ x[k]);
        if (sparse) sparse = internal::SparseScan(scratch, was, 0, len, esize, &sink, diff);
        std::memcpy(was, scratch, len);
      }
      cur_hash.Update(base + c, end - c);
      if (copy_to != nullptr) std::memcpy(copy_to + c, base + c, end - c);
    }
    result_digest = cur_hash.Digest();
  }
  if (!sparse) return size_t{0};  // too dense for a sparse frame
  FrameInfo info;
  info.dtype = blocks.dtype;
  info.element_count = blocks.element_count;
  info.base_version = base_version;
  info.new_version = new_version;
  info.base_hash = base_digest;
  info.result_hash = result_digest;
  size_t body_size = 0;
  EASYSYNC_ASSIGN_OR_RETURN(
      const size_t z,
      FinishSparse(sink, esize, n, diff, &info, out.data() + format::kHeaderSize, &body_size));
  if (z == 0) return size_t{0};
  info.payload_size = z;
  internal::WriteHeader(info, out.data());
  return z + format::kHeaderSize;
}

}  // namespace easysync::codec
