// Tensor delta codec: encodes a tensor as a compact frame against a base version of it, and
// decodes such frames. Pure: bytes in, bytes out; no I/O, no threads, no exceptions.
//
// The frame format is specified in docs/wire_format.md (constants in codecs/frame_format.h).
// Usage, in the style of zstd:
//
//   easysync::codec::Encoder enc;                       // reuse across calls
//   std::vector<uint8_t> buf(EncodeBound(t.dtype, t.element_count));
//   EASYSYNC_ASSIGN_OR_RETURN(size_t n, enc.Encode(t, &base, base_ver, new_ver, buf));
//   ...
//   easysync::codec::Decoder dec;
//   EASYSYNC_ASSIGN_OR_RETURN(FrameInfo info, PeekFrame(frame));   // sizes, versions
//   Status s = dec.Decode(frame, base_ptr, base_bytes, out);       // verifies both hashes
//   if (s.code() == StatusCode::kCorruption) { /* ask the sender for a full value */ }
//
// Thread-safety: an Encoder or Decoder is used by one thread at a time; distinct contexts are
// independent. Free functions are thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "easysync/dtype.h"
#include "easysync/status.h"

namespace easysync::codec {

// A host tensor as the codec sees it: element_count little-endian elements of dtype,
// contiguous. Does not own data.
struct TensorBytes {
  DType dtype = DType::kUInt8;
  size_t element_count = 0;
  const uint8_t* data = nullptr;  // may be null only when element_count == 0

  // 0 when dtype is invalid; REQUIRES: the product does not overflow (see EncodeBound).
  size_t size_bytes() const { return element_count * DTypeSize(dtype); }
};

// Stage bits of a codec chain (the same values as the wire format's chain byte).
enum ChainBits : uint8_t {
  kChainXor = 1u << 0,
  kChainSparse = 1u << 1,
  kChainPlanes = 1u << 2,
  kChainZstd = 1u << 3,
  kChainDiff = 1u << 4,  // with kChainXor: arithmetic differences instead of XOR bits
};

// A readable name of a chain byte: "raw", "zstd", "planes+zstd", "xor+sparse+planes+zstd", ...
std::string ChainName(uint8_t chain);

// The header fields of a frame, read without decoding its payload.
struct FrameInfo {
  DType dtype = DType::kUInt8;
  uint8_t chain = 0;
  uint64_t element_count = 0;
  uint64_t base_version = 0;  // 0 for a full value
  uint64_t new_version = 0;
  uint64_t base_hash = 0;    // XXH3-64 of the base the frame applies to; 0 for a full value
  uint64_t result_hash = 0;  // XXH3-64 of the decoded tensor bytes
  uint64_t payload_size = 0;
  uint64_t frame_size = 0;    // header + payload: how many bytes the whole frame has
  uint64_t tensor_bytes = 0;  // element_count * DTypeSize(dtype): the size Decode's out must have

  // True when the frame needs no base: it carries the whole value.
  bool is_full_value() const { return (chain & kChainXor) == 0; }
};

// Reads and checks a frame header. `frame` needs only the first 64 bytes (the rest may not have
// arrived yet). Corruption when the magic, version, dtype, chain, reserved bytes or header
// check are wrong, or the sizes overflow.
Result<FrameInfo> PeekFrame(std::span<const uint8_t> frame);

// The largest frame Encode can produce for a tensor of this type and size: the raw bytes plus
// the header. 0 when dtype is invalid or the size overflows size_t (Encode rejects those).
size_t EncodeBound(DType dtype, size_t element_count);

// XXH3-64 of bytes, the hash frames carry. Callers that keep the hash of a tensor they already
// verified (FrameInfo::result_hash) can pass it back as a known base hash below.
uint64_t HashBytes(std::span<const uint8_t> bytes);

struct EncoderOptions {
  int zstd_level = 1;        // any zstd level; 1 keeps the dense path fast
  bool allow_sparse = true;  // false: never emit kSparse (tests, baselines)
  bool allow_planes = true;  // false: never emit kPlanes
  bool allow_delta = true;   // false: always a full value
  bool allow_zstd = true;    // false: never emit kZstd
  // Describe changes of elements wider than a byte by their arithmetic difference (kDiff)
  // rather than their XOR: a training step moves most weights by one unit in the last place,
  // which is one small number as a difference but a carry-dependent bit pattern as an XOR.
  bool allow_diff = true;
};

// Hints that let Encode skip work; each must be true when given.
struct EncodeHints {
  // XXH3-64 of base->data, e.g. the result_hash of the frame that sent the base. Without it,
  // Encode hashes the base.
  std::optional<uint64_t> known_base_hash;
  // When set, Encode also copies cur's bytes (all of them, whatever the frame) here, within
  // its pass over cur: a caller that keeps the value it encodes saves a pass over memory.
  // Must not overlap cur, the base or the output.
  uint8_t* copy_to = nullptr;
  // When set, to base->data as a writable pointer, and the frame Encode returns is a sparse
  // delta, Encode leaves the base holding cur: it stores each changed element into the base
  // as its scan finds it, and sets *base_updated (which must then be set too). Otherwise
  // (another frame, or an error) the base is left as it was and *base_updated is false. A
  // caller that keeps the base as its copy of what it sends thus writes only what changed,
  // instead of copying cur. Not with copy_to.
  uint8_t* update_base = nullptr;
  bool* base_updated = nullptr;
};

// The changed blocks of an update, as the device path produces them (cuda/compact.h): for
// each changed block, in increasing block order, the XOR of cur and base. Block j's bytes
// start at bytes + j * block_bytes; only the tensor's last block may be shorter.
struct XorBlocks {
  DType dtype = DType::kUInt8;
  size_t element_count = 0;
  size_t block_bytes = 0;  // a positive multiple of 8
  const uint32_t* ids = nullptr;
  size_t count = 0;
  const uint8_t* bytes = nullptr;
};

// Reusable encoding context: keeps a zstd compression context and scratch buffers, so that
// after the first call of a given size Encode does not allocate.
class Encoder {
 public:
  explicit Encoder(EncoderOptions options = {});
  ~Encoder();
  Encoder(Encoder&&) noexcept;
  Encoder& operator=(Encoder&&) noexcept;
  Encoder(const Encoder&) = delete;
  Encoder& operator=(const Encoder&) = delete;

  // Encodes `cur` into `out` and returns the frame size. With a `base` of the same dtype and
  // element count (the receiver's version `base_version`), the frame is a delta when that is
  // smaller; otherwise (no base, another shape or dtype, or nothing smaller) a full value.
  // The frame never exceeds EncodeBound(cur.dtype, cur.element_count).
  // REQUIRES: out.size() >= EncodeBound(...) (InvalidArgument otherwise); `out` does not
  // overlap cur or base.
  Result<size_t> Encode(const TensorBytes& cur, const TensorBytes* base, uint64_t base_version,
                        uint64_t new_version, std::span<uint8_t> out,
                        const EncodeHints& hints = {});

  // A full-value frame (base version 0).
  Result<size_t> EncodeFull(const TensorBytes& cur, uint64_t new_version, std::span<uint8_t> out) {
    return Encode(cur, nullptr, 0, new_version, out);
  }

  // Encodes a sparse delta from the changed blocks alone, without the full tensors: what a
  // GPU tensor's update needs, where only changed blocks cross PCIe. The caller supplies the
  // XXH3-64 hashes of base and cur (it keeps a host copy of the base to hash). Returns the
  // frame size, or 0 when the update is too dense for a sparse frame to pay off: then encode
  // from the full tensors with Encode().
  Result<size_t> EncodeXorBlocks(const XorBlocks& blocks, uint64_t base_version, uint64_t base_hash,
                                 uint64_t new_version, uint64_t result_hash,
                                 std::span<uint8_t> out);
  // The same for a caller that holds the base on the host (base: the tensor's bytes): the
  // blocks are applied to it as they are scanned (it holds the result afterwards, whatever
  // is returned), the result is hashed here, and values go as differences from the base
  // where the options allow (small numeric steps then cost less than their XOR bits).
  // copy_to, when set, also gets the result (the tensor's bytes, whatever is returned),
  // within the pass that hashes it; it must not overlap the base, the blocks or the output.
  Result<size_t> ApplyAndEncodeXorBlocks(const XorBlocks& blocks, std::span<uint8_t> base,
                                         uint64_t base_version, uint64_t base_hash,
                                         uint64_t new_version, std::span<uint8_t> out,
                                         uint8_t* copy_to = nullptr);

  const EncoderOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct DecodeOptions {
  // XXH3-64 of the base bytes, when the caller already knows it (e.g. the verified
  // result_hash of the frame that produced the base). Decode then compares it with the frame's
  // base hash instead of hashing the base. Must be true when given.
  std::optional<uint64_t> known_base_hash;
};

// Reusable decoding context: keeps a zstd decompression context and scratch buffers, so that
// after the first call of a given size Decode does not allocate.
//
// Decoding treats the frame as hostile: every size, count, position and stage is checked, and
// no input makes it read outside `frame`/`base` or write outside `out`.
class Decoder {
 public:
  Decoder();
  ~Decoder();
  Decoder(Decoder&&) noexcept;
  Decoder& operator=(Decoder&&) noexcept;
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  // Decodes the whole frame `frame` (exactly header + payload) into `out`, which must have
  // exactly FrameInfo::tensor_bytes bytes (InvalidArgument otherwise).
  //
  // Delta frames need the base: `base`/`base_bytes` of the size of the tensor. Full-value
  // frames ignore base (it may be null). `out` may be the base itself (out.data() == base:
  // in-place apply); any other overlap is InvalidArgument.
  //
  // Errors:
  //   Corruption, message says a full value is needed: no base, a base of another size, or a
  //     base whose hash differs from the frame's (the receiver is not at base_version).
  //   Corruption: the frame is malformed or the result does not hash to result_hash.
  // On error, `out` holds unspecified bytes, except in place: then it still holds the base.
  Status Decode(std::span<const uint8_t> frame, const uint8_t* base, size_t base_bytes,
                std::span<uint8_t> out, const DecodeOptions& options = {});

  // Undoes a Decode of the delta frame `frame` made in place: `value`, which holds that
  // Decode's result, goes back to the frame's base. Then checks that it hashes to the
  // frame's base hash.
  //
  // Errors: InvalidArgument for a full-value frame (it has no base) or a value of another
  // size; Corruption for a malformed frame, or when the bytes do not come out as the base
  // (value did not hold the frame's result): then value holds unspecified bytes.
  Status Revert(std::span<const uint8_t> frame, std::span<uint8_t> value);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace easysync::codec
