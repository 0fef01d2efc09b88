#include "codecs/frame.h"

#include <cstring>
#include <string>

#include "codecs/buffers.h"
#include "codecs/coding.h"
#include "codecs/frame_format.h"

namespace easysync::codec {

static_assert(kChainXor == format::kXor && kChainSparse == format::kSparse &&
                  kChainPlanes == format::kPlanes && kChainZstd == format::kZstd &&
                  kChainDiff == format::kDiff,
              "public chain bits must equal the wire format's");

namespace internal {

void WriteHeader(const FrameInfo& info, uint8_t* out) {
  using namespace format;
  std::memset(out, 0, kHeaderSize);
  std::memcpy(out + kOffMagic, kMagic, sizeof kMagic);
  out[kOffVersion] = kFormatVersion;
  out[kOffDType] = static_cast<uint8_t>(info.dtype);
  out[kOffChain] = info.chain;
  out[kOffFlags] = 0;
  StoreU64(out + kOffElementCount, info.element_count);
  StoreU64(out + kOffBaseVersion, info.base_version);
  StoreU64(out + kOffNewVersion, info.new_version);
  StoreU64(out + kOffBaseHash, info.base_hash);
  StoreU64(out + kOffResultHash, info.result_hash);
  StoreU64(out + kOffPayloadSize, info.payload_size);
  StoreU32(out + kOffHeaderCheck, static_cast<uint32_t>(Hash64(out, kHeaderCheckedBytes)));
}

}  // namespace internal

Result<FrameInfo> PeekFrame(std::span<const uint8_t> frame) {
  using namespace format;
  using internal::LoadU32;
  using internal::LoadU64;
  if (frame.size() < kHeaderSize) {
    return Status::Corruption("frame of " + std::to_string(frame.size()) +
                              " bytes is shorter than its 64-byte header");
  }
  const uint8_t* h = frame.data();
  if (std::memcmp(h + kOffMagic, kMagic, sizeof kMagic) != 0) {
    return Status::Corruption("not a tensor frame (bad magic)");
  }
  if (h[kOffVersion] != kFormatVersion) {
    return Status::Corruption("unsupported frame format version " + std::to_string(h[kOffVersion]) +
                              " (this build reads " + std::to_string(kFormatVersion) + ")");
  }
  if (LoadU32(h + kOffHeaderCheck) !=
      static_cast<uint32_t>(internal::Hash64(h, kHeaderCheckedBytes))) {
    return Status::Corruption("frame header check mismatch");
  }
  const std::optional<DType> dtype = DTypeFromByte(h[kOffDType]);
  if (!dtype) return Status::Corruption("frame has unknown dtype " + std::to_string(h[kOffDType]));
  const uint8_t chain = h[kOffChain];
  if (!IsValidChain(chain)) {
    return Status::Corruption("frame has invalid codec chain " + std::to_string(chain));
  }
  if (h[kOffFlags] != 0 || LoadU32(h + kOffReserved) != 0) {
    return Status::Corruption("frame has non-zero reserved header bytes");
  }
  FrameInfo info;
  info.dtype = *dtype;
  info.chain = chain;
  info.element_count = LoadU64(h + kOffElementCount);
  info.base_version = LoadU64(h + kOffBaseVersion);
  info.new_version = LoadU64(h + kOffNewVersion);
  info.base_hash = LoadU64(h + kOffBaseHash);
  info.result_hash = LoadU64(h + kOffResultHash);
  info.payload_size = LoadU64(h + kOffPayloadSize);
  size_t tensor_bytes = 0;
  if (!internal::TensorSize(info.element_count, DTypeSize(info.dtype), &tensor_bytes) ||
      tensor_bytes > SIZE_MAX - kHeaderSize - kSparseBodySlack) {
    return Status::Corruption("frame element count " + std::to_string(info.element_count) +
                              " is too large");
  }
  info.tensor_bytes = tensor_bytes;
  if (info.payload_size > SIZE_MAX - kHeaderSize) {
    return Status::Corruption("frame payload size is too large");
  }
  info.frame_size = info.payload_size + kHeaderSize;
  if (info.is_full_value() && (info.base_version != 0 || info.base_hash != 0)) {
    return Status::Corruption("full-value frame names a base");
  }
  return info;
}

std::string ChainName(uint8_t chain) {
  if (!format::IsValidChain(chain)) return "invalid";
  std::string name;
  auto add = [&name](const char* stage) {
    if (!name.empty()) name += '+';
    name += stage;
  };
  add((chain & kChainXor) == 0 ? "raw" : (chain & kChainDiff) != 0 ? "diff" : "xor");
  if ((chain & kChainSparse) != 0) add("sparse");
  if ((chain & kChainPlanes) != 0) add("planes");
  if ((chain & kChainZstd) != 0) add("zstd");
  return name;
}

size_t EncodeBound(DType dtype, size_t element_count) {
  size_t bytes = 0;
  if (!internal::TensorSize(element_count, DTypeSize(dtype), &bytes)) return 0;
  if (bytes > SIZE_MAX - format::kHeaderSize - format::kSparseBodySlack) return 0;
  return bytes + format::kHeaderSize;
}

}  // namespace easysync::codec
