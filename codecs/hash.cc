// XXH3-64 through libxxhash; on x86-64 through its runtime dispatch, which picks the widest
// vector unit of the machine (the hash passes run at memory speed only with AVX2 or better).
//
// Its one-shot hash of a long input returns with the upper halves of the vector registers
// dirty (no vzeroupper; the streaming calls clean up). Until something clears them, every
// legacy-encoded SSE instruction after it (the codec's scans, anything built for baseline
// x86-64) runs slower: the sparse scan of a 256 MiB bf16 step took 43 ms instead of 24 after
// one such hash, until a glibc string function happened to clear the state. Each call here
// therefore leaves them clean.
#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
#endif

#include "codecs/buffers.h"
#include "easysync/codec.h"

namespace easysync::codec {
namespace internal {
namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
[[gnu::target("avx")]] void ZeroUpper() { __builtin_ia32_vzeroupper(); }
// vzeroupper exists only where AVX does; the dispatch uses wider units only there too.
// (A static initializer may run before libgcc's own: __builtin_cpu_init first.)
const bool kHasAvx = (__builtin_cpu_init(), __builtin_cpu_supports("avx"));
inline void ClearUpperVectorState() {
  if (kHasAvx) ZeroUpper();
}
#else
inline void ClearUpperVectorState() {}
#endif

}  // namespace

uint64_t Hash64(const void* data, size_t n) {
  const uint64_t h = XXH3_64bits(data, n);
  ClearUpperVectorState();
  return h;
}

StreamHash::StreamHash() : state_(XXH3_createState()) { Reset(); }
StreamHash::~StreamHash() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void StreamHash::Reset() {
  if (state_ != nullptr) XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}
void StreamHash::Update(const void* data, size_t n) {
  if (n == 0) return;
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), data, n);
  ClearUpperVectorState();
}
uint64_t StreamHash::Digest() const {
  const uint64_t h = XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_));
  ClearUpperVectorState();
  return h;
}

}  // namespace internal

uint64_t HashBytes(std::span<const uint8_t> bytes) {
  return internal::Hash64(bytes.data(), bytes.size());
}

}  // namespace easysync::codec
