// Scratch memory and hashing shared by the encoder and decoder contexts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#include "easysync/status.h"

namespace easysync::codec::internal {

// A growable, uninitialized byte buffer. Grows only (a context reused for tensors of one size
// allocates once) and reports allocation failure as a Status instead of throwing.
class Scratch {
 public:
  // Makes capacity() >= n; contents are not preserved.
  [[nodiscard]] bool Reserve(size_t n) {
    if (n <= cap_) return true;
    const size_t grown = cap_ + cap_ / 2;
    const size_t want = n > grown ? n : grown;
    data_.reset();
    cap_ = 0;
    data_.reset(new (std::nothrow) uint8_t[want]);
    if (!data_) {
      data_.reset(new (std::nothrow) uint8_t[n]);
      if (!data_) return false;
      cap_ = n;
      return true;
    }
    cap_ = want;
    return true;
  }
  uint8_t* data() { return data_.get(); }
  size_t capacity() const { return cap_; }

 private:
  std::unique_ptr<uint8_t[]> data_;
  size_t cap_ = 0;
};

inline Status OutOfMemory(size_t n) {
  return Status::ResourceExhausted("codec scratch allocation of " + std::to_string(n) +
                                   " bytes failed");
}

// One-shot XXH3-64.
uint64_t Hash64(const void* data, size_t n);

// XXH3-64 from the block sums of cuda/xxh3_blocks.h, for bytes hashed where they live (a
// GPU): the hash of len bytes (len >= kXxh3SplitMinBytes) from the sums of their first
// Xxh3SplitBlocks(len) blocks and their bytes from Xxh3TailOffset(len) on (at most 1087).
inline constexpr size_t kXxh3SplitMinBytes = 241;  // shorter inputs take other paths
constexpr size_t Xxh3SplitBlocks(size_t len) { return len == 0 ? 0 : (len - 1) / 1024; }
constexpr size_t Xxh3TailOffset(size_t len) {
  return Xxh3SplitBlocks(len) * 1024 < len - 64 ? Xxh3SplitBlocks(len) * 1024 : len - 64;
}
uint64_t Xxh3FromBlockSums(const uint64_t* sums, const uint8_t* tail, size_t len);
// XXH3's default secret as the 24 little-endian words the block sums take.
const uint64_t* Xxh3SecretWords();

// Streaming XXH3-64 whose state is allocated once per owner (no allocation per Reset).
class StreamHash {
 public:
  StreamHash();
  ~StreamHash();
  StreamHash(const StreamHash&) = delete;
  StreamHash& operator=(const StreamHash&) = delete;
  bool ok() const { return state_ != nullptr; }  // false: allocation failed
  void Reset();
  void Update(const void* data, size_t n);
  uint64_t Digest() const;

 private:
  void* state_;  // XXH3_state_t*, kept opaque so xxhash.h stays private to codecs/
};

}  // namespace easysync::codec::internal
