#include "easysync/tensor.h"

#include <gtest/gtest.h>

#include "encode_util.h"

#include <cstring>

#include "easysync/value_traits.h"

namespace easysync {
namespace {

TEST(Tensor, ZeroFilledAndAligned) {
  Tensor t(DType::kFloat32, {3, 5});
  EXPECT_EQ(t.numel(), 15u);
  EXPECT_EQ(t.nbytes(), 60u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 64, 0u);
  for (size_t i = 0; i < t.numel(); ++i) EXPECT_EQ(t.data_as<float>()[i], 0.f);
}

TEST(Tensor, CopiesShareUntilWritten) {
  Tensor a(DType::kInt32, {4});
  a.mutable_data_as<int32_t>()[0] = 7;
  Tensor b = a;
  EXPECT_EQ(a.data(), b.data());
  b.mutable_data_as<int32_t>()[0] = 9;  // copy on write
  EXPECT_NE(a.data(), b.data());
  EXPECT_EQ(a.data_as<int32_t>()[0], 7);
  EXPECT_EQ(b.data_as<int32_t>()[0], 9);
}

TEST(Tensor, RejectsBadShapes) {
  EXPECT_THROW(Tensor(DType::kFloat32, {-1}), Error);
  EXPECT_THROW(Tensor(DType::kFloat32, {1, 1, 1, 1, 1, 1, 1, 1, 1}), Error);
  EXPECT_FALSE(ShapeNumel(std::vector<int64_t>{1ll << 40, 1ll << 40}).ok());
}

TEST(Tensor, EmptyTensors) {
  Tensor t(DType::kFloat64, {0, 7});
  EXPECT_EQ(t.nbytes(), 0u);
  Tensor u(DType::kFloat64, {0, 7});
  EXPECT_EQ(t, u);
  EXPECT_FALSE(t == Tensor(DType::kFloat64, {7, 0}));
}

using testing::Encode;

TEST(TensorEncoding, RoundTripsEveryDType) {
  for (DType d : kAllDTypes) {
    Tensor t(d, {2, 3, 5});
    for (size_t i = 0; i < t.nbytes(); ++i) t.mutable_data()[i] = std::byte(i * 7 + 1);
    auto bytes = Encode(t);
    Tensor back;
    ASSERT_TRUE(ValueTraits<Tensor>::Decode(bytes, &back).ok()) << DTypeName(d);
    EXPECT_EQ(back, t) << DTypeName(d);
  }
}

TEST(TensorEncoding, DecodeReusesUnsharedStorage) {
  Tensor t(DType::kFloat32, {1024});
  auto bytes = Encode(t);
  Tensor out(DType::kFloat32, {1024});
  const std::byte* before = out.data();
  ASSERT_TRUE(ValueTraits<Tensor>::Decode(bytes, &out).ok());
  EXPECT_EQ(out.data(), before);
  Tensor holder = out;  // shared now: decoding must not write under the holder
  ASSERT_TRUE(ValueTraits<Tensor>::Decode(bytes, &out).ok());
  EXPECT_NE(out.data(), holder.data());
}

TEST(TensorEncoding, RejectsEveryTruncationAndBadHeader) {
  Tensor t(DType::kInt16, {3, 3});
  auto bytes = Encode(t);
  for (size_t n = 0; n < bytes.size(); ++n) {
    Tensor out;
    EXPECT_FALSE(ValueTraits<Tensor>::Decode(std::span(bytes.data(), n), &out).ok()) << n;
  }
  for (size_t i = 0; i < 16; ++i) {  // magic, dtype, ndim, size
    auto bad = bytes;
    bad[i] ^= std::byte{0x40};
    Tensor out;
    Status s = ValueTraits<Tensor>::Decode(bad, &out);
    EXPECT_EQ(s.code(), StatusCode::kCorruption) << i;
  }
}

}  // namespace
}  // namespace easysync
