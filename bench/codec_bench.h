// The pieces of the `easysync-bench codec` suite: one measured result per tensor pair (a base
// and the new value encoded against it), on the host (codec_host.cc) or on a CUDA device
// (codec_device.cc), plus synthetic pairs (codec_synthetic.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "easysync/dtype.h"

namespace easysync::bench {

// A base and the new value of one tensor: raw little-endian elements of the same size.
struct TensorPair {
  std::string label;  // what the result line calls it: "a.bin->b.bin", "rl-bf16", ...
  DType dtype = DType::kUInt8;
  std::vector<uint8_t> base;
  std::vector<uint8_t> cur;
};

// One result line: named fields in print order. Integers stay exact; the median line of a
// series takes the median of every numeric field.
class Record {
 public:
  enum class Kind { kInt, kReal, kText };
  struct Field {
    std::string key;
    Kind kind = Kind::kInt;
    int64_t i = 0;
    double d = 0;
    std::string s;
  };

  Record& Add(std::string_view key, int64_t v) {
    return Put({std::string(key), Kind::kInt, v, 0, {}});
  }
  Record& Add(std::string_view key, double v) {
    return Put({std::string(key), Kind::kReal, 0, v, {}});
  }
  Record& Add(std::string_view key, std::string v) {
    return Put({std::string(key), Kind::kText, 0, 0, std::move(v)});
  }
  const std::vector<Field>& fields() const { return fields_; }
  // The field named key, or null.
  const Field* Find(std::string_view key) const;

 private:
  Record& Put(Field f);
  std::vector<Field> fields_;
};

// Timed repetitions (after a warm-up) that each reported figure is the median of.
struct Reps {
  int warmup = 2;
  int timed = 9;
};

// Encodes pair.cur against pair.base with a reusable codec::Encoder, decodes it back with a
// codec::Decoder, and adds the codec's figures, memcpy and the three baselines to *out.
// Returns false (with *error set) when encoding or decoding fails or the round trip is not
// bit-exact. REQUIRES: base and cur have the same size, a multiple of the dtype size.
bool MeasureHostPair(const TensorPair& pair, const Reps& reps, Record* out, std::string* error);

// Whether the device variant can run here; when not, *why says what is missing.
bool CudaDeviceUsable(std::string* why);

// The device variant: the XOR diff + change map kernel against a device-to-device copy of the
// same size, and how much of the tensor compaction leaves to cross PCIe.
// REQUIRES: CudaDeviceUsable(); block_bytes > 0.
bool MeasureDevicePair(const TensorPair& pair, const Reps& reps, size_t block_bytes, Record* out,
                       std::string* error);

// Names of the synthetic pairs, for the usage text.
inline constexpr const char* kSyntheticNames[] = {"rl-bf16", "dense-f32", "noise-bf16"};

// The size of a synthetic pair unless the caller asks for another.
inline constexpr size_t kSyntheticBytes = size_t{64} << 20;

// Fills *pair with the synthetic pair `name`, `bytes` long (rounded down to whole elements;
// fixed seeds: the same bytes on every run, and a longer pair starts with a shorter one's
// bytes); false when the name is unknown.
bool MakeSyntheticPair(std::string_view name, TensorPair* pair, size_t bytes = kSyntheticBytes);

// Snapshot files (codec_bench.cc), shared with net-tensor's --steps.
// A dtype by its name (DTypeName) or a short alias (bf16, f32, ...).
std::optional<DType> ParseDType(std::string_view name);
// Reads a whole file into *out; false with *error set when it cannot.
bool ReadFile(const std::filesystem::path& path, std::vector<uint8_t>* out, std::string* error);
// The regular *.bin files of dir, sorted by name; false (with *error) when fewer than two.
bool ListSteps(const std::string& dir, std::vector<std::filesystem::path>* files,
               std::string* error);

}  // namespace easysync::bench
