// The device delta pipeline (diff, compaction, host shadow, frames from changed blocks), run
// on the host twins of the kernels, and on a GPU where one exists.
#include "easysync/device_codec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#if EASYSYNC_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace easysync::codec {
namespace {

constexpr size_t kHeaderBytes = 64;  // a frame's header (docs/wire_format.md)

struct Step {
  double density;  // fraction of elements changed
  bool clustered;
};

// Changes `density` of the elements of t (esize bytes each) by flipping low bits.
void Mutate(std::vector<uint8_t>& t, size_t esize, double density, bool clustered,
            std::mt19937_64& rng) {
  const size_t count = t.size() / esize;
  const auto changes = static_cast<size_t>(density * static_cast<double>(count));
  size_t start = count == 0 ? 0 : rng() % count;
  for (size_t k = 0; k < changes; ++k) {
    const size_t i = clustered ? (start + k) % count : rng() % count;
    t[i * esize] ^= static_cast<uint8_t>(1 + rng() % 3);
  }
}

// Runs a sequence of updates through a DeviceEncoder whose `upload` puts the tensor into
// backend memory; a plain Decoder on the receiver side must always reproduce the tensor.
template <class Upload>
void RunSequence(DeviceEncoder& enc, DType dtype, size_t count, const std::vector<Step>& steps,
                 Upload upload) {
  const size_t esize = DTypeSize(dtype);
  std::mt19937_64 rng(count * 31 + esize);
  std::vector<uint8_t> cur(count * esize);
  for (auto& b : cur) b = static_cast<uint8_t>(rng());
  std::vector<uint8_t> receiver(cur.size());
  std::vector<uint8_t> frame(EncodeBound(dtype, count));
  Decoder dec;
  uint64_t version = 1;
  for (size_t s = 0; s <= steps.size(); ++s) {
    if (s > 0) Mutate(cur, esize, steps[s - 1].density, steps[s - 1].clustered, rng);
    const uint64_t before = enc.stats().bytes_to_host;
    const uint64_t blocks_before = enc.stats().block_frames;
    auto size = enc.Encode(dtype, count, upload(cur), version, frame);
    ASSERT_TRUE(size.ok()) << size.status().ToString();
    auto info = PeekFrame(std::span<const uint8_t>(frame.data(), *size));
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->new_version, version);
    if (s == 0) {
      EXPECT_TRUE(info->is_full_value());
    }
    Status st = dec.Decode(std::span<const uint8_t>(frame.data(), *size), receiver.data(),
                           receiver.size(), receiver);
    ASSERT_TRUE(st.ok()) << "step " << s << ": " << st.ToString();
    ASSERT_EQ(receiver, cur) << "step " << s;
    if (enc.stats().block_frames > blocks_before) {
      // Built from the changed blocks: at most half the tensor (plus ids) came back.
      EXPECT_LE(enc.stats().bytes_to_host - before, cur.size() / 2 + cur.size() / 16 + 8)
          << "step " << s;
    }
    ++version;
  }
}

const std::vector<Step> kSteps = {{0.0, false}, {0.0001, false}, {0.01, false},  {0.01, true},
                                  {0.2, false}, {1.0, false},    {0.0005, true}, {0.0, false}};

// The same as RunSequence, each update sent as frames of range_bytes (the last one shorter)
// that a receiver decodes range by range, each against its own range of what it holds.
// With `download` (reads n bytes of backend memory into host memory), the full values (the
// first update, and the one after a Reset before step 3) are staged in place instead: each
// range's frame is the header EncodeRangeInPlace writes and the payload read back from where
// it says the range is.
using Download = std::function<void(uint8_t* dst, const uint8_t* src, size_t n)>;

template <class Upload>
void RunRangeSequence(DeviceEncoder& enc, DType dtype, size_t count, size_t range_bytes,
                      const std::vector<Step>& steps, Upload upload, bool threads = false,
                      const Download& download = {}) {
  const size_t esize = DTypeSize(dtype);
  std::mt19937_64 rng(count * 17 + esize);
  std::vector<uint8_t> cur(count * esize);
  for (auto& b : cur) b = static_cast<uint8_t>(rng());
  std::vector<uint8_t> receiver(cur.size());
  std::vector<uint8_t> out(range_bytes);
  Decoder dec;
  for (size_t s = 0; s <= steps.size(); ++s) {
    if (s > 0) Mutate(cur, esize, steps[s - 1].density, steps[s - 1].clustered, rng);
    const uint64_t version = s + 1;
    const bool in_place = download && (s == 0 || s == 3);
    if (in_place) {
      if (s == 3) {
        EXPECT_FALSE(enc.NextIsFull(dtype, count));
        enc.Reset();
      }
      ASSERT_TRUE(enc.NextIsFull(dtype, count));
      const Status st = enc.StageInPlace(dtype, count, upload(cur), version);
      ASSERT_TRUE(st.ok()) << st.ToString();
    } else {
      auto staged = enc.Stage(dtype, count, upload(cur), version);
      ASSERT_TRUE(staged.ok()) << staged.status().ToString();
      if (s == 0) {
        EXPECT_EQ(*staged, DeviceEncoder::Staged::kFull);
      }
    }
    // Every range encoded first (with `threads`, all at once, each with an encoder of its
    // own), then decoded in order.
    const size_t ranges = (cur.size() + range_bytes - 1) / range_bytes;
    std::vector<std::vector<uint8_t>> frames(ranges);
    std::vector<Result<size_t>> sizes(ranges, size_t{0});
    std::vector<Encoder> encoders(ranges);
    std::vector<std::thread> workers;
    // Most ranges also copy their new bytes out (copy_to), the others leave it to RangeValue.
    const auto copies_out = [](size_t r) { return r % 3 != 1; };
    std::vector<uint8_t> copies(cur.size(), 0xa5);
    for (size_t r = 0; r < ranges; ++r) {
      const size_t off = r * range_bytes;
      const size_t bytes = std::min(range_bytes, cur.size() - off);
      // The base's hash of the range: known for every other range, worked out by the
      // encoder for the rest.
      std::optional<uint64_t> base_hash;
      if (r % 2 == 0) base_hash = HashBytes({receiver.data() + off, bytes});
      frames[r].resize(EncodeBound(dtype, bytes / esize));
      const auto encode = [&, r, off, bytes, base_hash] {
        if (!in_place) {
          sizes[r] = enc.EncodeRange(encoders[r], off, bytes, base_hash, frames[r],
                                     copies_out(r) ? copies.data() + off : nullptr);
          return;
        }
        frames[r].resize(kHeaderBytes + bytes);
        auto payload = enc.EncodeRangeInPlace(off, bytes, {frames[r].data(), kHeaderBytes});
        if (!payload.ok()) {
          sizes[r] = payload.status();
          return;
        }
        download(frames[r].data() + kHeaderBytes, *payload, bytes);
        sizes[r] = kHeaderBytes + bytes;
      };
      if (threads) {
        workers.emplace_back(encode);
      } else {
        encode();
      }
    }
    for (std::thread& w : workers) w.join();
    for (size_t r = 0; r < ranges; ++r) {
      const size_t off = r * range_bytes;
      const size_t bytes = std::min(range_bytes, cur.size() - off);
      ASSERT_TRUE(sizes[r].ok()) << "step " << s << ": " << sizes[r].status().ToString();
      const std::span<const uint8_t> f(frames[r].data(), *sizes[r]);
      auto info = PeekFrame(f);
      ASSERT_TRUE(info.ok());
      EXPECT_EQ(info->element_count, bytes / esize);
      EXPECT_EQ(info->new_version, version);
      if (s == 0) {
        EXPECT_TRUE(info->is_full_value());
      }
      if (in_place) {
        EXPECT_EQ(info->chain, 0) << "an in-place frame is raw";
      }
      Status st = dec.Decode(f, receiver.data() + off, bytes, {out.data(), bytes});
      ASSERT_TRUE(st.ok()) << "step " << s << " range at " << off << ": " << st.ToString();
      ASSERT_TRUE(std::equal(out.begin(), out.begin() + bytes, cur.begin() + off))
          << "step " << s << " range at " << off;
      std::copy(out.begin(), out.begin() + bytes, receiver.begin() + off);
      if (in_place) continue;  // no host copy until Commit
      const std::span<const uint8_t> value = enc.RangeValue(off, bytes);
      ASSERT_TRUE(std::equal(value.begin(), value.end(), cur.begin() + off))
          << "step " << s << " range at " << off;
      if (copies_out(r)) {
        ASSERT_TRUE(std::equal(cur.begin() + off, cur.begin() + off + bytes, copies.begin() + off))
            << "step " << s << ": copy_to of the range at " << off;
      }
    }
    ASSERT_TRUE(enc.Commit(upload(cur)).ok());
    ASSERT_EQ(receiver, cur) << "step " << s;
    ASSERT_TRUE(std::equal(cur.begin(), cur.end(), enc.shadow().begin()));
    EXPECT_EQ(enc.shadow_hash(), HashBytes(cur));
  }
}

// Sparse steps, a dense one, and changed blocks that are dense inside (no sparse frame).
const std::vector<Step> kRangeSteps = {{0.0, false},  {0.015, false}, {1.0, false},
                                       {0.001, true}, {0.4, true},    {0.015, false}};

TEST(DeviceEncoderHost, EveryDensityDecodesBitExact) {
  for (DType d : {DType::kBFloat16, DType::kFloat32, DType::kUInt8, DType::kFloat64}) {
    for (size_t count : {size_t{0}, size_t{1}, size_t{4097}, size_t{300001}}) {
      DeviceEncoder enc(MakeHostDeltaBackend());
      RunSequence(enc, d, count, kSteps, [](const std::vector<uint8_t>& t) { return t.data(); });
      if (count > 100000) {
        EXPECT_EQ(enc.stats().full_frames, 1u) << DTypeName(d);
        EXPECT_GE(enc.stats().block_frames, 4u) << DTypeName(d);
        EXPECT_GE(enc.stats().dense_frames, 1u) << DTypeName(d);
      }
    }
  }
}

TEST(DeviceEncoderHost, AnUpdateSentInRangesDecodesRangeByRange) {
  for (DType d : {DType::kBFloat16, DType::kFloat32}) {
    DeviceEncoder enc(MakeHostDeltaBackend());
    // 3.5 ranges of 64 KiB: the last range is shorter, and ends inside a block.
    const size_t count = (size_t{7} << 15) / DTypeSize(d) + 3;
    RunRangeSequence(enc, d, count, size_t{64} << 10, kRangeSteps,
                     [](const std::vector<uint8_t>& t) { return t.data(); });
    EXPECT_EQ(enc.stats().full_frames, 1u);
    EXPECT_GE(enc.stats().block_frames, 4u);
    // The ranges of each update from several threads at once.
    DeviceEncoder parallel(MakeHostDeltaBackend());
    RunRangeSequence(
        parallel, d, count, size_t{64} << 10, kRangeSteps,
        [](const std::vector<uint8_t>& t) { return t.data(); }, /*threads=*/true);
    EXPECT_EQ(enc.stats().dense_frames, 1u);
  }
}

TEST(DeviceEncoderHost, AFullValueStagedInPlaceGoesAsRawFramesOfItsRanges) {
  const Download copy = [](uint8_t* dst, const uint8_t* src, size_t n) {
    std::memcpy(dst, src, n);
  };
  const auto host = [](const std::vector<uint8_t>& t) { return t.data(); };
  for (DType d : {DType::kBFloat16, DType::kFloat32}) {
    // A last range shorter than XXH3's long inputs (100 bytes), and one that is not (3.5 ranges).
    for (size_t bytes : {(size_t{3} << 16) + 100, size_t{7} << 15}) {
      SCOPED_TRACE(::testing::Message() << DTypeName(d) << " " << bytes << " bytes");
      DeviceEncoder enc(MakeHostDeltaBackend());
      RunRangeSequence(enc, d, bytes / DTypeSize(d), size_t{64} << 10, kRangeSteps, host,
                       /*threads=*/false, copy);
      EXPECT_EQ(enc.stats().full_frames, 2u);
      EXPECT_GE(enc.stats().block_frames, 3u);
      DeviceEncoder parallel(MakeHostDeltaBackend());
      RunRangeSequence(parallel, d, bytes / DTypeSize(d), size_t{64} << 10, kRangeSteps, host,
                       /*threads=*/true, copy);
    }
  }
}

TEST(DeviceEncoderHost, InPlaceRangesMustBeStagedAlignedAndWhole) {
  DeviceEncoder enc(MakeHostDeltaBackend());
  std::vector<uint8_t> t(8192, 7), frame(EncodeBound(DType::kUInt8, 8192));
  uint8_t header[kHeaderBytes];
  EXPECT_EQ(enc.EncodeRangeInPlace(0, 8192, header).status().code(),
            StatusCode::kInvalidArgument);  // nothing staged
  ASSERT_TRUE(enc.Stage(DType::kUInt8, 8192, t.data(), 1).ok());
  EXPECT_EQ(enc.EncodeRangeInPlace(0, 8192, header).status().code(),
            StatusCode::kInvalidArgument);  // staged for the host
  ASSERT_TRUE(enc.StageInPlace(DType::kUInt8, 8192, t.data(), 2).ok());
  EXPECT_EQ(enc.EncodeRange(0, 8192, std::nullopt, frame).status().code(),
            StatusCode::kInvalidArgument);  // staged in place
  EXPECT_EQ(enc.EncodeRangeInPlace(512, 1024, header).status().code(),
            StatusCode::kInvalidArgument);  // not at a KiB
  EXPECT_EQ(enc.EncodeRangeInPlace(4096, 8192, header).status().code(),
            StatusCode::kInvalidArgument);  // past the end
  EXPECT_EQ(enc.EncodeRangeInPlace(0, 1024, {header, 10}).status().code(),
            StatusCode::kInvalidArgument);  // no room for the header
  auto first = enc.EncodeRangeInPlace(0, 4096, header);
  ASSERT_TRUE(first.ok());
  EXPECT_NE(*first, t.data()) << "the payload must be the encoder's copy, not the caller's";
  EXPECT_EQ(enc.EncodeRangeInPlace(2048, 1024, header).status().code(),
            StatusCode::kInvalidArgument);  // overlaps
  // Half went: no base, and the next update is whole.
  EXPECT_EQ(enc.Commit(t.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(enc.NextIsFull(DType::kUInt8, 8192));
}

TEST(DeviceEncoderHost, RangesMustBeStagedAlignedAndApart) {
  DeviceEncoder enc(MakeHostDeltaBackend());
  std::vector<uint8_t> t(4096, 7), frame(EncodeBound(DType::kUInt8, 4096));
  EXPECT_EQ(enc.EncodeRange(0, 4096, std::nullopt, frame).status().code(),
            StatusCode::kInvalidArgument);  // nothing staged
  EXPECT_EQ(enc.Commit(t.data()).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(enc.Stage(DType::kUInt8, 4096, t.data(), 1).ok());
  EXPECT_EQ(enc.EncodeRange(32, 64, std::nullopt, frame).status().code(),
            StatusCode::kInvalidArgument);  // not at a block's start
  EXPECT_EQ(enc.EncodeRange(0, 100, std::nullopt, frame).status().code(),
            StatusCode::kInvalidArgument);  // ends inside a block
  EXPECT_EQ(enc.EncodeRange(4032, 128, std::nullopt, frame).status().code(),
            StatusCode::kInvalidArgument);  // past the end
  ASSERT_TRUE(enc.EncodeRange(1024, 1024, std::nullopt, frame).ok());
  EXPECT_EQ(enc.EncodeRange(1536, 1024, std::nullopt, frame).status().code(),
            StatusCode::kInvalidArgument);                          // overlaps
  ASSERT_TRUE(enc.EncodeRange(0, 1024, std::nullopt, frame).ok());  // before it: fine
  std::vector<uint8_t> small(10);
  EXPECT_EQ(enc.EncodeRange(2048, 1024, std::nullopt, small).status().code(),
            StatusCode::kInvalidArgument);
  // Half the tensor went: it cannot become the base, and the next update is whole.
  EXPECT_EQ(enc.Commit(t.data()).code(), StatusCode::kInvalidArgument);
  auto staged = enc.Stage(DType::kUInt8, 4096, t.data(), 2);
  ASSERT_TRUE(staged.ok());
  EXPECT_EQ(*staged, DeviceEncoder::Staged::kFull);
}

TEST(DeviceEncoderHost, SparseStepCopiesOnlyChangedBlocks) {
  const size_t count = 1 << 20;  // 2 MiB of bf16
  DeviceEncoder enc(MakeHostDeltaBackend(), {}, 4096);
  std::vector<uint8_t> t(count * 2, 0);
  std::vector<uint8_t> frame(EncodeBound(DType::kBFloat16, count));
  ASSERT_TRUE(enc.Encode(DType::kBFloat16, count, t.data(), 1, frame).ok());
  const uint64_t after_full = enc.stats().bytes_to_host;
  EXPECT_EQ(after_full, t.size());
  t[10] ^= 1;            // block 0
  t[t.size() - 1] ^= 1;  // the last block
  auto size = enc.Encode(DType::kBFloat16, count, t.data(), 2, frame);
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(enc.stats().bytes_to_host - after_full, 4 + 2 * 4 + 2 * 4096u);
  EXPECT_LT(*size, 200u);
}

TEST(DeviceEncoderHost, ResetAndShapeChangeSendFullValues) {
  DeviceEncoder enc(MakeHostDeltaBackend());
  std::vector<uint8_t> t(4096, 7);
  std::vector<uint8_t> frame(EncodeBound(DType::kUInt8, 8192));
  ASSERT_TRUE(enc.Encode(DType::kUInt8, 4096, t.data(), 1, frame).ok());
  t[5] = 1;
  ASSERT_TRUE(enc.Encode(DType::kUInt8, 4096, t.data(), 2, frame).ok());
  EXPECT_FALSE(PeekFrame(frame)->is_full_value());
  enc.Reset();
  ASSERT_TRUE(enc.Encode(DType::kUInt8, 4096, t.data(), 3, frame).ok());
  EXPECT_TRUE(PeekFrame(frame)->is_full_value());
  std::vector<uint8_t> bigger(8192, 1);
  ASSERT_TRUE(enc.Encode(DType::kUInt8, 8192, bigger.data(), 4, frame).ok());
  EXPECT_TRUE(PeekFrame(frame)->is_full_value());
  EXPECT_EQ(enc.stats().full_frames, 2u + 1u);
}

TEST(DeviceEncoderHost, RejectsBadArguments) {
  DeviceEncoder bad_blocks(MakeHostDeltaBackend(), {}, 12);
  std::vector<uint8_t> t(64), frame(EncodeBound(DType::kUInt8, 64));
  EXPECT_EQ(bad_blocks.Encode(DType::kUInt8, 64, t.data(), 1, frame).status().code(),
            StatusCode::kInvalidArgument);
  DeviceEncoder enc(MakeHostDeltaBackend());
  std::vector<uint8_t> small(10);
  EXPECT_EQ(enc.Encode(DType::kUInt8, 64, t.data(), 1, small).status().code(),
            StatusCode::kInvalidArgument);
}

// The host backend, except that host memory runs out while `fail_host` is set.
// The host backend with host memory that can run out; it keeps DeltaBackend's default
// Xxh3BlockSums (bytes to the host, host twin).
class HostMemoryRunsOut final : public DeltaBackend {
 public:
  bool fail_host = false;
  const char* name() const override { return "host, host memory runs out"; }
  Result<uint8_t*> Allocate(size_t bytes) override { return host_->Allocate(bytes); }
  void Free(uint8_t* p) override { host_->Free(p); }
  Status XorDiff(const uint8_t* cur, const uint8_t* base, size_t n, size_t block_bytes,
                 uint8_t* xor_out, uint8_t* changed) override {
    return host_->XorDiff(cur, base, n, block_bytes, xor_out, changed);
  }
  Result<size_t> CompactTempBytes(size_t n, size_t block_bytes) override {
    return host_->CompactTempBytes(n, block_bytes);
  }
  Status Compact(const uint8_t* xor_bytes, size_t n, size_t block_bytes, const uint8_t* changed,
                 uint32_t* ids, uint8_t* out, uint32_t* count, uint8_t* temp,
                 size_t temp_bytes) override {
    return host_->Compact(xor_bytes, n, block_bytes, changed, ids, out, count, temp, temp_bytes);
  }
  Status ToHost(void* dst, const void* src, size_t bytes) override {
    return host_->ToHost(dst, src, bytes);
  }
  Status Copy(uint8_t* dst, const uint8_t* src, size_t bytes) override {
    return host_->Copy(dst, src, bytes);
  }
  Result<uint8_t*> AllocateHost(size_t bytes) override {
    if (fail_host) return Status::ResourceExhausted("no host memory (test)");
    return host_->AllocateHost(bytes);
  }
  void FreeHost(uint8_t* p) override { host_->FreeHost(p); }

 private:
  std::unique_ptr<DeltaBackend> host_ = MakeHostDeltaBackend();
};

TEST(DeviceEncoderHost, InPlaceRangesHashWithTheDefaultBlockSumsToo) {
  // A backend without block sums of its own: DeltaBackend's default gives the same frames.
  const Download copy = [](uint8_t* dst, const uint8_t* src, size_t n) {
    std::memcpy(dst, src, n);
  };
  DeviceEncoder enc(std::make_unique<HostMemoryRunsOut>());
  RunRangeSequence(
      enc, DType::kBFloat16, ((size_t{5} << 20) + 100) / 2, size_t{2} << 20, kRangeSteps,
      [](const std::vector<uint8_t>& t) { return t.data(); }, /*threads=*/false, copy);
  EXPECT_EQ(enc.stats().full_frames, 2u);
}

TEST(DeviceEncoderHost, AFailedAllocationFailsTheWriteAndTheNextOneStartsOver) {
  auto backend = std::make_unique<HostMemoryRunsOut>();
  HostMemoryRunsOut& b = *backend;
  DeviceEncoder enc(std::move(backend));
  std::vector<uint8_t> t(4096, 7);
  std::vector<uint8_t> frame(EncodeBound(DType::kUInt8, 4096));
  b.fail_host = true;
  EXPECT_EQ(enc.Encode(DType::kUInt8, 4096, t.data(), 1, frame).status().code(),
            StatusCode::kResourceExhausted);
  // The device buffers were allocated before the host ones failed; the next write must not
  // take that half-prepared state for a ready one.
  b.fail_host = false;
  auto size = enc.Encode(DType::kUInt8, 4096, t.data(), 1, frame);
  ASSERT_TRUE(size.ok()) << size.status().ToString();
  std::vector<uint8_t> out(4096);
  ASSERT_TRUE(
      Decoder()
          .Decode(std::span<const uint8_t>(frame.data(), *size), out.data(), out.size(), out)
          .ok());
  EXPECT_EQ(out, t);
}

TEST(EncodeXorBlocks, RejectsIdsOutOfOrderOrRange) {
  Encoder enc;
  std::vector<uint8_t> bytes(2 * 64, 1), out(EncodeBound(DType::kUInt8, 256));
  uint32_t ids[2] = {2, 1};
  XorBlocks blocks{DType::kUInt8, 256, 64, ids, 2, bytes.data()};
  EXPECT_EQ(enc.EncodeXorBlocks(blocks, 1, 0, 2, 0, out).status().code(),
            StatusCode::kInvalidArgument);
  ids[0] = 1;
  ids[1] = 4;  // past the 4 blocks of 256 bytes
  EXPECT_EQ(enc.EncodeXorBlocks(blocks, 1, 0, 2, 0, out).status().code(),
            StatusCode::kInvalidArgument);
}

// The XOR blocks of cur against base, as the compaction kernels give them.
void BlocksOf(const std::vector<uint8_t>& cur, const std::vector<uint8_t>& base, size_t b,
              std::vector<uint32_t>* ids, std::vector<uint8_t>* bytes) {
  ids->clear();
  bytes->clear();
  for (size_t at = 0; at < cur.size(); at += b) {
    const size_t len = std::min(b, cur.size() - at);
    if (std::equal(cur.begin() + at, cur.begin() + at + len, base.begin() + at)) continue;
    ids->push_back(static_cast<uint32_t>(at / b));
    for (size_t k = 0; k < b; ++k) bytes->push_back(k < len ? cur[at + k] ^ base[at + k] : 0);
  }
}

// The frame names cur's hash as its result and decodes against base to cur.
void ExpectTakesBaseTo(std::span<const uint8_t> frame, const std::vector<uint8_t>& base,
                       const std::vector<uint8_t>& cur) {
  auto info = PeekFrame(frame);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->result_hash, HashBytes(cur));
  std::vector<uint8_t> out(cur.size());
  ASSERT_TRUE(Decoder().Decode(frame, base.data(), base.size(), out).ok());
  EXPECT_EQ(out, cur);
}

TEST(EncodeXorBlocks, WithTheBaseAppliesTheBlocksAndSendsSmallStepsAsDifferences) {
  const size_t count = 100003;  // bfloat16; the last block is short
  std::mt19937_64 rng(7);
  std::vector<uint8_t> base(count * 2);
  for (auto& v : base) v = static_cast<uint8_t>(rng());
  std::vector<uint8_t> cur = base;
  auto* w = reinterpret_cast<uint16_t*>(cur.data());
  for (size_t k = 0; k < count / 100; ++k) w[rng() % count] += 1;  // one unit in the last place
  w[count - 1] -= 1;
  std::vector<uint32_t> ids;
  std::vector<uint8_t> bytes;
  BlocksOf(cur, base, 64, &ids, &bytes);
  const XorBlocks blocks{DType::kBFloat16, count, 64, ids.data(), ids.size(), bytes.data()};
  Encoder enc;
  std::vector<uint8_t> xor_frame(EncodeBound(DType::kBFloat16, count));
  auto plain = enc.EncodeXorBlocks(blocks, 1, HashBytes(base), 2, HashBytes(cur), xor_frame);
  ASSERT_TRUE(plain.ok() && *plain > 0);
  std::vector<uint8_t> shadow = base, frame(EncodeBound(DType::kBFloat16, count));
  auto size = enc.ApplyAndEncodeXorBlocks(blocks, shadow, 1, HashBytes(base), 2, frame);
  ASSERT_TRUE(size.ok() && *size > 0) << size.status().ToString();
  EXPECT_EQ(shadow, cur);    // the base took the blocks
  EXPECT_LT(*size, *plain);  // +-1 steps: differences beat XOR bits
  ExpectTakesBaseTo({frame.data(), *size}, base, cur);

  // Too dense for a sparse frame: 0, and the base holds the result all the same.
  for (auto& v : cur) v = static_cast<uint8_t>(rng());
  BlocksOf(cur, shadow, 64, &ids, &bytes);
  const XorBlocks dense{DType::kBFloat16, count, 64, ids.data(), ids.size(), bytes.data()};
  auto none = enc.ApplyAndEncodeXorBlocks(dense, shadow, 2, HashBytes(shadow), 3, frame);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, 0u);
  EXPECT_EQ(shadow, cur);
  // A base of another size is refused before anything is written.
  std::vector<uint8_t> small(10);
  EXPECT_EQ(enc.ApplyAndEncodeXorBlocks(blocks, small, 1, 0, 2, frame).status().code(),
            StatusCode::kInvalidArgument);
}

// copy_to gets the result in the pass that hashes it, over many of the scan's chunks (blocks
// of 192 bytes do not divide them evenly; the last block is short), sparse or not.
TEST(EncodeXorBlocks, CopyToGetsTheResultAcrossChunks) {
  const size_t count = 1300003;  // bfloat16: ~2.6 MB
  std::mt19937_64 rng(11);
  std::vector<uint8_t> base(count * 2);
  for (auto& v : base) v = static_cast<uint8_t>(rng());
  std::vector<uint8_t> cur = base;
  auto* w = reinterpret_cast<uint16_t*>(cur.data());
  for (size_t k = 0; k < count / 200; ++k) w[rng() % count] += 1;
  w[0] += 1;
  w[count - 1] -= 1;
  std::vector<uint32_t> ids;
  std::vector<uint8_t> bytes;
  BlocksOf(cur, base, 192, &ids, &bytes);
  const XorBlocks blocks{DType::kBFloat16, count, 192, ids.data(), ids.size(), bytes.data()};
  Encoder enc;
  std::vector<uint8_t> shadow = base, copy(cur.size(), 0x5a);
  std::vector<uint8_t> frame(EncodeBound(DType::kBFloat16, count));
  auto size =
      enc.ApplyAndEncodeXorBlocks(blocks, shadow, 1, HashBytes(base), 2, frame, copy.data());
  ASSERT_TRUE(size.ok() && *size > 0) << size.status().ToString();
  EXPECT_EQ(shadow, cur);
  EXPECT_EQ(copy, cur);
  ExpectTakesBaseTo({frame.data(), *size}, base, cur);  // hashed chunk by chunk

  // Too dense for a sparse frame: copy_to gets the result all the same.
  for (auto& v : cur) v = static_cast<uint8_t>(rng());
  BlocksOf(cur, shadow, 192, &ids, &bytes);
  const XorBlocks dense{DType::kBFloat16, count, 192, ids.data(), ids.size(), bytes.data()};
  std::fill(copy.begin(), copy.end(), 0x5a);
  auto none =
      enc.ApplyAndEncodeXorBlocks(dense, shadow, 2, HashBytes(shadow), 3, frame, copy.data());
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, 0u);
  EXPECT_EQ(shadow, cur);
  EXPECT_EQ(copy, cur);

  // A copy_to that overlaps the base or the output is refused before anything is written.
  const std::vector<uint8_t> before = shadow;
  EXPECT_EQ(
      enc.ApplyAndEncodeXorBlocks(dense, shadow, 3, HashBytes(shadow), 4, frame, shadow.data() + 2)
          .status()
          .code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(enc.ApplyAndEncodeXorBlocks(dense, shadow, 3, HashBytes(shadow), 4, frame, frame.data())
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(shadow, before);
}

TEST(DeviceEncoderCuda, MatchesTheHostPipeline) {
  auto backend = MakeCudaDeltaBackend(nullptr);
  if (!backend.ok()) GTEST_SKIP() << backend.status().ToString();
#if EASYSYNC_HAVE_CUDA
  DeviceEncoder enc(std::move(backend).value());
  uint8_t* dev = nullptr;
  size_t dev_bytes = 0;
  auto upload = [&](const std::vector<uint8_t>& t) {
    if (dev_bytes < t.size()) {
      cudaFree(dev);
      cudaMalloc(reinterpret_cast<void**>(&dev), t.size());
      dev_bytes = t.size();
    }
    cudaMemcpy(dev, t.data(), t.size(), cudaMemcpyHostToDevice);
    return static_cast<const uint8_t*>(dev);
  };
  RunSequence(enc, DType::kBFloat16, 1 << 20, kSteps, upload);
  EXPECT_GE(enc.stats().block_frames, 4u);
  DeviceEncoder ranges(std::move(MakeCudaDeltaBackend(nullptr)).value());
  RunRangeSequence(ranges, DType::kBFloat16, (size_t{7} << 15) / 2 + 3, size_t{64} << 10,
                   kRangeSteps, upload, /*threads=*/true);
  EXPECT_GE(ranges.stats().block_frames, 4u);
  // Full values staged in place: hashed on the device, payloads read from device memory.
  DeviceEncoder in_place(std::move(MakeCudaDeltaBackend(nullptr)).value());
  EXPECT_TRUE(in_place.device_memory());
  const Download download = [](uint8_t* dst, const uint8_t* src, size_t n) {
    ASSERT_EQ(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost), cudaSuccess);
  };
  RunRangeSequence(in_place, DType::kBFloat16, ((size_t{3} << 16) + 100) / 2, size_t{64} << 10,
                   kRangeSteps, upload, /*threads=*/true, download);
  EXPECT_EQ(in_place.stats().full_frames, 2u);
  cudaFree(dev);
#endif
}

}  // namespace
}  // namespace easysync::codec
