// XXH3-64 through libxxhash; on x86-64 through its runtime dispatch, which picks the widest
// vector unit of the machine (the hash passes run at memory speed only with AVX2 or better).
#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
#endif

#include "codecs/buffers.h"
#include "easysync/codec.h"

namespace easysync::codec {
namespace internal {

uint64_t Hash64(const void* data, size_t n) { return XXH3_64bits(data, n); }

StreamHash::StreamHash() : state_(XXH3_createState()) { Reset(); }
StreamHash::~StreamHash() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void StreamHash::Reset() {
  if (state_ != nullptr) XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}
void StreamHash::Update(const void* data, size_t n) {
  if (n != 0) XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), data, n);
}
uint64_t StreamHash::Digest() const {
  return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_));
}

}  // namespace internal

uint64_t HashBytes(std::span<const uint8_t> bytes) {
  return internal::Hash64(bytes.data(), bytes.size());
}

}  // namespace easysync::codec
