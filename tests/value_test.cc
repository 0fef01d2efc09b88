#include "easysync/value.h"

#include <gtest/gtest.h>

#include "encode_util.h"

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "easysync/value_traits.h"

namespace easysync {
namespace {

using testing::Encode;

template <class T>
T RoundTrip(const T& v) {
  auto bytes = Encode(v);
  T out{};
  Status s = ValueTraits<T>::Decode(bytes, &out);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

TEST(ValueTraits, ScalarsAreFixedSize) {
  EXPECT_EQ(Encode<int64_t>(-5).size(), 8u);
  EXPECT_EQ(Encode<float>(1.5f).size(), 4u);
  EXPECT_EQ(RoundTrip<int64_t>(-5), -5);
  EXPECT_EQ(RoundTrip<double>(2.25), 2.25);
  EXPECT_EQ(RoundTrip<uint16_t>(65535), 65535);
  EXPECT_EQ(RoundTrip<bool>(true), true);
  EXPECT_EQ(ValueTraits<int32_t>::kKind, ValueKind::kInt32);
  EXPECT_EQ(ValueTraits<uint64_t>::kKind, ValueKind::kUInt64);
  EXPECT_EQ(ValueTraits<float>::kKind, ValueKind::kFloat32);
}

TEST(ValueTraits, ScalarDecodeChecksSizeAndBool) {
  int64_t out = 0;
  std::vector<std::byte> short_bytes(7);
  EXPECT_EQ(ValueTraits<int64_t>::Decode(short_bytes, &out).code(), StatusCode::kCorruption);
  bool b = false;
  std::vector<std::byte> two{std::byte{2}};
  EXPECT_EQ(ValueTraits<bool>::Decode(two, &b).code(), StatusCode::kCorruption);
}

TEST(ValueTraits, StringsAndBytes) {
  EXPECT_EQ(RoundTrip<std::string>(""), "");
  std::string with_nul("a\0b", 3);
  EXPECT_EQ(RoundTrip(with_nul), with_nul);
  Bytes bytes{0, 1, 255};
  EXPECT_EQ(RoundTrip(bytes), bytes);
}

TEST(ValueTraits, StandardContainersTravelAsMsgpack) {
  std::vector<std::string> inv{"sword", "shield"};
  EXPECT_EQ(ValueTraits<decltype(inv)>::kKind, ValueKind::kMsgpack);
  EXPECT_EQ(RoundTrip(inv), inv);
  std::map<std::string, int64_t> cfg{{"lr", 3}, {"steps", 1000}};
  EXPECT_EQ(RoundTrip(cfg), cfg);
}

TEST(ValueTraits, NestedValueRoundTrips) {
  Value v(Value::Map{{"name", "player1"},
                     {"hp", int64_t{97}},
                     {"pos", Value::List{1.5, -2.0}},
                     {"flags", Value::List{true, nullptr}},
                     {"blob", Bytes{1, 2, 3}}});
  Value back = RoundTrip(v);
  EXPECT_EQ(back, v);
  EXPECT_EQ(back.as<Value::Map>().at("pos").as<Value::List>()[1].as<double>(), -2.0);
}

TEST(ValueTraits, NestedValueAndTypedContainerInteroperate) {
  std::vector<std::string> inv{"a", "b"};
  auto bytes = Encode(inv);
  Value v;
  ASSERT_TRUE(ValueTraits<Value>::Decode(bytes, &v).ok());
  ASSERT_TRUE(v.is<Value::List>());
  EXPECT_EQ(v.as<Value::List>()[1].as<std::string>(), "b");
}

// A tuple (written by Python: an array whose first element is the tuple marker) is a list
// here, or any C++ sequence; the marker anywhere else is not a value.
TEST(ValueTraits, ATupleIsAList) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> p(buf);
  p.pack_array(2);
  p.pack_array(3);  // (1, "a")
  detail::PackTupleMarker(p);
  p.pack_int64(1);
  p.pack(std::string("a"));
  p.pack_array(1);  // ()
  detail::PackTupleMarker(p);
  const auto bytes = std::as_bytes(std::span(buf.data(), buf.size()));
  Value v;
  ASSERT_TRUE(ValueTraits<Value>::Decode(bytes, &v).ok());
  EXPECT_EQ(v, Value(Value::List{Value::List{int64_t{1}, "a"}, Value::List{}}));
  std::tuple<std::tuple<int64_t, std::string>, std::vector<int64_t>> typed;
  ASSERT_TRUE(ValueTraits<decltype(typed)>::Decode(bytes, &typed).ok());
  EXPECT_EQ(std::get<0>(typed), std::make_tuple(int64_t{1}, std::string("a")));
  EXPECT_TRUE(std::get<1>(typed).empty());

  msgpack::sbuffer stray;
  msgpack::packer<msgpack::sbuffer> q(stray);
  q.pack_array(2);
  q.pack_int64(1);
  detail::PackTupleMarker(q);  // not first: an extension value, which nothing reads
  EXPECT_FALSE(
      ValueTraits<Value>::Decode(std::as_bytes(std::span(stray.data(), stray.size())), &v).ok());
}

TEST(ValueTraits, GarbageMsgpackIsAnErrorNotACrash) {
  std::vector<std::byte> junk{std::byte{0xdd}, std::byte{0xff}, std::byte{0xff}, std::byte{0xff},
                              std::byte{0xff}};  // array32 claiming 4G elements
  Value v;
  EXPECT_EQ(ValueTraits<Value>::Decode(junk, &v).code(), StatusCode::kCorruption);
  std::vector<std::string> inv;
  auto bytes = Encode(int64_t{5});  // 8 raw bytes: not one msgpack value
  EXPECT_FALSE(ValueTraits<std::vector<std::string>>::Decode(bytes, &inv).ok());
  // Deep nesting stops at the depth limit.
  std::vector<std::byte> deep(10000, std::byte{0x91});  // fixarray(1) x 10000
  EXPECT_EQ(ValueTraits<Value>::Decode(deep, &v).code(), StatusCode::kCorruption);
}

TEST(ValueTraits, WrongShapeOfMsgpackIsTypeMismatch) {
  auto bytes = Encode(std::map<std::string, int64_t>{{"a", 1}});
  std::vector<std::string> inv;
  EXPECT_EQ(ValueTraits<std::vector<std::string>>::Decode(bytes, &inv).code(),
            StatusCode::kTypeMismatch);
}

}  // namespace
}  // namespace easysync
