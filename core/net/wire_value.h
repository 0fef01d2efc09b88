// Tensor values on the wire as deltas: the attribute's 128-byte tensor header, then a codec
// frame (docs/wire_format.md) of the data, full or against the receiver's current value.
// Messages that carry such a value have kFlagCodec set (docs/net_protocol.md, "Tensor values").
//
// A "raw value" below is what the shared-memory mode stores: tensor header + data.
//
// Thread-safety: free functions; an Encoder/Decoder is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "easysync/codec.h"
#include "easysync/status.h"
#include "easysync/value_traits.h"
#include "net/protocol.h"

namespace easysync::net {

// Tensors with fewer data bytes go raw: the 64-byte codec header and two hashes do not pay
// off below this.
inline constexpr size_t kCodecMinDataBytes = 4096;

// Whether a value of this kind and raw size travels as a codec value.
inline bool UseCodec(ValueKind kind, size_t raw_bytes) {
  return kind == ValueKind::kTensor && raw_bytes >= detail::kTensorHeaderBytes + kCodecMinDataBytes;
}

// The largest codec value a raw value of raw_bytes can become (0: not a tensor value).
size_t CodecValueBound(ByteSpan raw_value);

struct CodecValueInfo {
  codec::FrameInfo frame;
  size_t raw_bytes = 0;  // size of the decoded value: header + data
};
// Checks a codec value's tensor header and codec frame header and that they agree (dtype,
// element count). Corruption otherwise.
Result<CodecValueInfo> PeekCodecValue(ByteSpan wire);

// Whether two raw tensor values have the same header (dtype and shape): a delta between them
// is possible.
bool SameTensorHeader(ByteSpan a, ByteSpan b);

// Segments. A large tensor written as a delta goes as count WRITEs (kFlagSegment), each a
// delta of one range of its data, so the writer encodes segment i + 1 while segment i
// crosses the link, is relayed by the hub and applied by the readers. Segment i covers data
// bytes [i * segment_bytes, min((i + 1) * segment_bytes, N)). Its value is a 64-byte segment
// header (u32 index, u32 count, u64 segment_bytes, zeros), the tensor's 128-byte header, and
// a codec frame of that range (element_count = the range's elements; base and result hashes
// of the range): a delta, or the range whole where no delta is smaller. A receiver installs
// the new value once every segment applied.
inline constexpr size_t kSegmentHeaderBytes = 64;
inline constexpr size_t kSegmentBytes = size_t{16} << 20;
// Tensors with at least this many data bytes are written in segments when a delta is possible.
inline constexpr size_t kSegmentMinDataBytes = 2 * kSegmentBytes;

struct SegmentInfo {
  uint32_t index = 0, count = 0;
  size_t segment_bytes = 0;
  size_t offset = 0, bytes = 0;  // the range of the data this segment covers
  size_t raw_bytes = 0;          // of the whole value: tensor header + data
  ByteSpan tensor_header;        // kTensorHeaderBytes
  ByteSpan frame;                // the codec frame
  codec::FrameInfo info;
};
// Checks a segment value: its header, the tensor header, and a codec frame that covers
// exactly its range. Corruption otherwise.
Result<SegmentInfo> PeekSegmentValue(ByteSpan wire);
// Writes segment `index` of `count`'s header.
void WriteSegmentHeader(uint32_t index, uint32_t count, size_t segment_bytes, std::byte* dst);

struct EncodedValue {
  size_t bytes = 0;          // of the codec value written to out
  bool delta = false;        // false: the frame carries the whole value
  uint64_t result_hash = 0;  // XXH3-64 of the data, as the frame states it
};
// Encodes the raw value `cur` into out (at least CodecValueBound(cur) bytes), as a delta
// against `base` (a raw value at base_version) when base has the same header and a delta is
// smaller. base may be empty. new_version is advisory (receivers take the message's version).
// With `data_from`, cur holds only the tensor header yet: the tensor's bytes are read from
// data_from and copied into cur's data bytes as they are encoded (a pass over memory fewer
// than copying first); cur must then be writable memory the caller owns.
Result<EncodedValue> EncodeCodecValue(codec::Encoder& enc, ByteSpan cur, ByteSpan base,
                                      uint64_t base_version, std::optional<uint64_t> base_hash,
                                      uint64_t new_version, std::span<std::byte> out,
                                      const std::byte* data_from = nullptr);

// Decodes a codec value into `out`, which must have exactly PeekCodecValue(wire)->raw_bytes
// bytes. A delta needs `base`: the receiver's raw value, at the frame's base version (checked
// by the caller) and with the frame's base hash (checked here). out may be base itself for
// a delta (in place); then on error it still holds the base. Corruption when the frame is bad, the
// base does not match, or the result does not verify.
Status DecodeCodecValue(codec::Decoder& dec, ByteSpan wire, ByteSpan base,
                        std::optional<uint64_t> base_hash, std::span<std::byte> out);

}  // namespace easysync::net
