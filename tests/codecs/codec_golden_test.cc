// Golden frames: fixed inputs whose frames are committed under tests/codecs/golden/, so that a
// change of the wire format (or of what the encoder picks) is a deliberate act.
//
// Every golden frame must decode to its input, always. The bytes the encoder produces must
// equal the committed ones; for zstd chains that holds only with the zstd version that wrote
// them (zstd does not promise identical output across versions), recorded in
// golden/zstd_version.txt. To regenerate after a deliberate change:
//   EASYSYNC_UPDATE_GOLDEN=1 ./codecs_test --gtest_filter='CodecGolden.*'
#include <zstd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "easysync/codec.h"

#ifndef EASYSYNC_CODECS_GOLDEN_DIR
#error "EASYSYNC_CODECS_GOLDEN_DIR must name tests/codecs/golden"
#endif

namespace easysync::codec {
namespace {

// splitmix64: fully specified, unlike the std:: distributions, so inputs never drift.
uint64_t Next(uint64_t* s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Weight-like elements: a small signed integer scaled by a power of two, in the dtype's bits.
std::vector<uint8_t> Weights(DType dtype, size_t count, uint64_t seed) {
  const size_t esize = DTypeSize(dtype);
  std::vector<uint8_t> out(count * esize);
  for (size_t i = 0; i < count; ++i) {
    const int v = static_cast<int>(Next(&seed) % 2001) - 1000;
    const float f = static_cast<float>(v) / 65536.f;  // exact in float
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (esize == 2) {
      const uint16_t h = static_cast<uint16_t>(u >> 16);
      std::memcpy(&out[i * esize], &h, 2);
    } else if (esize == 4) {
      std::memcpy(&out[i * esize], &u, 4);
    } else {
      const uint64_t w = Next(&seed) & 0xffff;
      std::memcpy(&out[i * esize], &w, esize);
    }
  }
  return out;
}

// Adds one to the low byte of every element picked with probability per_mille / 1000.
std::vector<uint8_t> Step(const std::vector<uint8_t>& base, size_t esize, unsigned per_mille,
                          uint64_t seed) {
  std::vector<uint8_t> cur = base;
  for (size_t i = 0; i < cur.size() / esize; ++i) {
    if (Next(&seed) % 1000 < per_mille) ++cur[i * esize];
  }
  return cur;
}

struct Golden {
  const char* name;
  const char* chain;
  DType dtype;
  size_t count;
  unsigned per_mille;  // 0 with full: a full value
  bool full;
  bool diff = false;  // EncoderOptions::allow_diff
};

constexpr Golden kGoldens[] = {
    {"empty_uint8", "raw", DType::kUInt8, 0, 0, true},
    {"full_raw_float64", "raw", DType::kFloat64, 3, 0, true},
    {"full_planes_zstd_bfloat16", "raw+planes+zstd", DType::kBFloat16, 1000, 0, true},
    {"delta_unchanged_float32", "xor+sparse+planes", DType::kFloat32, 1000, 0, false},
    {"delta_sparse_bfloat16", "xor+sparse+planes", DType::kBFloat16, 300, 10, false},
    {"delta_sparse_planes_zstd_bfloat16", "xor+sparse+planes+zstd", DType::kBFloat16, 20000, 10,
     false},
    {"delta_dense_planes_zstd_float32", "xor+planes+zstd", DType::kFloat32, 4000, 600, false},
    {"delta_diff_sparse_bfloat16", "diff+sparse+planes", DType::kBFloat16, 300, 10, false, true},
    {"delta_diff_sparse_planes_zstd_bfloat16", "diff+sparse+planes+zstd", DType::kBFloat16, 20000,
     10, false, true},
    {"delta_diff_dense_planes_zstd_float32", "diff+planes+zstd", DType::kFloat32, 4000, 600, false,
     true},
};

std::string Path(const std::string& file) {
  return std::string(EASYSYNC_CODECS_GOLDEN_DIR) + "/" + file;
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

bool Updating() { return std::getenv("EASYSYNC_UPDATE_GOLDEN") != nullptr; }

TEST(CodecGolden, FramesMatchCommittedBytes) {
  const std::string zstd_now = std::to_string(ZSTD_versionNumber());
  const std::vector<uint8_t> v = ReadFile(Path("zstd_version.txt"));
  const std::string zstd_then(v.begin(), v.end());
  if (Updating()) std::ofstream(Path("zstd_version.txt")) << zstd_now;
  Decoder dec;
  uint64_t seed = 1;
  for (const Golden& g : kGoldens) {
    // The level is part of what goldens pin.
    Encoder enc(EncoderOptions{3, true, true, true, true, g.diff});
    const size_t esize = DTypeSize(g.dtype);
    const std::vector<uint8_t> base = Weights(g.dtype, g.count, ++seed);
    const std::vector<uint8_t> cur = g.full ? base : Step(base, esize, g.per_mille, ++seed);
    std::vector<uint8_t> frame(EncodeBound(g.dtype, g.count));
    const TensorBytes cur_view{g.dtype, g.count, cur.data()};
    const TensorBytes base_view{g.dtype, g.count, base.data()};
    Result<size_t> size = g.full ? enc.EncodeFull(cur_view, 1, frame)
                                 : enc.Encode(cur_view, &base_view, 41, 42, frame);
    ASSERT_TRUE(size.ok()) << g.name;
    frame.resize(*size);
    EXPECT_EQ(ChainName(PeekFrame(frame)->chain), g.chain) << g.name;
    const std::string file = Path(std::string(g.name) + ".frame");
    if (Updating()) {
      std::ofstream(file, std::ios::binary)
          .write(reinterpret_cast<const char*>(frame.data()), static_cast<long>(frame.size()));
    }
    const std::vector<uint8_t> golden = ReadFile(file);
    ASSERT_FALSE(golden.empty()) << "missing " << file;

    // Compatibility: the committed frame decodes to the input.
    std::vector<uint8_t> out(cur.size());
    Status s = dec.Decode(golden, base.data(), base.size(), out);
    ASSERT_TRUE(s.ok()) << g.name << ": " << s.message();
    EXPECT_EQ(out, cur) << g.name;

    // Stability: the encoder still writes exactly these bytes.
    const bool zstd = (PeekFrame(golden)->chain & kChainZstd) != 0;
    if (zstd && zstd_then != zstd_now) {
      std::cout << "[ NOTE ] " << g.name << ": zstd " << zstd_now << " differs from the golden's "
                << zstd_then << "; byte equality not checked\n";
      continue;
    }
    EXPECT_EQ(frame, golden) << g.name << ": the encoder's output changed. If the wire format "
                             << "changed on purpose, bump kFormatVersion and regenerate.";
  }
}

}  // namespace
}  // namespace easysync::codec
