// The torch extension from C++: Synced<torch::Tensor> over real shared memory, its wire
// compatibility with easysync::Tensor, the Client custom class, and the delta ops.
#include "easysync/torch.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/custom_class.h>

#include <cstring>
#include <string>
#include <vector>

#include "client_class.h"
#include "easysync/device_codec.h"
#include "easysync/easysync.h"
#include "encode_util.h"
#include "ops.h"
#include "process_util.h"

namespace easysync {
namespace {

using std::chrono::seconds;
using torch_ext::TorchClient;

// Every torch dtype the codec carries.
const std::vector<at::ScalarType> kTorchDTypes = {
    at::kFloat, at::kHalf,  at::kBFloat16, at::kDouble, at::kFloat8_e4m3fn, at::kFloat8_e5m2,
    at::kChar,  at::kShort, at::kInt,      at::kLong,   at::kByte,          at::kBool};

// Deterministic bytes of any dtype (bool only 0 or 1: other bytes are not valid bools).
torch::Tensor Pattern(at::ScalarType type, std::vector<int64_t> shape, uint64_t seed) {
  torch::Tensor t = torch::empty(shape, torch::dtype(type));
  auto* p = static_cast<uint8_t*>(t.data_ptr());
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < t.nbytes(); ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = type == at::kBool ? static_cast<uint8_t>(x & 1) : static_cast<uint8_t>(x);
  }
  return t;
}

// Same dtype, shape and bytes (NaN payloads included, which torch::equal would not accept).
bool SameBytes(const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.defined() || !b.defined()) return false;
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const torch::Tensor ca = a.contiguous().cpu(), cb = b.contiguous().cpu();
  return ca.nbytes() == 0 ||
         std::memcmp(ca.const_data_ptr(), cb.const_data_ptr(), ca.nbytes()) == 0;
}

struct Model : SyncedObject {
  Synced<torch::Tensor> weights{this, "weights"};
  Synced<int64_t> step{this, "step"};
  explicit Model(Client& c, std::string key = "") : SyncedObject(c, "Model", std::move(key)) {}
};

TEST(TorchValueTraits, EveryDTypeRoundTrips) {
  for (at::ScalarType type : kTorchDTypes) {
    const torch::Tensor t = Pattern(type, {3, 5}, 7);
    torch::Tensor back;
    ASSERT_TRUE(ValueTraits<torch::Tensor>::Decode(testing::Encode(t), &back).ok());
    EXPECT_TRUE(SameBytes(back, t)) << TorchDTypeName(type);
    EXPECT_TRUE(back.is_cpu() && back.is_contiguous());
  }
}

TEST(TorchValueTraits, DTypeMappingIsOneToOne) {
  for (DType d : kAllDTypes) {
    const at::ScalarType t = TorchFromDType(d);
    ASSERT_EQ(DTypeFromTorch(t), d) << DTypeName(d);
    EXPECT_EQ(c10::elementSize(t), DTypeSize(d)) << DTypeName(d);
  }
  EXPECT_FALSE(DTypeFromTorch(at::kComplexFloat).has_value());
  EXPECT_FALSE(DTypeFromTorch(at::kUInt16).has_value());
}

TEST(TorchValueTraits, UnsupportedDTypeIsATypeMismatchNamingTheSupportedOnes) {
  const torch::Tensor c = torch::zeros({2}, torch::dtype(at::kComplexFloat));
  try {
    testing::Encode(c);
    FAIL() << "a complex tensor was encoded";
  } catch (const Error& e) {
    EXPECT_EQ(e.status().code(), StatusCode::kTypeMismatch);
    EXPECT_NE(e.status().message().find("complex64"), std::string::npos) << e.what();
    EXPECT_NE(e.status().message().find("float8_e4m3fn"), std::string::npos) << e.what();
  }
  EXPECT_THROW(testing::Encode(torch::zeros(std::vector<int64_t>(9, 1))), Error);
}

TEST(TorchValueTraits, DecodeReusesOnlyUnsharedStorage) {
  const auto bytes1 = testing::Encode(Pattern(at::kFloat, {64}, 1));
  const auto bytes2 = testing::Encode(Pattern(at::kFloat, {64}, 2));
  torch::Tensor out;
  ASSERT_TRUE(ValueTraits<torch::Tensor>::Decode(bytes1, &out).ok());
  const void* storage = out.const_data_ptr();
  ASSERT_TRUE(ValueTraits<torch::Tensor>::Decode(bytes2, &out).ok());
  EXPECT_EQ(out.const_data_ptr(), storage);  // same dtype and shape, no other holder
  EXPECT_TRUE(SameBytes(out, Pattern(at::kFloat, {64}, 2)));
  // A holder of the old value (what Synced::get hands out) never sees it change.
  const torch::Tensor held = out;
  ASSERT_TRUE(ValueTraits<torch::Tensor>::Decode(bytes1, &out).ok());
  EXPECT_NE(out.const_data_ptr(), held.const_data_ptr());
  EXPECT_TRUE(SameBytes(held, Pattern(at::kFloat, {64}, 2)));
  EXPECT_TRUE(SameBytes(out, Pattern(at::kFloat, {64}, 1)));
  // Memory torch does not own (from_blob) is never written, even when unshared.
  std::vector<float> foreign(64, -1.0f);
  out = torch::from_blob(foreign.data(), {64}, torch::kFloat);
  ASSERT_TRUE(ValueTraits<torch::Tensor>::Decode(bytes1, &out).ok());
  EXPECT_NE(out.const_data_ptr(), static_cast<const void*>(foreign.data()));
  EXPECT_EQ(foreign, std::vector<float>(64, -1.0f));
}

TEST(TorchSynced, EveryDTypeCrossesBetweenTwoClients) {
  const std::string cluster = testing::UniqueCluster("torch_dtypes");
  auto writer_client = shm_connect(cluster);
  auto reader_client = shm_connect(cluster);
  Model writer(*writer_client), reader(*reader_client);
  EXPECT_FALSE(reader.weights.get().defined());  // no value yet
  for (at::ScalarType type : kTorchDTypes) {
    const torch::Tensor t = Pattern(type, {4, 3, 2}, static_cast<uint64_t>(type));
    const uint64_t version = writer.weights.set(t);
    writer.step = static_cast<int64_t>(version);
    EXPECT_EQ(reader.weights.version(), version);
    EXPECT_TRUE(SameBytes(reader.weights.get(), t)) << TorchDTypeName(type);
    EXPECT_EQ(reader.step.get(), static_cast<int64_t>(version));
  }
}

TEST(TorchSynced, NonContiguousTensorsTravelInLogicalOrder) {
  const std::string cluster = testing::UniqueCluster("torch_strided");
  auto a = shm_connect(cluster);
  auto b = shm_connect(cluster);
  Model writer(*a), reader(*b);
  const torch::Tensor base = torch::arange(24, torch::dtype(at::kFloat)).reshape({4, 6});
  const torch::Tensor transposed = base.t();
  ASSERT_FALSE(transposed.is_contiguous());
  writer.weights = transposed;
  const torch::Tensor got = reader.weights.get();
  EXPECT_EQ(got.sizes(), (std::vector<int64_t>{6, 4}));
  EXPECT_TRUE(got.is_contiguous());
  EXPECT_TRUE(torch::equal(got, transposed));
  // A strided slice and a negated view are materialized too.
  writer.weights = base.slice(1, 0, 6, 2).neg();
  EXPECT_TRUE(torch::equal(reader.weights.get(), -base.slice(1, 0, 6, 2)));
}

TEST(TorchSynced, InteroperatesWithEasySyncTensor) {
  const std::string cluster = testing::UniqueCluster("torch_interop");
  auto a = shm_connect(cluster);
  auto b = shm_connect(cluster);
  Model torch_side(*a);
  SyncedObject plain_object(*b, "Model");
  Synced<Tensor> plain(&plain_object, "weights");

  const torch::Tensor w = Pattern(at::kBFloat16, {5, 7}, 3);
  torch_side.weights = w;
  const Tensor seen = plain.get();
  EXPECT_EQ(seen.dtype(), DType::kBFloat16);
  EXPECT_EQ(seen.shape(), (std::vector<int64_t>{5, 7}));
  ASSERT_EQ(seen.nbytes(), w.nbytes());
  EXPECT_EQ(std::memcmp(seen.data(), w.const_data_ptr(), w.nbytes()), 0);

  const int64_t values[] = {1, -2, 3, -4, 5, -6};
  plain = Tensor::FromData(DType::kInt64, {2, 3}, values);
  const torch::Tensor back = torch_side.weights.get();
  EXPECT_EQ(back.scalar_type(), at::kLong);
  EXPECT_TRUE(
      torch::equal(back, torch::tensor({1, -2, 3, -4, 5, -6}, torch::kLong).reshape({2, 3})));
}

TEST(TorchSynced, TensorWrittenByAnotherProcess) {
  const std::string cluster = testing::UniqueCluster("torch_process");
  auto client = shm_connect(cluster);
  Model model(*client);
  const pid_t writer = testing::Spawn([&] {
    auto c = shm_connect(cluster);
    Model m(*c);
    m.weights = Pattern(at::kFloat8_e5m2, {128, 3}, 11);
    m.step = 1;
    // Stay until the reader has seen the value, so the cluster outlives the write.
    return m.step.wait_for_change(seconds(30)) && m.step.get() == 2 ? 0 : 1;
  });
  ASSERT_TRUE(model.step.wait_for_change(seconds(30)));
  EXPECT_TRUE(SameBytes(model.weights.get(), Pattern(at::kFloat8_e5m2, {128, 3}, 11)));
  model.step = 2;
  EXPECT_EQ(testing::WaitChild(writer), 0);
}

// ----- torch.classes.easysync.Client -----

// Calls a method the way TorchScript does: through the registered class, boxed.
c10::IValue CallMethod(const c10::IValue& self, const std::string& name,
                       std::vector<c10::IValue> args) {
  torch::jit::Stack stack{self};
  for (auto& a : args) stack.push_back(std::move(a));
  self.toObject()->type()->getMethod(name).run(stack);
  return stack.empty() ? c10::IValue() : stack.back();
}

// A Client built by its registered constructor, as torch.classes.easysync.Client(...) does.
c10::IValue MakeRegisteredClient(const std::string& cluster) {
  const c10::ClassTypePtr type = torch::getCustomClass("__torch__.torch.classes.easysync.Client");
  EXPECT_NE(type, nullptr);
  c10::IValue self(c10::ivalue::Object::create(c10::StrongTypePtr(nullptr, type), 1));
  CallMethod(self, "__init__", {std::string("shm"), cluster, int64_t{5000}, std::string()});
  return self;
}

TEST(TorchClientClass, RegisteredConstructorHasTheDocumentedDefaults) {
  const c10::ClassTypePtr type = torch::getCustomClass("__torch__.torch.classes.easysync.Client");
  ASSERT_NE(type, nullptr);
  const auto& args = type->getMethod("__init__").getSchema().arguments();
  ASSERT_EQ(args.size(), 5u);  // self, mode, address, port, token
  EXPECT_EQ(args[3].name(), "port");
  EXPECT_EQ(args[3].default_value()->toInt(), 5000);
  EXPECT_EQ(args[4].name(), "token");
  EXPECT_EQ(args[4].default_value()->toStringRef(), "");
  for (const char* method :
       {"write_tensor", "read_tensor", "write_int", "read_int", "write_float", "read_float",
        "write_str", "read_str", "version", "wait_for_change", "stats", "close", "id"}) {
    EXPECT_NE(type->findMethod(method), nullptr) << method;
  }
}

TEST(TorchClientClass, TwoInstancesExchangeTensorsAndScalars) {
  const std::string cluster = testing::UniqueCluster("torch_class");
  const c10::IValue registered = MakeRegisteredClient(cluster);
  TorchClient direct("shm", cluster, 5000, "");
  EXPECT_NE(CallMethod(registered, "id", {}).toInt(), direct.Id());

  // Nothing written yet: None, and version 0.
  EXPECT_TRUE(CallMethod(registered, "read_tensor", {std::string("M"), std::string("w")}).isNone());
  EXPECT_EQ(CallMethod(registered, "version", {std::string("M"), std::string("w")}).toInt(), 0);

  const torch::Tensor w = Pattern(at::kBFloat16, {8, 9}, 5);
  const int64_t v1 = direct.WriteTensor("M", "w", w);
  EXPECT_EQ(v1, 1);
  const c10::IValue got =
      CallMethod(registered, "read_tensor", {std::string("M"), std::string("w")});
  ASSERT_TRUE(got.isTensor());
  EXPECT_TRUE(SameBytes(got.toTensor(), w));
  EXPECT_EQ(CallMethod(registered, "version", {std::string("M"), std::string("w")}).toInt(), v1);

  const torch::Tensor w2 = Pattern(at::kFloat8_e4m3fn, {3}, 6);
  const int64_t v2 =
      CallMethod(registered, "write_tensor", {std::string("M"), std::string("w"), w2}).toInt();
  EXPECT_EQ(v2, 2);
  ASSERT_TRUE(direct.ReadTensor("M", "w").has_value());
  EXPECT_TRUE(SameBytes(*direct.ReadTensor("M", "w"), w2));

  EXPECT_FALSE(direct.ReadInt("M", "step").has_value());
  CallMethod(registered, "write_int", {std::string("M"), std::string("step"), int64_t{1} << 40});
  EXPECT_EQ(direct.ReadInt("M", "step"), int64_t{1} << 40);
  direct.WriteFloat("M", "lr", 0.125);
  EXPECT_EQ(CallMethod(registered, "read_float", {std::string("M"), std::string("lr")}).toDouble(),
            0.125);
  direct.WriteStr("M", "name", "run-7");
  EXPECT_EQ(
      CallMethod(registered, "read_str", {std::string("M"), std::string("name")}).toStringRef(),
      "run-7");
}

TEST(TorchClientClass, InteroperatesWithSyncedProxies) {
  const std::string cluster = testing::UniqueCluster("torch_class_proxy");
  auto client = shm_connect(cluster);
  Model model(*client);
  SyncedObject config_object(*client, "Config");
  Synced<double> lr(&config_object, "lr");
  Synced<std::string> name(&config_object, "name");
  TorchClient c("shm", cluster, 5000, "");

  c.WriteInt("Model", "step", 42);
  EXPECT_EQ(model.step.get(), 42);
  c.WriteFloat("Config", "lr", 3e-4);
  EXPECT_EQ(lr.get(), 3e-4);
  c.WriteStr("Config", "name", "alpha");
  EXPECT_EQ(name.get(), "alpha");
  model.weights = torch::ones({2, 2}, torch::kHalf);
  ASSERT_TRUE(c.ReadTensor("Model", "weights").has_value());
  EXPECT_TRUE(torch::equal(*c.ReadTensor("Model", "weights"), torch::ones({2, 2}, torch::kHalf)));
}

TEST(TorchClientClass, WaitForChangeStatsKindsAndClose) {
  const std::string cluster = testing::UniqueCluster("torch_class_misc");
  TorchClient a("shm", cluster, 5000, "");
  TorchClient b("shm", cluster, 5000, "");
  // version/wait_for_change only know attributes this instance has used.
  EXPECT_THROW(b.Version("M", "step"), c10::Error);
  EXPECT_FALSE(b.ReadInt("M", "step").has_value());
  EXPECT_FALSE(b.WaitForChange("M", "step", 0.01));
  a.WriteInt("M", "step", 1);
  EXPECT_TRUE(b.WaitForChange("M", "step", 10));
  // Seen now: the next wait needs a newer version.
  EXPECT_FALSE(b.WaitForChange("M", "step", 0.01));
  a.WriteInt("M", "step", 2);
  EXPECT_TRUE(b.WaitForChange("M", "step", 10));
  EXPECT_EQ(b.ReadInt("M", "step"), 2);
  EXPECT_EQ(b.ReadInt("M", "step"), 2);

  // One attribute, one kind.
  EXPECT_THROW(b.ReadFloat("M", "step"), c10::Error);
  EXPECT_THROW(b.WriteTensor("M", "step", torch::zeros({1})), c10::Error);
  // Unsupported dtype: a clear error, nothing declared or written.
  try {
    a.WriteTensor("M", "c", torch::zeros({2}, torch::kComplexFloat));
    FAIL() << "a complex tensor was written";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("complex64"), std::string::npos) << e.what();
  }

  const c10::Dict<std::string, double> stats = b.StatsDict();
  for (const auto& [field, value] : Stats().AsMap()) {
    EXPECT_TRUE(stats.contains(field)) << field;
  }
  // b read one version (twice): one apply.
  EXPECT_EQ(stats.at("updates_applied"), 1.0);
  EXPECT_GE(a.StatsDict().at("updates_sent"), 2.0);

  b.Close();
  try {
    b.ReadInt("M", "step");
    FAIL() << "a closed client read";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("closed"), std::string::npos) << e.what();
  }
  EXPECT_THROW(b.Id(), c10::Error);
  b.Close();  // twice is harmless
  EXPECT_EQ(a.ReadInt("M", "step"), 2);
}

TEST(TorchClientClass, ConnectErrorsAreTorchErrors) {
  EXPECT_THROW(TorchClient("udp", "x", 5000, ""), c10::Error);
  EXPECT_THROW(TorchClient("shm", "bad name!", 5000, ""), c10::Error);
  EXPECT_THROW(TorchClient("net", "127.0.0.1", 70000, ""), c10::Error);
}

// ----- torch.ops.easysync -----

struct Ops {
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)> encode =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("easysync::delta_encode", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&)> decode =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("easysync::delta_decode", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  c10::TypedOperatorHandle<void(at::Tensor&, const at::Tensor&)> apply =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("easysync::delta_apply_", "")
          .typed<void(at::Tensor&, const at::Tensor&)>();
};

TEST(TorchOps, EncodeDecodeRoundTripsEveryDType) {
  Ops ops;
  for (at::ScalarType type : kTorchDTypes) {
    const torch::Tensor base = Pattern(type, {33, 17}, 1);
    const torch::Tensor value = Pattern(type, {33, 17}, 2);
    const torch::Tensor frame = ops.encode.call(base, value, 3);
    EXPECT_EQ(frame.scalar_type(), at::kByte);
    EXPECT_EQ(frame.dim(), 1);
    EXPECT_TRUE(SameBytes(ops.decode.call(base, frame), value)) << TorchDTypeName(type);
    torch::Tensor target = base.clone();
    ops.apply.call(target, frame);
    EXPECT_TRUE(SameBytes(target, value)) << TorchDTypeName(type);
  }
}

TEST(TorchOps, SparseChangeGivesASmallFrame) {
  Ops ops;
  const torch::Tensor base = torch::randn({1 << 20});  // 4 MiB
  torch::Tensor value = base.clone();
  for (int64_t i : {3, 1000, 77777, 500000, 1048000}) value[i] += 1.5;
  const torch::Tensor frame = ops.encode.call(base, value, 3);
  EXPECT_LT(frame.numel(), 1024) << "a 5-element change of a 4 MiB tensor";
  EXPECT_TRUE(torch::equal(ops.decode.call(base, frame), value));
  // Unchanged: the frame is little more than its header.
  EXPECT_LT(ops.encode.call(base, base, 3).numel(), 256);
}

TEST(TorchOps, NonContiguousInputsAndBases) {
  Ops ops;
  const torch::Tensor base = Pattern(at::kInt, {16, 8}, 1).t();
  torch::Tensor value = base.clone();
  value[2][3] = 12345;
  ASSERT_FALSE(base.is_contiguous());
  const torch::Tensor frame = ops.encode.call(base, value, 1);
  const torch::Tensor decoded = ops.decode.call(base, frame);
  EXPECT_TRUE(torch::equal(decoded, value));
  torch::Tensor target = base.clone();  // keeps the transposed strides
  ASSERT_FALSE(target.is_contiguous());
  ops.apply.call(target, frame);
  EXPECT_TRUE(torch::equal(target, value));
}

TEST(TorchOps, BadFramesRaiseAndLeaveTheBaseUnchanged) {
  Ops ops;
  const torch::Tensor base = torch::randn({4096});
  torch::Tensor value = base.clone();
  value.slice(0, 100, 200) += 1;
  const torch::Tensor frame = ops.encode.call(base, value, 3);
  ASSERT_EQ(frame[6].item<uint8_t>() & 1, 1) << "the chain byte says: not a delta";

  torch::Tensor corrupt = frame.clone();
  corrupt[frame.numel() - 1].bitwise_xor_(
      0x5a);  // payload byte: header checks pass, the hash does not
  torch::Tensor target = base.clone();
  EXPECT_THROW(ops.decode.call(base, corrupt), c10::Error);
  EXPECT_THROW(ops.apply.call(target, corrupt), c10::Error);
  EXPECT_TRUE(torch::equal(target, base));

  const torch::Tensor truncated = frame.narrow(0, 0, frame.numel() - 3);
  EXPECT_THROW(ops.apply.call(target, truncated), c10::Error);
  EXPECT_THROW(ops.apply.call(target, frame.narrow(0, 0, 10)), c10::Error);
  EXPECT_TRUE(torch::equal(target, base));

  torch::Tensor other_base = base + 1;
  const torch::Tensor other_before = other_base.clone();
  try {
    ops.apply.call(other_base, frame);
    FAIL() << "a delta applied to the wrong base";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("easysync::delta_apply_"), std::string::npos);
  }
  EXPECT_TRUE(torch::equal(other_base, other_before));

  corrupt = frame.clone();
  corrupt[3].bitwise_xor_(1);  // magic
  EXPECT_THROW(ops.decode.call(base, corrupt), c10::Error);
}

TEST(TorchOps, ArgumentErrorsSayWhatIsWrong) {
  Ops ops;
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const c10::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const torch::Tensor f32 = torch::zeros({4});
  EXPECT_NE(message([&] {
              ops.encode.call(f32, torch::zeros({4}, torch::kComplexFloat), 3);
            }).find("supported: float32, float16, bfloat16"),
            std::string::npos);
  EXPECT_NE(message([&] { ops.encode.call(f32, torch::zeros({5}), 3); }).find("same shape"),
            std::string::npos);
  EXPECT_NE(message([&] {
              ops.encode.call(f32, torch::zeros({4}, torch::kDouble), 3);
            }).find("same dtype"),
            std::string::npos);
  EXPECT_NE(message([&] { ops.encode.call(f32, f32, 1000); }).find("zstd level"),
            std::string::npos);
  const torch::Tensor frame = ops.encode.call(f32, f32 + 1, 3);
  EXPECT_NE(message([&] {
              ops.decode.call(torch::zeros({4}, torch::kInt), frame);
            }).find("the frame encodes a tensor of float32 but base is int32"),
            std::string::npos);
  EXPECT_NE(message([&] { ops.decode.call(torch::zeros({8}), frame); }).find("4 elements"),
            std::string::npos);
  EXPECT_NE(message([&] { ops.decode.call(f32, frame.to(torch::kInt)); }).find("1-D uint8"),
            std::string::npos);
}

TEST(TorchOps, EmptyTensors) {
  Ops ops;
  const torch::Tensor e = torch::empty({0, 3});
  const torch::Tensor frame = ops.encode.call(e, e, 3);
  EXPECT_EQ(ops.decode.call(e, frame).sizes(), e.sizes());
}

// The CUDA kernel's path (XOR diff and compaction where the tensor lives, frame built from
// the changed blocks) on the host twins of the kernels.
TEST(TorchOps, BackendPathOnTheHostTwins) {
  Ops ops;
  const auto backend = codec::MakeHostDeltaBackend();
  for (at::ScalarType type :
       {at::kFloat, at::kHalf, at::kBFloat16, at::kFloat8_e5m2, at::kBool, at::kLong}) {
    // 4001 elements: the last 64-byte block is a short one.
    const torch::Tensor base = Pattern(type, {4001}, 1);
    torch::Tensor sparse = base.clone();
    sparse.slice(0, 10, 12).copy_(Pattern(type, {2}, 5));
    sparse.slice(0, 3999, 4001).copy_(Pattern(type, {2}, 6));
    torch::Tensor blocky = base.clone();  // 40% of the blocks rewritten: too dense to be sparse
    blocky.slice(0, 0, 1600).copy_(Pattern(type, {1600}, 7));
    const DType dtype = *DTypeFromTorch(type);
    for (const torch::Tensor& value : {sparse, blocky, Pattern(type, {4001}, 8), base.clone()}) {
      const torch::Tensor frame = torch_ext::EncodeThroughBackend(*backend, dtype, base, value, 3);
      EXPECT_TRUE(SameBytes(ops.decode.call(base, frame), value)) << TorchDTypeName(type);
    }
    const torch::Tensor frame = torch_ext::EncodeThroughBackend(*backend, dtype, base, sparse, 3);
    EXPECT_EQ(frame[6].item<uint8_t>() & (codec::kChainXor | codec::kChainSparse),
              codec::kChainXor | codec::kChainSparse)
        << "a sparse update makes a sparse frame: " << TorchDTypeName(type);
    EXPECT_LT(frame.numel(), 200) << TorchDTypeName(type);
  }
  const torch::Tensor empty = torch::empty({0});
  EXPECT_EQ(
      ops.decode
          .call(empty, torch_ext::EncodeThroughBackend(*backend, DType::kFloat32, empty, empty, 3))
          .numel(),
      0);
}

// ----- CUDA (skipped on a machine without a GPU) -----

TEST(TorchOpsCuda, DeviceTensorsEncodeDecodeAndApply) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  Ops ops;
  for (at::ScalarType type : {at::kFloat, at::kBFloat16, at::kFloat8_e4m3fn, at::kBool}) {
    const torch::Tensor base = Pattern(type, {1 << 16}, 1);
    torch::Tensor value = base.clone();
    // A sparse change (the device path sends changed blocks) and a dense one.
    value.slice(0, 4000, 4010).copy_(Pattern(type, {10}, 9));
    for (const torch::Tensor& v : {value, Pattern(type, {1 << 16}, 2)}) {
      const torch::Tensor base_gpu = base.cuda(), v_gpu = v.cuda();
      const torch::Tensor frame = ops.encode.call(base_gpu, v_gpu, 3);
      EXPECT_TRUE(frame.is_cpu());
      // The same frame decodes on the host and on the device.
      EXPECT_TRUE(SameBytes(ops.decode.call(base, frame), v)) << TorchDTypeName(type);
      const torch::Tensor decoded = ops.decode.call(base_gpu, frame);
      EXPECT_TRUE(decoded.is_cuda());
      EXPECT_TRUE(SameBytes(decoded, v)) << TorchDTypeName(type);
      torch::Tensor target = base_gpu.clone();
      ops.apply.call(target, frame);
      EXPECT_TRUE(SameBytes(target, v)) << TorchDTypeName(type);
    }
    const torch::Tensor sparse = ops.encode.call(base.cuda(), value.cuda(), 3);
    EXPECT_LT(sparse.numel(), 1024) << TorchDTypeName(type);
  }
  // A corrupt frame leaves a device base unchanged.
  const torch::Tensor base = torch::randn({4096}, torch::kCUDA);
  torch::Tensor frame = ops.encode.call(base, base + 1, 3);
  frame[frame.numel() - 1].bitwise_xor_(0x5a);
  torch::Tensor target = base.clone();
  EXPECT_THROW(ops.apply.call(target, frame), c10::Error);
  EXPECT_TRUE(torch::equal(target, base));
}

TEST(TorchSyncedCuda, DeviceTensorsAreWrittenFromTheDevice) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const std::string cluster = testing::UniqueCluster("torch_cuda");
  auto a = shm_connect(cluster);
  auto b = shm_connect(cluster);
  Model writer(*a), reader(*b);
  const torch::Tensor w = torch::randn({64, 33}, torch::kCUDA).to(torch::kBFloat16);
  writer.weights = w;
  EXPECT_TRUE(SameBytes(reader.weights.get(), w.cpu()));
  TorchClient c("shm", cluster, 5000, "");
  const torch::Tensor w2 = torch::randn({7, 5}, torch::kCUDA).t();  // strided, on the device
  c.WriteTensor("Model", "weights", w2);
  EXPECT_TRUE(torch::equal(reader.weights.get(), w2.cpu()));
}

}  // namespace
}  // namespace easysync
