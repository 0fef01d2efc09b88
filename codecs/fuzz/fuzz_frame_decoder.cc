// Fuzzes Decoder::Decode and PeekFrame with arbitrary frames.
//
// A fuzzer cannot forge a base whose XXH3 matches a frame's base hash, so the delta paths are
// reached by passing the frame's own base hash as the known base hash; the result hash still
// fails for forged frames, which is the point: nothing before that check may crash or write
// outside the output. In place, a failed decode must leave the base as it was.
//
// Mutated headers almost never keep a valid header check, so each input is decoded twice: as
// given, and with its header check and payload size repaired, which lets the fuzzer explore
// every header field.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "easysync/codec.h"

using easysync::codec::DecodeOptions;
using easysync::codec::Decoder;
using easysync::codec::FrameInfo;

namespace {

void DecodeOne(std::span<const uint8_t> frame) {
  static Decoder dec;  // reused, like a receiver's: exercises warm scratch buffers
  easysync::Result<FrameInfo> info = easysync::codec::PeekFrame(frame);
  if (!info.ok()) {
    uint8_t out[16];
    if (dec.Decode(frame, nullptr, 0, out).ok()) abort();  // a bad header never decodes
    return;
  }
  if (info->tensor_bytes > (1u << 20)) return;  // keep runs fast; sizes are checked anyway
  const size_t n = static_cast<size_t>(info->tensor_bytes);
  std::vector<uint8_t> base(n);
  for (size_t i = 0; i < n; ++i) base[i] = static_cast<uint8_t>(i * 131 + 7);
  std::vector<uint8_t> out(n);
  (void)dec.Decode(frame, base.data(), base.size(), out);

  DecodeOptions known;
  known.known_base_hash = info->base_hash;
  (void)dec.Decode(frame, base.data(), base.size(), out, known);

  std::vector<uint8_t> in_place = base;
  if (!dec.Decode(frame, in_place.data(), in_place.size(), in_place, known).ok() &&
      in_place != base) {
    abort();  // a failed in-place decode damaged the base
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  DecodeOne({data, size});
  if (size >= 64) {
    std::vector<uint8_t> fixed(data, data + size);
    const uint64_t payload = size - 64;
    std::memcpy(&fixed[48], &payload, 8);
    const auto check = static_cast<uint32_t>(easysync::codec::HashBytes({fixed.data(), 60}));
    std::memcpy(&fixed[60], &check, 4);
    DecodeOne(fixed);
  }
  return 0;
}
