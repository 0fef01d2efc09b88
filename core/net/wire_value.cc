// Tensor values as codec frames (see wire_value.h).
#include "net/wire_value.h"

#include <cstring>

namespace easysync::net {
namespace {

using detail::kTensorHeaderBytes;

std::span<const uint8_t> U8(ByteSpan s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

size_t CodecValueBound(ByteSpan raw_value) {
  detail::TensorBytes t;
  if (!detail::ParseTensor(raw_value, &t).ok()) return 0;
  const size_t esize = DTypeSize(t.dtype);
  const size_t bound = codec::EncodeBound(t.dtype, t.data_bytes / esize);
  return bound == 0 ? 0 : kTensorHeaderBytes + bound;
}

Result<CodecValueInfo> PeekCodecValue(ByteSpan wire) {
  detail::TensorBytes t;
  EASYSYNC_RETURN_IF_ERROR(detail::ParseTensorHeader(wire, &t));
  EASYSYNC_ASSIGN_OR_RETURN(codec::FrameInfo f,
                            codec::PeekFrame(U8(wire.subspan(kTensorHeaderBytes))));
  if (f.dtype != t.dtype || f.tensor_bytes != t.data_bytes) {
    return Status::Corruption("codec value: the frame's dtype or size disagrees with the tensor");
  }
  if (f.frame_size != wire.size() - kTensorHeaderBytes) {
    return Status::Corruption("codec value: the frame has " + std::to_string(f.frame_size) +
                              " bytes but the message carries " +
                              std::to_string(wire.size() - kTensorHeaderBytes));
  }
  return CodecValueInfo{f, kTensorHeaderBytes + t.data_bytes};
}

void WriteSegmentHeader(uint32_t index, uint32_t count, size_t segment_bytes, std::byte* dst) {
  std::memset(dst, 0, kSegmentHeaderBytes);
  std::memcpy(dst, &index, 4);  // little-endian hosts (docs/wire_format.md)
  std::memcpy(dst + 4, &count, 4);
  const uint64_t s = segment_bytes;
  std::memcpy(dst + 8, &s, 8);
}

Result<SegmentInfo> PeekSegmentValue(ByteSpan wire) {
  if (wire.size() < kSegmentHeaderBytes + kTensorHeaderBytes) {
    return Status::Corruption("segment value: truncated");
  }
  SegmentInfo s;
  uint64_t segment_bytes;
  std::memcpy(&s.index, wire.data(), 4);
  std::memcpy(&s.count, wire.data() + 4, 4);
  std::memcpy(&segment_bytes, wire.data() + 8, 8);
  for (size_t i = 16; i < kSegmentHeaderBytes; ++i) {
    if (wire[i] != std::byte{0}) return Status::Corruption("segment value: reserved bytes set");
  }
  s.tensor_header = wire.subspan(kSegmentHeaderBytes, kTensorHeaderBytes);
  s.frame = wire.subspan(kSegmentHeaderBytes + kTensorHeaderBytes);
  detail::TensorBytes t;
  EASYSYNC_RETURN_IF_ERROR(detail::ParseTensorHeader(s.tensor_header, &t));
  const size_t esize = DTypeSize(t.dtype);
  const size_t n = t.data_bytes;
  if (segment_bytes == 0 || segment_bytes % esize != 0 || segment_bytes >= n ||
      s.count != (n + segment_bytes - 1) / segment_bytes || s.index >= s.count) {
    return Status::Corruption("segment value: segment " + std::to_string(s.index) + " of " +
                              std::to_string(s.count) + " by " + std::to_string(segment_bytes) +
                              " bytes does not cut a tensor of " + std::to_string(n) + " bytes");
  }
  s.segment_bytes = segment_bytes;
  s.offset = s.index * s.segment_bytes;
  s.bytes = std::min(s.segment_bytes, n - s.offset);
  s.raw_bytes = kTensorHeaderBytes + n;
  EASYSYNC_ASSIGN_OR_RETURN(s.info, codec::PeekFrame(U8(s.frame)));
  if (s.info.dtype != t.dtype || s.info.tensor_bytes != s.bytes) {
    return Status::Corruption("segment value: the frame does not cover the segment's range");
  }
  if (s.info.frame_size != s.frame.size()) {
    return Status::Corruption("segment value: the frame has " + std::to_string(s.info.frame_size) +
                              " bytes but the message carries " + std::to_string(s.frame.size()));
  }
  return s;
}

bool SameTensorHeader(ByteSpan a, ByteSpan b) {
  return a.size() >= kTensorHeaderBytes && b.size() >= kTensorHeaderBytes &&
         std::memcmp(a.data(), b.data(), kTensorHeaderBytes) == 0;
}

Result<EncodedValue> EncodeCodecValue(codec::Encoder& enc, ByteSpan cur, ByteSpan base,
                                      uint64_t base_version, std::optional<uint64_t> base_hash,
                                      uint64_t new_version, std::span<std::byte> out,
                                      const std::byte* data_from) {
  detail::TensorBytes t;
  EASYSYNC_RETURN_IF_ERROR(detail::ParseTensor(cur, &t));
  if (out.size() < kTensorHeaderBytes) return Status::InvalidArgument("codec value: no room");
  const size_t esize = DTypeSize(t.dtype);
  codec::TensorBytes now{t.dtype, t.data_bytes / esize, U8(t.data).data()};
  codec::EncodeHints hints;
  if (data_from != nullptr) {
    // The caller's buffer: filled by the encoder from data_from (see the header).
    hints.copy_to = const_cast<uint8_t*>(now.data);
    now.data = reinterpret_cast<const uint8_t*>(data_from);
  }
  codec::TensorBytes was;
  const bool has_base = base.size() == cur.size() && SameTensorHeader(cur, base);
  if (has_base) was = {t.dtype, now.element_count, U8(base).data() + kTensorHeaderBytes};
  hints.known_base_hash = base_hash;
  std::memcpy(out.data(), cur.data(), kTensorHeaderBytes);
  auto frame = std::span<uint8_t>(reinterpret_cast<uint8_t*>(out.data()), out.size())
                   .subspan(kTensorHeaderBytes);
  EASYSYNC_ASSIGN_OR_RETURN(size_t n, enc.Encode(now, has_base ? &was : nullptr, base_version,
                                                 new_version, frame, hints));
  EASYSYNC_ASSIGN_OR_RETURN(codec::FrameInfo f, codec::PeekFrame(frame.first(n)));
  return EncodedValue{kTensorHeaderBytes + n, !f.is_full_value(), f.result_hash};
}

Status DecodeCodecValue(codec::Decoder& dec, ByteSpan wire, ByteSpan base,
                        std::optional<uint64_t> base_hash, std::span<std::byte> out) {
  EASYSYNC_ASSIGN_OR_RETURN(CodecValueInfo info, PeekCodecValue(wire));
  if (out.size() != info.raw_bytes) {
    return Status::InvalidArgument("codec value: output of " + std::to_string(out.size()) +
                                   " bytes for a value of " + std::to_string(info.raw_bytes));
  }
  const bool delta = !info.frame.is_full_value();
  if (delta && !SameTensorHeader(wire, base)) {
    return Status::Corruption(
        "codec value: a delta against a tensor of another shape; "
        "a full value is needed");
  }
  const bool in_place = !base.empty() && out.data() == base.data();
  if (in_place && !delta) {
    return Status::InvalidArgument("codec value: a full value is not decoded in place");
  }
  // The header is the same as the base's for a delta; in place it is already there.
  if (!in_place) std::memcpy(out.data(), wire.data(), kTensorHeaderBytes);
  codec::DecodeOptions options;
  options.known_base_hash = base_hash;
  const uint8_t* b = nullptr;
  size_t b_bytes = 0;
  if (delta) {
    b = U8(base).data() + kTensorHeaderBytes;
    b_bytes = base.size() - kTensorHeaderBytes;
  }
  auto data = std::span<uint8_t>(reinterpret_cast<uint8_t*>(out.data()), out.size())
                  .subspan(kTensorHeaderBytes);
  return dec.Decode(U8(wire.subspan(kTensorHeaderBytes)), b, b_bytes, data, options);
}

}  // namespace easysync::net
