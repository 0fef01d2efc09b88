// The host half of XXH3-64 over block sums (buffers.h, cuda/xxh3_blocks.h): libxxhash's own
// scalar steps, from its header, run over sums that were computed elsewhere.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstring>

#include "codecs/buffers.h"

namespace easysync::codec::internal {
namespace {

static_assert(sizeof(XXH3_kSecret) == 192, "block sums assume the 192-byte default secret");
constexpr size_t kSecretBytes = sizeof(XXH3_kSecret);

struct SecretWords {
  uint64_t w[24];
  SecretWords() { std::memcpy(w, XXH3_kSecret, sizeof(w)); }
};

}  // namespace

const uint64_t* Xxh3SecretWords() {
  static const SecretWords words;
  return words.w;
}

uint64_t Xxh3FromBlockSums(const uint64_t* sums, const uint8_t* tail, size_t len) {
  XXH_ALIGN(XXH_ACC_ALIGN) xxh_u64 acc[XXH_ACC_NB] = XXH3_INIT_ACC;
  const xxh_u8* secret = XXH3_kSecret;
  const size_t blocks = Xxh3SplitBlocks(len);
  for (size_t k = 0; k < blocks; ++k) {
    for (size_t l = 0; l < XXH_ACC_NB; ++l) acc[l] += sums[k * XXH_ACC_NB + l];
    XXH3_scrambleAcc_scalar(acc, secret + kSecretBytes - XXH_STRIPE_LEN);
  }
  // The last partial block and the last stripe, as XXH3_hashLong_internal_loop does them.
  const size_t tail_offset = Xxh3TailOffset(len);
  const xxh_u8* last_block = tail + (blocks * 1024 - tail_offset);
  const size_t stripes = ((len - 1) - blocks * 1024) / XXH_STRIPE_LEN;
  for (size_t s = 0; s < stripes; ++s) {
    XXH3_accumulate_512_scalar(acc, last_block + s * XXH_STRIPE_LEN,
                               secret + s * XXH_SECRET_CONSUME_RATE);
  }
  XXH3_accumulate_512_scalar(acc, tail + (len - XXH_STRIPE_LEN - tail_offset),
                             secret + kSecretBytes - XXH_STRIPE_LEN - XXH_SECRET_LASTACC_START);
  return XXH3_mergeAccs(acc, secret + XXH_SECRET_MERGEACCS_START,
                        static_cast<xxh_u64>(len) * XXH_PRIME64_1);
}

}  // namespace easysync::codec::internal
