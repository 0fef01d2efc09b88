// The bytes ValueTraits<T> writes for a value, as a test sees them.
#pragma once

#include <cstddef>
#include <vector>

#include "easysync/value_traits.h"

namespace easysync::testing {

template <class T>
std::vector<std::byte> Encode(const T& v) {
  return ValueTraits<T>::WithEncoding(v, [](size_t n, auto&& enc) {
    std::vector<std::byte> out(n);
    enc(out.data());
    return out;
  });
}

}  // namespace easysync::testing
