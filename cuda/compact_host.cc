#include <cstring>
#include <string>

#include "compact.h"

namespace easysync::cuda {

size_t CompactChangedBlocksHost(const uint8_t* xor_bytes, size_t n, size_t block_bytes,
                                const uint8_t* changed, uint32_t* out_block_ids,
                                uint8_t* out_bytes) {
  const size_t blocks = NumBlocks(n, block_bytes);
  size_t count = 0;
  for (size_t b = 0; b < blocks; ++b) {
    if (changed[b] == 0) continue;
    out_block_ids[count] = static_cast<uint32_t>(b);
    std::memcpy(out_bytes + count * block_bytes, xor_bytes + b * block_bytes,
                BlockSize(b, n, block_bytes));
    ++count;
  }
  return count;
}

Status ValidateBlockIds(const uint32_t* block_ids, size_t count, size_t n, size_t block_bytes) {
  if (count == 0) return Status::Ok();
  if (block_bytes == 0) return Status::InvalidArgument("ValidateBlockIds: block_bytes is 0");
  const size_t blocks = NumBlocks(n, block_bytes);
  if (count > blocks) {
    return Status::InvalidArgument("ValidateBlockIds: " + std::to_string(count) + " ids for " +
                                   std::to_string(blocks) + " blocks");
  }
  for (size_t j = 0; j < count; ++j) {
    const uint32_t id = block_ids[j];
    if (id >= blocks || (j > 0 && id <= block_ids[j - 1])) {
      return Status::InvalidArgument("ValidateBlockIds: id " + std::to_string(id) + " at " +
                                     std::to_string(j) + " is out of range or not increasing (" +
                                     std::to_string(blocks) + " blocks)");
    }
  }
  return Status::Ok();
}

Status ApplyCompactedBlocksHost(const uint32_t* block_ids, const uint8_t* bytes, size_t count,
                                size_t n, size_t block_bytes, uint8_t* base) {
  EASYSYNC_RETURN_IF_ERROR(ValidateBlockIds(block_ids, count, n, block_bytes));
  for (size_t j = 0; j < count; ++j) {
    const size_t begin = size_t{block_ids[j]} * block_bytes;
    const uint8_t* src = bytes + j * block_bytes;
    const size_t size = BlockSize(block_ids[j], n, block_bytes);
    for (size_t k = 0; k < size; ++k) base[begin + k] ^= src[k];
  }
  return Status::Ok();
}

}  // namespace easysync::cuda
