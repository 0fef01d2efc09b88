// The tensor delta frame: every constant of the wire format, in one place.
//
// Normative spec: docs/wire_format.md. A change here is a format change: bump kFormatVersion,
// update the spec and regenerate tests/codecs/golden/ deliberately.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

namespace easysync::codec::format {

static_assert(std::endian::native == std::endian::little,
              "tensor bytes are little-endian on the wire; a big-endian host needs byte swaps");

// "ESDF": EasySync Delta Frame.
inline constexpr uint8_t kMagic[4] = {0x45, 0x53, 0x44, 0x46};
inline constexpr uint8_t kFormatVersion = 1;

// The header is fixed-size; the payload follows it immediately.
inline constexpr size_t kHeaderSize = 64;

// Byte offsets of the header fields; every integer is little-endian.
inline constexpr size_t kOffMagic = 0;         // 4 bytes
inline constexpr size_t kOffVersion = 4;       // u8: kFormatVersion
inline constexpr size_t kOffDType = 5;         // u8: easysync::DType
inline constexpr size_t kOffChain = 6;         // u8: set of Stage bits
inline constexpr size_t kOffFlags = 7;         // u8: reserved, 0
inline constexpr size_t kOffElementCount = 8;  // u64
inline constexpr size_t kOffBaseVersion = 16;  // u64: 0 when the chain has no kXor
inline constexpr size_t kOffNewVersion = 24;   // u64: opaque to the codec
inline constexpr size_t kOffBaseHash = 32;     // u64: XXH3-64 of the base; 0 without kXor
inline constexpr size_t kOffResultHash = 40;   // u64: XXH3-64 of the decoded tensor bytes
inline constexpr size_t kOffPayloadSize = 48;  // u64: bytes after the header
inline constexpr size_t kOffReserved = 56;     // u32: reserved, 0
inline constexpr size_t kOffHeaderCheck = 60;  // u32: low 32 bits of XXH3-64(bytes [0, 60))
inline constexpr size_t kHeaderCheckedBytes = kOffHeaderCheck;

// Stages of a codec chain, one bit each. Encoding applies them in the order xor, sparse,
// planes, zstd; decoding undoes them in reverse. kSparse requires kXor.
inline constexpr uint8_t kXor = 1u << 0;  // the payload describes cur XOR base, not cur
inline constexpr uint8_t kSparse = 1u
                                   << 1;  // only changed elements: gap-coded positions + XOR bits
inline constexpr uint8_t kPlanes = 1u << 2;  // byte b of every element stored together
inline constexpr uint8_t kZstd = 1u << 3;    // the remaining payload is one zstd frame
// With kXor: each changed element is described by its arithmetic difference, not its XOR:
// zigzag((cur - base) mod 2^(8 esize)), an integer of the element's width. Requires kPlanes.
inline constexpr uint8_t kDiff = 1u << 4;
inline constexpr uint8_t kKnownStages = kXor | kSparse | kPlanes | kZstd | kDiff;

constexpr bool IsValidChain(uint8_t chain) {
  if ((chain & ~kKnownStages) != 0) return false;
  if ((chain & kSparse) != 0 && (chain & kXor) == 0) return false;
  if ((chain & kDiff) != 0 && ((chain & kXor) == 0 || (chain & kPlanes) == 0)) return false;
  return true;
}

// A sparse body may exceed the tensor by at most this much (its two count varints matter for
// tiny tensors); decoders size their scratch by it, so a frame cannot make them allocate more
// than the tensor it claims plus this.
inline constexpr size_t kSparseBodySlack = 32;

// Longest LEB128 encoding of a u64.
inline constexpr size_t kMaxVarintBytes = 10;

}  // namespace easysync::codec::format
