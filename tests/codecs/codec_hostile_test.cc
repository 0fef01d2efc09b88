// The decoder against hostile input: every byte of small frames of every chain flipped, every
// truncation, and hand-made frames whose header is valid but whose payload lies. Each must
// give an error or (a flip in a byte nothing depends on) the exact tensor; never a crash, a
// wrong tensor, or a write outside the output (ASan builds check the last).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "codec_test_util.h"
#include "codecs/coding.h"
#include "codecs/frame.h"
#include "codecs/frame_format.h"
#include "easysync/codec.h"

namespace easysync::codec {
namespace {

using testing::MakeTensor;
using testing::Mutate;
using testing::Pattern;
using testing::View;

struct SmallFrame {
  std::string name;
  std::vector<uint8_t> base;
  std::vector<uint8_t> want;
  std::vector<uint8_t> frame;
};

// Small frames covering every chain the encoder emits.
std::vector<SmallFrame> MakeFrames() {
  struct Spec {
    const char* chain;
    DType dtype;
    size_t count;
    double density;
    EncoderOptions options;
  };
  const Spec specs[] = {
      {"raw", DType::kFloat32, 5, 1.0, {}},
      {"raw+zstd", DType::kUInt8, 300, 0.0, {1, true, true, false}},
      {"raw+planes+zstd", DType::kBFloat16, 300, 0.0, {1, true, true, false}},
      {"xor+sparse+planes", DType::kBFloat16, 300, 0.01, {1, true, true, true, false, false}},
      {"xor+sparse+planes+zstd", DType::kFloat32, 3000, 0.02, {1, true, true, true, true, false}},
      {"xor+sparse+zstd", DType::kUInt8, 20000, 0.02, {}},
      {"xor+planes+zstd", DType::kFloat16, 400, 0.5, {1, false, true, true, true, false}},
      {"xor+zstd", DType::kInt8, 400, 0.5, {1, false, true, true}},
      {"diff+sparse+planes", DType::kBFloat16, 300, 0.01, {1, true, true, true, false, true}},
      {"diff+sparse+planes+zstd", DType::kFloat32, 3000, 0.02, {}},
      {"diff+planes+zstd", DType::kFloat16, 400, 0.5, {1, false, true, true}},
      {"diff+sparse+planes+zstd", DType::kFloat64, 2000, 0.03, {}},
  };
  std::vector<SmallFrame> frames;
  uint64_t seed = 100;
  for (const Spec& s : specs) {
    SmallFrame f;
    f.name = s.chain;
    f.base = MakeTensor(s.dtype, s.count, ++seed);
    f.want = Mutate(f.base, s.dtype, s.density, Pattern::kRandom, ++seed);
    if (s.density == 1.0) {  // incompressible: raw
      std::mt19937_64 rng(seed);
      for (auto& b : f.want) b = static_cast<uint8_t>(rng());
    }
    f.frame.resize(EncodeBound(s.dtype, s.count));
    Encoder enc(s.options);
    const TensorBytes b = View(s.dtype, f.base);
    Result<size_t> size = enc.Encode(View(s.dtype, f.want), &b, 11, 12, f.frame);
    EXPECT_TRUE(size.ok());
    f.frame.resize(size.ok() ? *size : 0);
    frames.push_back(std::move(f));
  }
  return frames;
}

// Decodes out of place and in place; each must fail or give exactly `want`; in place a failure
// must leave the base untouched.
void ExpectErrorOrExact(Decoder& dec, std::span<const uint8_t> frame, const SmallFrame& f,
                        const std::string& what) {
  std::vector<uint8_t> out(f.want.size(), 0x5A);
  Status s = dec.Decode(frame, f.base.data(), f.base.size(), out);
  if (s.ok()) {
    ASSERT_EQ(out, f.want) << what << ": decoded a wrong tensor";
  }
  std::vector<uint8_t> in_place = f.base;
  s = dec.Decode(frame, in_place.data(), in_place.size(), in_place);
  if (s.ok()) {
    ASSERT_EQ(in_place, f.want) << what << " (in place): decoded a wrong tensor";
  } else {
    ASSERT_EQ(in_place, f.base) << what << " (in place): base damaged by a failed decode";
  }
}

TEST(CodecHostile, SmallFramesCoverEveryChain) {
  for (const SmallFrame& f : MakeFrames()) {
    Result<FrameInfo> info = PeekFrame(f.frame);
    ASSERT_TRUE(info.ok()) << f.name;
    EXPECT_EQ(ChainName(info->chain), f.name);
    Decoder dec;
    std::vector<uint8_t> out(f.want.size());
    ASSERT_TRUE(dec.Decode(f.frame, f.base.data(), f.base.size(), out).ok()) << f.name;
    EXPECT_EQ(out, f.want) << f.name;
  }
}

TEST(CodecHostile, EveryByteFlipped) {
  Decoder dec;
  for (const SmallFrame& f : MakeFrames()) {
    std::vector<uint8_t> bad = f.frame;
    for (size_t i = 0; i < bad.size(); ++i) {
      for (uint8_t mask : {uint8_t{0x01}, uint8_t{0x80}, uint8_t{0xFF}}) {
        bad[i] ^= mask;
        ExpectErrorOrExact(dec, bad, f, f.name + " byte " + std::to_string(i));
        bad[i] ^= mask;
      }
    }
  }
}

TEST(CodecHostile, EveryTruncationAndExtension) {
  Decoder dec;
  for (const SmallFrame& f : MakeFrames()) {
    for (size_t len = 0; len < f.frame.size(); ++len) {
      std::vector<uint8_t> out(f.want.size());
      const std::span<const uint8_t> cut(f.frame.data(), len);
      EXPECT_FALSE(dec.Decode(cut, f.base.data(), f.base.size(), out).ok())
          << f.name << " cut at " << len;
    }
    std::vector<uint8_t> longer = f.frame;
    longer.push_back(0);
    std::vector<uint8_t> out(f.want.size());
    EXPECT_FALSE(dec.Decode(longer, f.base.data(), f.base.size(), out).ok()) << f.name;
  }
}

// A frame whose header is valid (fresh header check) around an arbitrary payload.
std::vector<uint8_t> Forge(DType dtype, uint64_t count, uint8_t chain,
                           const std::vector<uint8_t>& payload, const std::vector<uint8_t>& base) {
  FrameInfo info;
  info.dtype = dtype;
  info.chain = chain;
  info.element_count = count;
  if ((chain & kChainXor) != 0) {
    info.base_version = 1;
    info.base_hash = HashBytes(base);
  }
  info.result_hash = 12345;
  info.payload_size = payload.size();
  std::vector<uint8_t> frame(format::kHeaderSize);
  internal::WriteHeader(info, frame.data());
  frame.insert(frame.end(), payload.begin(), payload.end());
  return frame;
}

std::vector<uint8_t> Varints(std::initializer_list<uint64_t> values) {
  std::vector<uint8_t> out(values.size() * format::kMaxVarintBytes);
  uint8_t* p = out.data();
  for (uint64_t v : values) p = internal::PutVarint(p, v);
  out.resize(static_cast<size_t>(p - out.data()));
  return out;
}

TEST(CodecHostile, ForgedPayloadsAreRejected) {
  const size_t count = 100;
  const std::vector<uint8_t> base(count * 2, 7);
  const uint8_t sparse = kChainXor | kChainSparse;
  auto cat = [](std::vector<uint8_t> a, const std::vector<uint8_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  const std::vector<std::pair<std::string, std::vector<uint8_t>>> cases = {
      {"count past element_count", cat(Varints({101, 101}), std::vector<uint8_t>(101 + 202))},
      {"gap past the end", cat(Varints({1, 1, 100}), {0, 1})},
      {"second gap past the end", cat(Varints({2, 2, 50, 49}), {0, 1, 0, 1})},
      {"gap_bytes too short", cat(Varints({2, 1, 3, 4}), {0, 1, 0, 1})},
      {"gap_bytes past the body", cat(Varints({1, 9, 3}), {0, 1})},
      {"values too short", cat(Varints({1, 1, 3}), {0})},
      {"trailing bytes", cat(Varints({1, 1, 3}), {0, 1, 9})},
      {"overlong gap", cat(Varints({1, 2}), {0x83, 0x00, 0, 1})},
      {"varint overflow", cat(Varints({1, 11}), {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                                 0xff, 0x7f, 0, 1, 0})},
      {"empty body", {}},
      {"truncated count", {0x80}},
  };
  Decoder dec;
  for (const auto& [name, body] : cases) {
    std::vector<uint8_t> out(base.size());
    const std::vector<uint8_t> frame = Forge(DType::kBFloat16, count, sparse, body, base);
    Status s = dec.Decode(frame, base.data(), base.size(), out);
    EXPECT_EQ(s.code(), StatusCode::kCorruption) << name;
    EXPECT_NE(s.message().find("sparse body"), std::string::npos) << name << ": " << s.message();
  }
  // Dense and raw payloads of the wrong size, zstd garbage, a zstd bomb.
  std::vector<uint8_t> out(base.size());
  EXPECT_FALSE(dec.Decode(Forge(DType::kBFloat16, count, 0, std::vector<uint8_t>(199), base),
                          nullptr, 0, out)
                   .ok());
  EXPECT_FALSE(
      dec.Decode(Forge(DType::kBFloat16, count, kChainXor, std::vector<uint8_t>(201), base),
                 base.data(), base.size(), out)
          .ok());
  EXPECT_FALSE(
      dec.Decode(Forge(DType::kBFloat16, count, kChainZstd, {1, 2, 3, 4, 5}, base), nullptr, 0, out)
          .ok());
  // A real zstd frame of 1 MB of zeros claimed to fill a 200-byte tensor.
  {
    std::vector<uint8_t> zeros(1 << 20), big(EncodeBound(DType::kUInt8, zeros.size()));
    Encoder enc(EncoderOptions{1, true, false, true});
    Result<size_t> size =
        enc.EncodeFull(TensorBytes{DType::kUInt8, zeros.size(), zeros.data()}, 1, big);
    ASSERT_TRUE(size.ok());
    const std::vector<uint8_t> bomb(big.begin() + 64, big.begin() + static_cast<long>(*size));
    Status s = dec.Decode(Forge(DType::kBFloat16, count, kChainZstd, bomb, base), nullptr, 0, out);
    EXPECT_EQ(s.code(), StatusCode::kCorruption) << s.message();
    s = dec.Decode(Forge(DType::kBFloat16, count, sparse | kChainZstd, bomb, base), base.data(),
                   base.size(), out);
    EXPECT_EQ(s.code(), StatusCode::kCorruption) << s.message();
  }
}

TEST(CodecHostile, BadHeaders) {
  const std::vector<uint8_t> base(16, 1);
  std::vector<uint8_t> out(16);
  Decoder dec;
  std::vector<uint8_t> frame = Forge(DType::kUInt8, 16, 0, base, base);
  ASSERT_TRUE(dec.Decode(frame, nullptr, 0, out).ok() == false);  // result hash is forged
  // Sparse without xor, unknown stage bits, an unknown dtype: rejected by PeekFrame even with
  // a valid header check.
  for (uint8_t chain : {uint8_t{kChainSparse}, uint8_t{0x10}, uint8_t{0x80}}) {
    EXPECT_FALSE(PeekFrame(Forge(DType::kUInt8, 16, chain, base, base)).ok()) << int{chain};
  }
  frame[format::kOffDType] = 0;
  EXPECT_FALSE(PeekFrame(frame).ok());
  // An element count whose size overflows.
  FrameInfo info;
  info.dtype = DType::kFloat64;
  info.element_count = UINT64_MAX / 2;
  std::vector<uint8_t> header(64);
  internal::WriteHeader(info, header.data());
  EXPECT_EQ(PeekFrame(header).status().code(), StatusCode::kCorruption);
  // A full value that names a base.
  info.element_count = 1;
  info.base_version = 3;
  internal::WriteHeader(info, header.data());
  EXPECT_FALSE(PeekFrame(header).ok());
}

TEST(CodecHostile, RandomPayloadsBehindValidHeaders) {
  std::mt19937_64 rng(42);
  Decoder dec;
  const std::vector<uint8_t> base = MakeTensor(DType::kFloat16, 257, 1);
  std::vector<uint8_t> out(base.size());
  for (int i = 0; i < 3000; ++i) {
    std::vector<uint8_t> payload(rng() % 64);
    for (auto& b : payload) b = static_cast<uint8_t>(rng() % 4 == 0 ? rng() % 3 : rng());
    const uint8_t chain = static_cast<uint8_t>(rng() % 16);
    if (!format::IsValidChain(chain)) continue;
    std::vector<uint8_t> frame = Forge(DType::kFloat16, 257, chain, payload, base);
    EXPECT_FALSE(dec.Decode(frame, base.data(), base.size(), out).ok());
  }
}

}  // namespace
}  // namespace easysync::codec
