// Round trips of every dtype at every density, pattern and awkward size, through every way of
// calling the decoder (into a fresh buffer, in place, with a known base hash).
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "codec_test_util.h"
#include "easysync/codec.h"

namespace easysync::codec {
namespace {

using testing::MakeTensor;
using testing::Mutate;
using testing::Pattern;
using testing::View;

constexpr size_t kSizes[] = {0, 1, 2, 3, 7, 31, 33, 1000, 4099, 65537, 100003};
constexpr double kDensities[] = {0.0, 0.0001, 0.01, 0.1, 1.0};

// Decodes `frame` all three ways and checks each gives `want`.
void CheckDecodes(Decoder& dec, std::span<const uint8_t> frame, const std::vector<uint8_t>& base,
                  const std::vector<uint8_t>& want, const std::string& what) {
  Result<FrameInfo> info = PeekFrame(frame);
  ASSERT_TRUE(info.ok()) << what << ": " << info.status().message();
  ASSERT_EQ(info->frame_size, frame.size()) << what;
  ASSERT_EQ(info->tensor_bytes, want.size()) << what;
  EXPECT_EQ(info->result_hash, HashBytes(want)) << what;

  std::vector<uint8_t> out(want.size(), 0xAB);
  Status s = dec.Decode(frame, base.data(), base.size(), out);
  ASSERT_TRUE(s.ok()) << what << ": " << s.message();
  ASSERT_EQ(out, want) << what;

  std::vector<uint8_t> in_place = base;
  if (info->is_full_value()) in_place.resize(want.size());
  s = dec.Decode(frame, in_place.data(), in_place.size(), in_place);
  ASSERT_TRUE(s.ok()) << what << " (in place): " << s.message();
  ASSERT_EQ(in_place, want) << what << " (in place)";

  if (!info->is_full_value()) {
    s = dec.Revert(frame, in_place);
    ASSERT_TRUE(s.ok()) << what << " (revert): " << s.message();
    ASSERT_EQ(in_place, base) << what << " (revert)";

    DecodeOptions known;
    known.known_base_hash = HashBytes(base);
    std::fill(out.begin(), out.end(), 0);
    s = dec.Decode(frame, base.data(), base.size(), out, known);
    ASSERT_TRUE(s.ok()) << what << " (known hash): " << s.message();
    ASSERT_EQ(out, want) << what << " (known hash)";
  }
}

// Encodes cur against a copy of base that the encoder may update (EncodeHints::update_base),
// with the base's hash known and not: the frame must be `frame` byte for byte, and the copy
// must hold cur when the encoder says it updated it (a sparse delta), else base untouched.
void CheckUpdatesTheBase(Encoder& enc, DType dtype, const std::vector<uint8_t>& base,
                         const std::vector<uint8_t>& cur, std::span<const uint8_t> frame,
                         const std::string& what) {
  const Result<FrameInfo> info = PeekFrame(frame);
  ASSERT_TRUE(info.ok()) << what;
  const uint64_t base_version = info->is_full_value() ? 7 : info->base_version;
  for (const bool known : {false, true}) {
    const std::string how = what + (known ? " (update_base, known hash)" : " (update_base)");
    std::vector<uint8_t> updating = base, again(EncodeBound(dtype, base.size() / DTypeSize(dtype)));
    const TensorBytes was = View(dtype, updating);
    bool updated = true;
    EncodeHints hints;
    hints.update_base = updating.data();
    hints.base_updated = &updated;
    if (known) hints.known_base_hash = HashBytes(base);
    Result<size_t> size =
        enc.Encode(View(dtype, cur), &was, base_version, info->new_version, again, hints);
    ASSERT_TRUE(size.ok()) << how << ": " << size.status().message();
    ASSERT_EQ(*size, frame.size()) << how;
    EXPECT_TRUE(std::equal(frame.begin(), frame.end(), again.begin())) << how;
    if (updated) {
      EXPECT_NE(info->chain & kChainSparse, 0) << how;
      EXPECT_TRUE(updating == cur) << how;
    } else {
      EXPECT_TRUE(updating == base) << how;
    }
  }
}

class RoundTrip : public ::testing::TestWithParam<DType> {};

TEST_P(RoundTrip, EveryDensityPatternAndSize) {
  const DType dtype = GetParam();
  const size_t esize = DTypeSize(dtype);
  Encoder enc;  // one context for everything: exercises reuse across sizes and chains
  Decoder dec;
  std::vector<uint8_t> frame;
  uint64_t seed = static_cast<uint64_t>(dtype) * 1000;
  for (size_t count : kSizes) {
    const std::vector<uint8_t> base = MakeTensor(dtype, count, ++seed);
    frame.resize(EncodeBound(dtype, count));
    for (double density : kDensities) {
      for (Pattern pattern : {Pattern::kRandom, Pattern::kClustered}) {
        for (bool random_values : {false, true}) {
          const std::vector<uint8_t> cur =
              Mutate(base, dtype, density, pattern, ++seed, random_values);
          const std::string what = std::string(DTypeName(dtype)) + " n=" + std::to_string(count) +
                                   " d=" + std::to_string(density) +
                                   (pattern == Pattern::kRandom ? " random" : " clustered") +
                                   (random_values ? " values" : " ulp");
          const TensorBytes cur_view = View(dtype, cur);
          const TensorBytes base_view = View(dtype, base);
          Result<size_t> size = enc.Encode(cur_view, &base_view, 7, 8, frame);
          ASSERT_TRUE(size.ok()) << what << ": " << size.status().message();
          ASSERT_LE(*size, EncodeBound(dtype, count)) << what;
          ASSERT_LE(*size, count * esize + 64) << what;
          const std::span<const uint8_t> f(frame.data(), *size);
          Result<FrameInfo> info = PeekFrame(f);
          ASSERT_TRUE(info.ok()) << what;
          EXPECT_EQ(info->new_version, 8u) << what;
          if (info->is_full_value()) {
            EXPECT_EQ(info->base_version, 0u) << what;
          } else {
            EXPECT_EQ(info->base_version, 7u) << what;
            EXPECT_EQ(info->base_hash, HashBytes(base)) << what;
          }
          if (density == 0.0 && count >= 64) {
            EXPECT_FALSE(info->is_full_value()) << what;
            EXPECT_LE(*size, 64u + 8u) << what << " " << ChainName(info->chain);
          }
          CheckDecodes(dec, f, base, cur, what);
          // Asked to, the encoder also copies the tensor out, whatever frame it makes; the
          // frame is the same.
          std::vector<uint8_t> copy(cur.size(), 0xCD), again(frame.size());
          EncodeHints hints;
          hints.copy_to = copy.data();
          Result<size_t> copied = enc.Encode(cur_view, &base_view, 7, 8, again, hints);
          ASSERT_TRUE(copied.ok()) << what << " (copy_to): " << copied.status().message();
          ASSERT_EQ(*copied, *size) << what << " (copy_to)";
          EXPECT_TRUE(std::equal(f.begin(), f.end(), again.begin())) << what << " (copy_to)";
          EXPECT_EQ(copy, cur) << what << " (copy_to)";
          std::fill(copy.begin(), copy.end(), 0xCD);
          copied = enc.Encode(cur_view, nullptr, 0, 8, again, hints);  // a full value
          ASSERT_TRUE(copied.ok()) << what << " (copy_to, full)";
          EXPECT_EQ(copy, cur) << what << " (copy_to, full)";
          CheckUpdatesTheBase(enc, dtype, base, cur, f, what);
        }
      }
    }
    // A full value of the same tensor decodes without any base.
    Result<size_t> full = enc.EncodeFull(View(dtype, base), 3, frame);
    ASSERT_TRUE(full.ok());
    std::vector<uint8_t> out(base.size());
    ASSERT_TRUE(dec.Decode({frame.data(), *full}, nullptr, 0, out).ok());
    EXPECT_EQ(out, base);
  }
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, RoundTrip, ::testing::ValuesIn(kAllDTypes),
                         [](const ::testing::TestParamInfo<DType>& p) {
                           return std::string(DTypeName(p.param));
                         });

TEST(CodecRoundTrip, SparseUpdateIsSmall) {
  // 1% of bf16 elements by one ULP: the RL-style step the codec is built for.
  const size_t count = 1 << 20;
  const std::vector<uint8_t> base = MakeTensor(DType::kBFloat16, count, 1);
  const std::vector<uint8_t> cur = Mutate(base, DType::kBFloat16, 0.01, Pattern::kRandom, 2);
  Encoder enc;
  std::vector<uint8_t> frame(EncodeBound(DType::kBFloat16, count));
  const TensorBytes b = View(DType::kBFloat16, base);
  Result<size_t> size = enc.Encode(View(DType::kBFloat16, cur), &b, 1, 2, frame);
  ASSERT_TRUE(size.ok());
  EXPECT_GT(static_cast<double>(cur.size()) / static_cast<double>(*size), 80.0);
  EXPECT_EQ(ChainName(PeekFrame(frame)->chain), "diff+sparse+planes+zstd");
  // Such a step updates a base in place (the same frame; the changes stored as found).
  std::vector<uint8_t> updating = base, again(frame.size());
  const TensorBytes u = View(DType::kBFloat16, updating);
  bool updated = false;
  EncodeHints hints;
  hints.update_base = updating.data();
  hints.base_updated = &updated;
  ASSERT_EQ(enc.Encode(View(DType::kBFloat16, cur), &u, 1, 2, again, hints).value(), *size);
  EXPECT_TRUE(updated);
  EXPECT_TRUE(updating == cur);
  EXPECT_TRUE(
      std::equal(again.begin(), again.begin() + static_cast<ptrdiff_t>(*size), frame.begin()));
}

TEST(CodecRoundTrip, TheSparseScanJudgesTheWholeFromItsFirstSixteenth) {
  // 32 MiB of bf16. Every element of the first sixteenth changed, none after: the part
  // scanned projects the sparse streams past half the tensor, so the scan stops there and the
  // update goes dense (zstd of the XOR planes, mostly zeros). The same changes in the last
  // sixteenth instead: nothing projected at the first sixteenth, the scan runs on, sparse.
  // Both decode bit-exact.
  const DType dtype = DType::kBFloat16;
  const size_t count = size_t{16} << 20;
  const std::vector<uint8_t> base = MakeTensor(dtype, count, 3);
  const size_t sixteenth = base.size() / 16;
  for (const bool first : {true, false}) {
    std::vector<uint8_t> cur = base;
    const size_t from = first ? 0 : base.size() - sixteenth;
    for (size_t i = from; i < from + sixteenth; i += 2) cur[i] ^= 0x5a;
    Encoder enc;
    std::vector<uint8_t> frame(EncodeBound(dtype, count));
    const TensorBytes b = View(dtype, base);
    Result<size_t> size = enc.Encode(View(dtype, cur), &b, 1, 2, frame);
    ASSERT_TRUE(size.ok());
    const uint8_t chain = PeekFrame(frame)->chain;
    EXPECT_EQ((chain & kChainSparse) != 0, !first) << ChainName(chain);
    EXPECT_LT(*size, base.size() / 8) << ChainName(chain);
    // A base the scan updated before it stopped is put back for the dense frame.
    CheckUpdatesTheBase(enc, dtype, base, cur, {frame.data(), *size},
                        first ? "dense after a sixteenth" : "sparse in the last sixteenth");
    Decoder dec;
    std::vector<uint8_t> out(base.size());
    ASSERT_TRUE(dec.Decode({frame.data(), *size}, base.data(), base.size(), out).ok());
    EXPECT_TRUE(out == cur);
  }
}

TEST(CodecRoundTrip, UpdateBaseIsTheBaseItself) {
  const DType dtype = DType::kFloat32;
  const std::vector<uint8_t> base = MakeTensor(dtype, 1000, 5);
  const std::vector<uint8_t> cur = Mutate(base, dtype, 0.01, Pattern::kRandom, 6);
  std::vector<uint8_t> other = base, frame(EncodeBound(dtype, 1000));
  const TensorBytes was = View(dtype, base);
  Encoder enc;
  bool updated = true;
  EncodeHints hints;
  hints.update_base = other.data();  // not the base
  hints.base_updated = &updated;
  EXPECT_EQ(enc.Encode(View(dtype, cur), &was, 1, 2, frame, hints).status().code(),
            StatusCode::kInvalidArgument);
  hints.update_base = const_cast<uint8_t*>(base.data());
  hints.base_updated = nullptr;  // nowhere to say whether it did
  EXPECT_EQ(enc.Encode(View(dtype, cur), &was, 1, 2, frame, hints).status().code(),
            StatusCode::kInvalidArgument);
  hints.base_updated = &updated;
  EXPECT_EQ(enc.Encode(View(dtype, cur), nullptr, 0, 2, frame, hints).status().code(),
            StatusCode::kInvalidArgument);  // no base
  EXPECT_TRUE(base == MakeTensor(dtype, 1000, 5));
}

TEST(CodecRoundTrip, DenseRandomNeverExceedsRawPlusHeader) {
  for (DType dtype : kAllDTypes) {
    const size_t count = 10007;
    std::vector<uint8_t> base(count * DTypeSize(dtype)), cur(base.size());
    std::mt19937_64 rng(static_cast<uint64_t>(dtype));
    for (auto& b : base) b = static_cast<uint8_t>(rng());
    for (auto& c : cur) c = static_cast<uint8_t>(rng());
    Encoder enc;
    std::vector<uint8_t> frame(EncodeBound(dtype, count));
    const TensorBytes b = View(dtype, base);
    Result<size_t> size = enc.Encode(View(dtype, cur), &b, 1, 2, frame);
    ASSERT_TRUE(size.ok());
    EXPECT_EQ(*size, cur.size() + 64) << DTypeName(dtype);
    EXPECT_EQ(PeekFrame(frame)->chain, 0) << "incompressible: raw";
  }
}

TEST(CodecRoundTrip, LargeValuesSkipZstdOnlyWhenItCannotPay) {
  // Above 1 MiB the encoder judges zstd on samples first. Noise: raw frames, whole or against
  // a base. Weights, and a dense update of them: still compressed.
  const size_t count = size_t{2} << 20;  // 4 MiB of bf16
  std::vector<uint8_t> noise(count * 2), noise2(count * 2);
  std::mt19937_64 rng(5);
  for (auto& b : noise) b = static_cast<uint8_t>(rng());
  for (auto& b : noise2) b = static_cast<uint8_t>(rng());
  const std::vector<uint8_t> weights = MakeTensor(DType::kBFloat16, count, 3);
  const std::vector<uint8_t> dense = Mutate(weights, DType::kBFloat16, 0.7, Pattern::kRandom, 4);
  struct Case {
    const std::vector<uint8_t>* cur;
    const std::vector<uint8_t>* base;
    bool compressed;
  };
  for (const Case& c : {Case{&noise, nullptr, false}, Case{&noise2, &noise, false},
                        Case{&weights, nullptr, true}, Case{&dense, &weights, true}}) {
    Encoder enc;
    Decoder dec;
    std::vector<uint8_t> frame(EncodeBound(DType::kBFloat16, count));
    const TensorBytes b = c.base ? View(DType::kBFloat16, *c.base) : TensorBytes{};
    Result<size_t> size =
        enc.Encode(View(DType::kBFloat16, *c.cur), c.base ? &b : nullptr, 1, 2, frame);
    ASSERT_TRUE(size.ok());
    const uint8_t chain = PeekFrame(frame)->chain;
    EXPECT_EQ((chain & kChainZstd) != 0, c.compressed) << ChainName(chain);
    if (c.compressed) {
      EXPECT_LT(*size, c.cur->size() * 9 / 10);
    }
    std::vector<uint8_t> out(c.cur->size());
    ASSERT_TRUE(dec.Decode(std::span<const uint8_t>(frame.data(), *size),
                           c.base ? c.base->data() : nullptr, c.base ? c.base->size() : 0, out)
                    .ok());
    EXPECT_EQ(out, *c.cur);
  }
}

TEST(CodecRoundTrip, ShapeOrDTypeChangeSendsFullValue) {
  const std::vector<uint8_t> base = MakeTensor(DType::kFloat32, 1000, 1);
  const std::vector<uint8_t> cur = MakeTensor(DType::kFloat32, 1001, 1);
  Encoder enc;
  Decoder dec;
  std::vector<uint8_t> frame(EncodeBound(DType::kFloat32, 1001));
  const TensorBytes b = View(DType::kFloat32, base);
  Result<size_t> size = enc.Encode(View(DType::kFloat32, cur), &b, 5, 6, frame);
  ASSERT_TRUE(size.ok());
  Result<FrameInfo> info = PeekFrame(frame);
  EXPECT_TRUE(info->is_full_value());
  EXPECT_EQ(info->base_version, 0u);
  std::vector<uint8_t> out(cur.size());
  ASSERT_TRUE(dec.Decode({frame.data(), *size}, base.data(), base.size(), out).ok());
  EXPECT_EQ(out, cur);
}

TEST(CodecRoundTrip, WrongBaseAsksForFullValueAndKeepsBase) {
  const size_t count = 5000;
  const std::vector<uint8_t> base = MakeTensor(DType::kFloat16, count, 1);
  const std::vector<uint8_t> cur = Mutate(base, DType::kFloat16, 0.01, Pattern::kRandom, 2);
  std::vector<uint8_t> other = Mutate(base, DType::kFloat16, 0.001, Pattern::kRandom, 3);
  Encoder enc;
  Decoder dec;
  std::vector<uint8_t> frame(EncodeBound(DType::kFloat16, count));
  const TensorBytes b = View(DType::kFloat16, base);
  Result<size_t> size = enc.Encode(View(DType::kFloat16, cur), &b, 1, 2, frame);
  ASSERT_TRUE(size.ok());
  const std::span<const uint8_t> f(frame.data(), *size);
  ASSERT_FALSE(PeekFrame(f)->is_full_value());

  std::vector<uint8_t> out(cur.size());
  Status s = dec.Decode(f, other.data(), other.size(), out);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(s.message().find("full value"), std::string::npos) << s.message();

  const std::vector<uint8_t> other_before = other;  // in place: the base survives
  s = dec.Decode(f, other.data(), other.size(), other);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_EQ(other, other_before);

  DecodeOptions wrong;
  wrong.known_base_hash = HashBytes(other);
  s = dec.Decode(f, base.data(), base.size(), out, wrong);
  EXPECT_NE(s.message().find("full value"), std::string::npos) << s.message();

  s = dec.Decode(f, nullptr, 0, out);
  EXPECT_NE(s.message().find("full value"), std::string::npos) << s.message();
  s = dec.Decode(f, base.data(), base.size() - 2, out);
  EXPECT_NE(s.message().find("full value"), std::string::npos) << s.message();
}

TEST(CodecRoundTrip, KnownBaseHashHintMatchesHashing) {
  const size_t count = 30000;
  const std::vector<uint8_t> base = MakeTensor(DType::kInt32, count, 1);
  const std::vector<uint8_t> cur = Mutate(base, DType::kInt32, 0.05, Pattern::kClustered, 2);
  Encoder enc;
  std::vector<uint8_t> f1(EncodeBound(DType::kInt32, count)), f2(f1.size());
  const TensorBytes b = View(DType::kInt32, base);
  EncodeHints hints;
  hints.known_base_hash = HashBytes(base);
  Result<size_t> s1 = enc.Encode(View(DType::kInt32, cur), &b, 1, 2, f1);
  Result<size_t> s2 = enc.Encode(View(DType::kInt32, cur), &b, 1, 2, f2, hints);
  ASSERT_TRUE(s1.ok() && s2.ok());
  f1.resize(*s1);
  f2.resize(*s2);
  EXPECT_EQ(f1, f2);
}

TEST(CodecRoundTrip, ChainOptionsAreHonoured) {
  const size_t count = 20000;
  const std::vector<uint8_t> base = MakeTensor(DType::kBFloat16, count, 1);
  const std::vector<uint8_t> cur = Mutate(base, DType::kBFloat16, 0.01, Pattern::kRandom, 2);
  const TensorBytes b = View(DType::kBFloat16, base);
  Decoder dec;
  struct Case {
    EncoderOptions options;
    const char* chain;
  };
  const Case cases[] = {
      {{1, true, true, true}, "diff+sparse+planes+zstd"},
      {{1, true, true, true, true, false}, "xor+sparse+planes+zstd"},
      {{1, true, false, true}, "xor+sparse+zstd"},
      {{1, false, true, true}, "diff+planes+zstd"},
      {{1, false, true, true, true, false}, "xor+planes+zstd"},
      {{1, false, false, true}, "xor+zstd"},
      {{1, true, true, false}, "raw+planes+zstd"},
      {{1, true, false, false}, "raw+zstd"},
  };
  for (const Case& c : cases) {
    Encoder enc(c.options);
    std::vector<uint8_t> frame(EncodeBound(DType::kBFloat16, count));
    Result<size_t> size = enc.Encode(View(DType::kBFloat16, cur), &b, 1, 2, frame);
    ASSERT_TRUE(size.ok());
    EXPECT_EQ(ChainName(PeekFrame(frame)->chain), c.chain);
    std::vector<uint8_t> out(cur.size());
    ASSERT_TRUE(dec.Decode({frame.data(), *size}, base.data(), base.size(), out).ok()) << c.chain;
    EXPECT_EQ(out, cur) << c.chain;
    if (!PeekFrame(frame)->is_full_value()) {
      ASSERT_TRUE(dec.Revert({frame.data(), *size}, out).ok()) << c.chain;
      EXPECT_EQ(out, base) << c.chain;
    }
  }
}

TEST(CodecRoundTrip, RevertNeedsTheDeltasResult) {
  const size_t count = 20000;
  const std::vector<uint8_t> base = MakeTensor(DType::kBFloat16, count, 1);
  const std::vector<uint8_t> cur = Mutate(base, DType::kBFloat16, 0.01, Pattern::kRandom, 2);
  const TensorBytes b = View(DType::kBFloat16, base);
  Encoder enc;
  Decoder dec;
  std::vector<uint8_t> frame(EncodeBound(DType::kBFloat16, count));
  Result<size_t> size = enc.Encode(View(DType::kBFloat16, cur), &b, 1, 2, frame);
  ASSERT_TRUE(size.ok());
  const std::span<const uint8_t> f(frame.data(), *size);
  ASSERT_FALSE(PeekFrame(f)->is_full_value());
  // Not the frame's result (the base itself): reverting cannot give the base.
  std::vector<uint8_t> other = base;
  EXPECT_EQ(dec.Revert(f, other).code(), StatusCode::kCorruption);
  std::vector<uint8_t> shorter(cur.begin(), cur.end() - 2);
  EXPECT_EQ(dec.Revert(f, shorter).code(), StatusCode::kInvalidArgument);
  // A full value has no base to go back to.
  Result<size_t> full = enc.Encode(View(DType::kBFloat16, cur), nullptr, 0, 1, frame);
  ASSERT_TRUE(full.ok());
  std::vector<uint8_t> value = cur;
  EXPECT_EQ(dec.Revert({frame.data(), *full}, value).code(), StatusCode::kInvalidArgument);
  // A truncated frame is refused before anything is written.
  value = cur;
  EXPECT_EQ(dec.Revert(f.first(f.size() - 1), value).code(), StatusCode::kCorruption);
  EXPECT_EQ(value, cur);
}

TEST(CodecRoundTrip, RejectsBadArguments) {
  Encoder enc;
  const std::vector<uint8_t> t = MakeTensor(DType::kFloat32, 100, 1);
  std::vector<uint8_t> small(EncodeBound(DType::kFloat32, 100) - 1);
  EXPECT_EQ(enc.EncodeFull(View(DType::kFloat32, t), 1, small).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeBound(static_cast<DType>(0), 10), 0u);
  EXPECT_EQ(EncodeBound(DType::kFloat64, SIZE_MAX / 4), 0u);
  EXPECT_EQ(EncodeBound(DType::kFloat64, 0), 64u);

  std::vector<uint8_t> frame(EncodeBound(DType::kFloat32, 100));
  Result<size_t> size = enc.EncodeFull(View(DType::kFloat32, t), 1, frame);
  ASSERT_TRUE(size.ok());
  Decoder dec;
  std::vector<uint8_t> out(t.size() + 4);
  EXPECT_EQ(dec.Decode({frame.data(), *size}, nullptr, 0, out).code(),
            StatusCode::kInvalidArgument);

  // copy_to must not overlap the tensor, the base or the output.
  std::vector<uint8_t> cur = t, base = MakeTensor(DType::kFloat32, 100, 2);
  const TensorBytes base_view = View(DType::kFloat32, base);
  for (uint8_t* bad : {cur.data() + 4, base.data(), frame.data() + 8}) {
    EncodeHints hints;
    hints.copy_to = bad;
    EXPECT_EQ(
        enc.Encode(View(DType::kFloat32, cur), &base_view, 1, 2, frame, hints).status().code(),
        StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace easysync::codec
