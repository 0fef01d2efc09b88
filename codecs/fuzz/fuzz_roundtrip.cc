// Fuzzes the encoder with arbitrary tensors: every frame it writes must decode bit-exactly and
// fit in EncodeBound. Input: byte 0 picks the dtype and options; the rest is split into base
// and cur halves.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "easysync/codec.h"

using namespace easysync;
using namespace easysync::codec;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const DType dtype = kAllDTypes[data[0] % std::size(kAllDTypes)];
  EncoderOptions options;
  options.allow_sparse = (data[0] & 0x10) == 0;
  options.allow_planes = (data[0] & 0x20) == 0;
  options.allow_zstd = (data[0] & 0x40) == 0;
  const size_t esize = DTypeSize(dtype);
  const size_t count = (size - 1) / 2 / esize;
  const uint8_t* base_bytes = data + 1;
  // cur = base XOR the second half: zero bytes there are unchanged elements.
  std::vector<uint8_t> cur(base_bytes, base_bytes + count * esize);
  for (size_t i = 0; i < cur.size(); ++i) cur[i] ^= data[1 + count * esize + i];
  const TensorBytes base{dtype, count, base_bytes};
  std::vector<uint8_t> frame(EncodeBound(dtype, count));
  Encoder enc(options);
  Result<size_t> n = enc.Encode(TensorBytes{dtype, count, cur.data()}, &base, 5, 6, frame);
  if (!n.ok() || *n > frame.size()) abort();
  Decoder dec;
  std::vector<uint8_t> out(cur.size());
  if (!dec.Decode({frame.data(), *n}, base_bytes, count * esize, out).ok()) abort();
  if (out != cur) abort();
  return 0;
}
