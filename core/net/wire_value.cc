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
