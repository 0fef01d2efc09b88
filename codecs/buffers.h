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
