// Whether a shared buffer may be written in place.
#pragma once

#include <atomic>
#include <memory>

namespace easysync::detail {

// True when p is the only reference to its object and every use of the object through
// references dropped before this call happened before it: the caller may then write through p
// (while nothing can hand out a new reference meanwhile, e.g. under the lock that guards p).
//
// use_count() alone does not say the second part: it is a relaxed load, so a reader on another
// thread that read the bytes and then dropped its reference is not ordered before the write
// that follows (a data race; ThreadSanitizer reports it). The dropping decrement releases; what
// acquires it here is taking a reference, an acquire-release increment of the same count in
// libstdc++ (and one ThreadSanitizer sees, unlike a fence). libc++ increments relaxed, so there
// an acquire fence does it.
template <class T>
bool SoleOwner(const std::shared_ptr<T>& p) {
  if (!p || p.use_count() != 1) return false;
#if defined(_LIBCPP_VERSION)
  std::atomic_thread_fence(std::memory_order_acquire);
#else
  std::shared_ptr<T> probe = p;  // the acquire; dropped again at once
#endif
  return true;
}

}  // namespace easysync::detail
