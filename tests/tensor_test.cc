#include "easysync/tensor.h"

#include <gtest/gtest.h>

#include "encode_util.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <iterator>
#include <memory>
#include <numeric>
#include <thread>
#include <vector>

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

TEST(Tensor, BorrowedBytesAreSharedAndCopiedOnWriteWhileTheOwnerIsHeld) {
  struct alignas(64) Block {
    int32_t v[64];
    const int32_t* data() const { return v; }
    int32_t operator[](size_t i) const { return v[i]; }
  };
  auto owner = std::make_shared<Block>();
  std::fill(std::begin(owner->v), std::end(owner->v), 5);
  ASSERT_EQ(reinterpret_cast<uintptr_t>(owner->data()) % 64, 0u);
  const auto* bytes = reinterpret_cast<const std::byte*>(owner->data() + 16);  // +64 bytes
  auto t = Tensor::Borrow(DType::kInt32, {4, 4}, owner, bytes);
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t->data(), bytes);  // no copy
  EXPECT_EQ(t->data_as<int32_t>()[3], 5);
  EXPECT_FALSE(t->unique());
  // The owner is held elsewhere: a write copies first and leaves the owner's bytes alone.
  t->mutable_data_as<int32_t>()[0] = 9;
  EXPECT_NE(t->data(), bytes);
  EXPECT_EQ((*owner)[16], 5);
  EXPECT_EQ(t->data_as<int32_t>()[0], 9);
  // The last holder of the owner writes in place.
  auto u = Tensor::Borrow(DType::kInt32, {16}, owner, bytes);
  ASSERT_TRUE(u.ok());
  std::weak_ptr<Block> gone = owner;
  owner.reset();
  EXPECT_TRUE(u->unique());
  u->mutable_data_as<int32_t>()[1] = 3;
  EXPECT_EQ(u->data(), bytes);
  EXPECT_FALSE(gone.expired());  // the tensor keeps it alive
  EXPECT_EQ(u->data_as<int32_t>()[1], 3);

  auto keep = std::make_shared<Block>();
  EXPECT_EQ(
      Tensor::Borrow(DType::kInt32, {4}, keep, reinterpret_cast<const std::byte*>(keep->data() + 1))
          .status()
          .code(),
      StatusCode::kInvalidArgument);  // not 64-byte aligned
}

// A holder on another thread reads the bytes, then drops its reference; the owner, seeing it is
// the only one left, writes. Nothing else orders the two threads, so the write must be ordered
// after that read by the sole-owner check itself (else ThreadSanitizer reports a race: these
// run under it).
TEST(SoleOwner, OrdersAnotherThreadsLastReadBeforeTheWrite) {
  auto buf = std::make_shared<std::vector<int>>(4096, 1);
  std::atomic<long> sum{0};
  std::thread reader([copy = buf, &sum]() mutable {
    sum.store(std::accumulate(copy->begin(), copy->end(), 0L), std::memory_order_relaxed);
    copy.reset();
  });
  while (!detail::SoleOwner(buf)) std::this_thread::yield();
  std::fill(buf->begin(), buf->end(), 2);
  reader.join();
  EXPECT_EQ(sum.load(), 4096);
  EXPECT_FALSE(detail::SoleOwner(std::shared_ptr<int>()));
  auto second = buf;
  EXPECT_FALSE(detail::SoleOwner(buf));
}

TEST(SoleOwner, ATensorWritesInPlaceOnceAnotherThreadDroppedItsCopy) {
  Tensor t(DType::kInt32, {4096});
  std::fill_n(t.mutable_data_as<int32_t>(), t.numel(), 1);
  const std::byte* bytes = t.data();
  std::atomic<long> sum{0};
  std::thread reader([copy = t, &sum]() mutable {
    const int32_t* v = copy.data_as<int32_t>();
    sum.store(std::accumulate(v, v + copy.numel(), 0L), std::memory_order_relaxed);
    copy = Tensor();
  });
  while (!t.unique()) std::this_thread::yield();
  std::fill_n(t.mutable_data_as<int32_t>(), t.numel(), 2);
  reader.join();
  EXPECT_EQ(t.data(), bytes);  // in place: no copy on write
  EXPECT_EQ(sum.load(), 4096);
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
