// Nested values: lists and maps of scalars, strings and bytes (an inventory, a config).
//
// Value is the dynamic type; any type msgpack-c can pack (std::vector<std::string>,
// std::map<std::string, int64_t>, ...) is a nested attribute too. Both travel as msgpack.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace easysync {

using Bytes = std::vector<uint8_t>;

class Value {
 public:
  using List = std::vector<Value>;
  using Map = std::map<std::string, Value>;
  using Variant =
      std::variant<std::monostate, bool, int64_t, double, std::string, Bytes, List, Map>;

  Value() = default;
  Value(std::nullptr_t) {}                      // NOLINT
  Value(bool b) : v_(b) {}                      // NOLINT
  Value(int v) : v_(int64_t{v}) {}              // NOLINT
  Value(int64_t v) : v_(v) {}                   // NOLINT
  Value(double v) : v_(v) {}                    // NOLINT
  Value(const char* s) : v_(std::string(s)) {}  // NOLINT
  Value(std::string s) : v_(std::move(s)) {}    // NOLINT
  Value(Bytes b) : v_(std::move(b)) {}          // NOLINT
  Value(List l) : v_(std::move(l)) {}           // NOLINT
  Value(Map m) : v_(std::move(m)) {}            // NOLINT

  bool is_null() const { return std::holds_alternative<std::monostate>(v_); }
  template <class T>
  bool is() const {
    return std::holds_alternative<T>(v_);
  }
  // REQUIRES: is<T>(); throws std::bad_variant_access otherwise.
  template <class T>
  const T& as() const {
    return std::get<T>(v_);
  }
  template <class T>
  T& as() {
    return std::get<T>(v_);
  }
  const Variant& variant() const { return v_; }

  friend bool operator==(const Value& a, const Value& b) { return a.v_ == b.v_; }

 private:
  Variant v_;
};

}  // namespace easysync
