// Fuzzes the sparse stage decoder on its own: body parsing, gap validation and application.
// Input: byte 0 picks the element size and plane layout, bytes 1-2 the element count, the rest
// is the sparse body. A validated body applied twice must restore the tensor.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "codecs/sparse.h"

using namespace easysync::codec::internal;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const size_t esize = size_t{1} << (data[0] & 3);
  const bool planes = (data[0] & 4) != 0;
  const uint64_t count = data[1] | (uint64_t{data[2]} << 8);
  SparseBody body;
  if (!ParseSparseBody(data + 3, size - 3, count, esize, planes, &body).ok()) return 0;
  if (!ValidateSparseGaps(body, count).ok()) return 0;
  std::vector<uint8_t> tensor(count * esize);
  for (size_t i = 0; i < tensor.size(); ++i) tensor[i] = static_cast<uint8_t>(i);
  const std::vector<uint8_t> before = tensor;
  SparseApplier applier(body, esize);
  applier.ApplyUntil(count / 2, tensor.data());
  applier.ApplyUntil(count, tensor.data());
  applier.Rewind();
  applier.ApplyUntil(count, tensor.data());
  if (tensor != before) abort();
  return 0;
}
