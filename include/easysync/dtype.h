// Element types of tensor attributes, shared by core/, codecs/ and cuda/.
//
// The numeric values are part of the shared-memory layout and of the wire format: never
// renumber, only append.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace easysync {

enum class DType : uint8_t {
  kFloat32 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
  kFloat64 = 4,
  kInt8 = 5,
  kInt16 = 6,
  kInt32 = 7,
  kInt64 = 8,
  kUInt8 = 9,
  kBool = 10,
  kFloat8E4M3 = 11,
  kFloat8E5M2 = 12,
};

inline constexpr DType kAllDTypes[] = {
    DType::kFloat32, DType::kFloat16, DType::kBFloat16,   DType::kFloat64,
    DType::kInt8,    DType::kInt16,   DType::kInt32,      DType::kInt64,
    DType::kUInt8,   DType::kBool,    DType::kFloat8E4M3, DType::kFloat8E5M2,
};

// Bytes per element; 0 for a value that is not a DType.
constexpr size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kFloat64:
    case DType::kInt64:
      return 8;
    case DType::kFloat32:
    case DType::kInt32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
    case DType::kInt16:
      return 2;
    case DType::kInt8:
    case DType::kUInt8:
    case DType::kBool:
    case DType::kFloat8E4M3:
    case DType::kFloat8E5M2:
      return 1;
  }
  return 0;
}

constexpr std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat64:
      return "float64";
    case DType::kInt8:
      return "int8";
    case DType::kInt16:
      return "int16";
    case DType::kInt32:
      return "int32";
    case DType::kInt64:
      return "int64";
    case DType::kUInt8:
      return "uint8";
    case DType::kBool:
      return "bool";
    case DType::kFloat8E4M3:
      return "float8_e4m3";
    case DType::kFloat8E5M2:
      return "float8_e5m2";
  }
  return "invalid";
}

// The DType DTypeName gives this name, or nullopt.
constexpr std::optional<DType> DTypeFromName(std::string_view name) {
  for (DType t : kAllDTypes) {
    if (DTypeName(t) == name) return t;
  }
  return std::nullopt;
}

// Validates a DType read from untrusted bytes.
constexpr std::optional<DType> DTypeFromByte(uint8_t b) {
  if (b < 1 || b > 12) return std::nullopt;
  return static_cast<DType>(b);
}

}  // namespace easysync
