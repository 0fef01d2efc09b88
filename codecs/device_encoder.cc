#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "codecs/buffers.h"
#include "codecs/frame.h"
#include "codecs/frame_format.h"
#include "compact.h"
#include "easysync/device_codec.h"
#include "xor_diff.h"
#include "xxh3_blocks.h"

namespace easysync::codec {

static_assert(kFrameHeaderBytes == format::kHeaderSize);

namespace {

// The host twins of the cuda/ kernels, on host memory.
class HostDeltaBackend final : public DeltaBackend {
 public:
  const char* name() const override { return "host"; }
  Result<uint8_t*> Allocate(size_t bytes) override {
    auto* p = static_cast<uint8_t*>(std::malloc(std::max<size_t>(bytes, 1)));
    if (p == nullptr) return Status::ResourceExhausted("host backend: out of memory");
    return p;
  }
  void Free(uint8_t* p) override { std::free(p); }
  Status XorDiff(const uint8_t* cur, const uint8_t* base, size_t n, size_t block_bytes,
                 uint8_t* xor_out, uint8_t* changed) override {
    cuda::XorDiffHost(cur, base, n, block_bytes, xor_out, changed);
    return Status::Ok();
  }
  Result<size_t> CompactTempBytes(size_t, size_t) override { return size_t{0}; }
  Status Compact(const uint8_t* xor_bytes, size_t n, size_t block_bytes, const uint8_t* changed,
                 uint32_t* ids, uint8_t* out, uint32_t* count, uint8_t*, size_t) override {
    *count = static_cast<uint32_t>(
        cuda::CompactChangedBlocksHost(xor_bytes, n, block_bytes, changed, ids, out));
    return Status::Ok();
  }
  Status Xxh3BlockSums(const uint8_t* data, size_t blocks, const uint64_t* secret,
                       uint64_t* host_sums) override {
    cuda::Xxh3BlockSumsHost(data, blocks, secret, host_sums);
    return Status::Ok();
  }
  Status ToHost(void* dst, const void* src, size_t bytes) override {
    if (bytes != 0) std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status Copy(uint8_t* dst, const uint8_t* src, size_t bytes) override {
    if (bytes != 0) std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
};

}  // namespace

Result<uint8_t*> DeltaBackend::AllocateHost(size_t bytes) {
  auto* p = static_cast<uint8_t*>(std::malloc(std::max<size_t>(bytes, 1)));
  if (p == nullptr) return Status::ResourceExhausted("out of host memory");
  return p;
}

void DeltaBackend::FreeHost(uint8_t* p) { std::free(p); }

Status DeltaBackend::Xxh3BlockSums(const uint8_t* data, size_t blocks, const uint64_t* secret,
                                   uint64_t* host_sums) {
  constexpr size_t kChunk = 1024;  // blocks: a MiB
  std::vector<uint8_t> bytes(std::min(blocks, kChunk) * cuda::kXxh3BlockBytes);
  for (size_t k = 0; k < blocks; k += kChunk) {
    const size_t n = std::min(kChunk, blocks - k);
    EASYSYNC_RETURN_IF_ERROR(
        ToHost(bytes.data(), data + k * cuda::kXxh3BlockBytes, n * cuda::kXxh3BlockBytes));
    cuda::Xxh3BlockSumsHost(bytes.data(), n, secret, host_sums + k * cuda::kXxh3Lanes);
  }
  return Status::Ok();
}

std::unique_ptr<DeltaBackend> MakeHostDeltaBackend() {
  return std::make_unique<HostDeltaBackend>();
}

DeviceEncoder::DeviceEncoder(std::unique_ptr<DeltaBackend> backend, EncoderOptions options,
                             size_t block_bytes)
    : backend_(std::move(backend)), encoder_(options), block_bytes_(block_bytes) {}

DeviceEncoder::~DeviceEncoder() { FreeAll(); }

void DeviceEncoder::FreeAll() {
  for (uint8_t** p : {&base_, &xor_, &changed_, &ids_, &compacted_, &count_dev_, &temp_}) {
    if (*p != nullptr) backend_->Free(*p);
    *p = nullptr;
  }
  for (uint8_t** p : {&shadow_, &staging_, &sums_host_}) {
    if (*p != nullptr) backend_->FreeHost(*p);
    *p = nullptr;
  }
}

Status DeviceEncoder::Prepare(DType dtype, size_t element_count) {
  const size_t esize = DTypeSize(dtype);
  if (esize == 0) return Status::InvalidArgument("DeviceEncoder: invalid dtype");
  if (block_bytes_ == 0 || block_bytes_ % 8 != 0) {
    return Status::InvalidArgument("DeviceEncoder: block_bytes must be a positive multiple of 8");
  }
  const size_t bound = EncodeBound(dtype, element_count);
  if (bound == 0) return Status::InvalidArgument("DeviceEncoder: tensor size overflows");
  const size_t n = element_count * esize;
  if (cuda::NumBlocks(n, block_bytes_) > cuda::kMaxBlocks) {
    return Status::InvalidArgument("DeviceEncoder: too many blocks; use larger block_bytes");
  }
  // staging_ is allocated last: set only when every allocation below succeeded.
  if (staging_ != nullptr && dtype == dtype_ && element_count == count_) return Status::Ok();
  FreeAll();
  base_version_ = 0;
  dtype_ = dtype;
  count_ = element_count;
  n_ = n;
  const size_t blocks = cuda::NumBlocks(n, block_bytes_);
  EASYSYNC_ASSIGN_OR_RETURN(base_, backend_->Allocate(n));
  EASYSYNC_ASSIGN_OR_RETURN(xor_, backend_->Allocate(n));
  EASYSYNC_ASSIGN_OR_RETURN(changed_, backend_->Allocate(blocks));
  EASYSYNC_ASSIGN_OR_RETURN(ids_, backend_->Allocate(blocks * sizeof(uint32_t)));
  EASYSYNC_ASSIGN_OR_RETURN(compacted_, backend_->Allocate(n));
  EASYSYNC_ASSIGN_OR_RETURN(count_dev_, backend_->Allocate(sizeof(uint32_t)));
  EASYSYNC_ASSIGN_OR_RETURN(temp_bytes_, backend_->CompactTempBytes(n, block_bytes_));
  EASYSYNC_ASSIGN_OR_RETURN(temp_, backend_->Allocate(temp_bytes_));
  EASYSYNC_ASSIGN_OR_RETURN(shadow_, backend_->AllocateHost(n));
  EASYSYNC_ASSIGN_OR_RETURN(staging_, backend_->AllocateHost(n));
  ids_host_.resize(blocks);
  return Status::Ok();
}

Result<size_t> DeviceEncoder::Encode(DType dtype, size_t element_count, const uint8_t* cur,
                                     uint64_t new_version, std::span<uint8_t> out) {
  EASYSYNC_RETURN_IF_ERROR(Stage(dtype, element_count, cur, new_version).status());
  Result<size_t> size = EncodeRange(0, n_, shadow_hash_, out);
  if (!size.ok()) {
    Reset();
    return size.status();
  }
  EASYSYNC_RETURN_IF_ERROR(Commit(cur));
  return size;
}

Status DeviceEncoder::BeginStage(DType dtype, size_t element_count, const uint8_t* cur,
                                 uint64_t new_version) {
  staged_ = false;
  in_place_ = false;
  EASYSYNC_RETURN_IF_ERROR(Prepare(dtype, element_count));
  if (n_ != 0 && cur == nullptr) return Status::InvalidArgument("DeviceEncoder: null tensor");
  new_version_ = new_version;
  encoded_.clear();
  whole_hash_.reset();
  staged_count_ = 0;
  return Status::Ok();
}

Status DeviceEncoder::StageInPlace(DType dtype, size_t element_count, const uint8_t* cur,
                                   uint64_t new_version) {
  EASYSYNC_RETURN_IF_ERROR(BeginStage(dtype, element_count, cur, new_version));
  // The receiver's base is about to be replaced whatever happens next.
  base_version_ = 0;
  const size_t blocks = n_ / cuda::kXxh3BlockBytes;
  const size_t sums_bytes = std::max<size_t>(blocks, 1) * cuda::kXxh3Lanes * sizeof(uint64_t);
  if (sums_host_ == nullptr) {
    EASYSYNC_ASSIGN_OR_RETURN(sums_host_, backend_->AllocateHost(sums_bytes));
  }
  EASYSYNC_RETURN_IF_ERROR(backend_->Copy(base_, cur, n_));
  EASYSYNC_RETURN_IF_ERROR(backend_->Xxh3BlockSums(base_, blocks, internal::Xxh3SecretWords(),
                                                   reinterpret_cast<uint64_t*>(sums_host_)));
  stats_.bytes_to_host += blocks * cuda::kXxh3Lanes * sizeof(uint64_t);
  ++stats_.full_frames;
  kind_ = Staged::kFull;
  in_place_ = true;
  staged_ = true;
  return Status::Ok();
}

Status DeviceEncoder::ClaimRange(size_t begin, size_t end) {
  std::lock_guard<std::mutex> lock(ranges_mu_);
  for (const auto& [b, e] : encoded_) {
    if (begin < e && b < end) {
      return Status::InvalidArgument("DeviceEncoder: range overlaps one encoded before");
    }
  }
  encoded_.emplace_back(begin, end);
  return Status::Ok();
}

Result<const uint8_t*> DeviceEncoder::EncodeRangeInPlace(size_t offset, size_t bytes,
                                                         std::span<uint8_t> header) {
  const size_t esize = DTypeSize(dtype_);
  if (!staged_ || !in_place_)
    return Status::InvalidArgument("DeviceEncoder: nothing staged in place");
  const size_t end = offset + bytes;
  if (offset > n_ || bytes > n_ - offset || offset % cuda::kXxh3BlockBytes != 0 ||
      offset % esize != 0 || bytes % esize != 0 || header.size() < kFrameHeaderBytes) {
    return Status::InvalidArgument("DeviceEncoder: in-place range not aligned or past the end");
  }
  EASYSYNC_RETURN_IF_ERROR(ClaimRange(offset, end));
  uint64_t hash;
  if (bytes < internal::kXxh3SplitMinBytes) {
    uint8_t small[internal::kXxh3SplitMinBytes];
    EASYSYNC_RETURN_IF_ERROR(backend_->ToHost(small, base_ + offset, bytes));
    hash = internal::Hash64(small, bytes);
  } else {
    uint8_t tail[cuda::kXxh3BlockBytes + 64];
    const size_t tail_offset = internal::Xxh3TailOffset(bytes);
    EASYSYNC_RETURN_IF_ERROR(
        backend_->ToHost(tail, base_ + offset + tail_offset, bytes - tail_offset));
    const auto* sums = reinterpret_cast<const uint64_t*>(sums_host_) +
                       offset / cuda::kXxh3BlockBytes * cuda::kXxh3Lanes;
    hash = internal::Xxh3FromBlockSums(sums, tail, bytes);
  }
  FrameInfo info;
  info.dtype = dtype_;
  info.chain = 0;
  info.element_count = bytes / esize;
  info.new_version = new_version_;
  info.result_hash = hash;
  info.payload_size = bytes;
  internal::WriteHeader(info, header.data());
  if (bytes == n_) {
    std::lock_guard<std::mutex> lock(ranges_mu_);
    whole_hash_ = hash;
  }
  return base_ + offset;
}

Result<DeviceEncoder::Staged> DeviceEncoder::Stage(DType dtype, size_t element_count,
                                                   const uint8_t* cur, uint64_t new_version) {
  EASYSYNC_RETURN_IF_ERROR(BeginStage(dtype, element_count, cur, new_version));
  // The whole tensor to the host: the first update, or one too dense for blocks to pay off.
  const auto whole = [&](Staged kind) -> Result<Staged> {
    EASYSYNC_RETURN_IF_ERROR(backend_->ToHost(staging_, cur, n_));
    stats_.bytes_to_host += n_;
    ++(kind == Staged::kFull ? stats_.full_frames : stats_.dense_frames);
    kind_ = kind;
    staged_ = true;
    return kind;
  };
  if (base_version_ == 0 || n_ == 0) return whole(Staged::kFull);

  EASYSYNC_RETURN_IF_ERROR(backend_->XorDiff(cur, base_, n_, block_bytes_, xor_, changed_));
  EASYSYNC_RETURN_IF_ERROR(
      backend_->Compact(xor_, n_, block_bytes_, changed_, reinterpret_cast<uint32_t*>(ids_),
                        compacted_, reinterpret_cast<uint32_t*>(count_dev_), temp_, temp_bytes_));
  uint32_t count = 0;
  EASYSYNC_RETURN_IF_ERROR(backend_->ToHost(&count, count_dev_, sizeof(count)));
  stats_.bytes_to_host += sizeof(count);
  if (count > cuda::NumBlocks(n_, block_bytes_)) {
    return Status::Internal("DeviceEncoder: compaction reported more blocks than exist");
  }
  // Once more than half the blocks changed, the blocks save little PCIe traffic and a sparse
  // frame will not pay off: copy the tensor whole.
  if (uint64_t{count} * block_bytes_ > n_ / 2) return whole(Staged::kDense);

  EASYSYNC_RETURN_IF_ERROR(backend_->ToHost(ids_host_.data(), ids_, count * sizeof(uint32_t)));
  const size_t bytes =
      count == 0 ? 0 : cuda::CompactedBytes(count, ids_host_[count - 1], n_, block_bytes_);
  EASYSYNC_RETURN_IF_ERROR(backend_->ToHost(staging_, compacted_, bytes));
  stats_.bytes_to_host += count * sizeof(uint32_t) + bytes;
  EASYSYNC_RETURN_IF_ERROR(cuda::ValidateBlockIds(ids_host_.data(), count, n_, block_bytes_));
  ++stats_.block_frames;
  staged_count_ = count;
  kind_ = Staged::kBlocks;
  staged_ = true;
  return Staged::kBlocks;
}

Result<size_t> DeviceEncoder::EncodeRange(Encoder& encoder, size_t offset, size_t bytes,
                                          std::optional<uint64_t> base_hash, std::span<uint8_t> out,
                                          uint8_t* copy_to) {
  const size_t esize = DTypeSize(dtype_);
  if (!staged_ || in_place_) return Status::InvalidArgument("DeviceEncoder: no staged update");
  const size_t end = offset + bytes;
  if (offset > n_ || bytes > n_ - offset || offset % block_bytes_ != 0 ||
      (end % block_bytes_ != 0 && end != n_) || offset % esize != 0 || bytes % esize != 0) {
    return Status::InvalidArgument("DeviceEncoder: range not block aligned or past the end");
  }
  const size_t count = bytes / esize;
  if (out.size() < EncodeBound(dtype_, count)) {
    return Status::InvalidArgument("DeviceEncoder: output buffer below EncodeBound");
  }
  EASYSYNC_RETURN_IF_ERROR(ClaimRange(offset, end));
  Result<size_t> size = size_t{0};
  EncodeHints hints;
  hints.copy_to = copy_to;
  if (kind_ == Staged::kFull) {
    size = encoder.Encode(TensorBytes{dtype_, count, staging_ + offset}, nullptr, 0, new_version_,
                          out, hints);
  } else if (kind_ == Staged::kDense) {
    // The shadow keeps the base until Commit (staging then becomes the shadow).
    const TensorBytes now{dtype_, count, staging_ + offset};
    const TensorBytes base{dtype_, count, shadow_ + offset};
    hints.known_base_hash = base_hash;
    size = encoder.Encode(now, &base, base_version_, new_version_, out, hints);
  } else {
    size = EncodeBlocksRange(encoder, offset, bytes,
                             base_hash ? *base_hash : HashBytes({shadow_ + offset, bytes}), out,
                             copy_to);
  }
  if (size.ok() && bytes == n_) {
    // One frame for the whole tensor: its result is the next shadow's hash.
    EASYSYNC_ASSIGN_OR_RETURN(const FrameInfo info, PeekFrame(out.first(*size)));
    std::lock_guard<std::mutex> lock(ranges_mu_);
    whole_hash_ = info.result_hash;
  }
  return size;
}

Result<size_t> DeviceEncoder::EncodeBlocksRange(Encoder& encoder, size_t offset, size_t bytes,
                                                uint64_t base_hash, std::span<uint8_t> out,
                                                uint8_t* copy_to) {
  const size_t esize = DTypeSize(dtype_);
  // The range's blocks (ids increase), numbered from its start.
  const uint32_t* ids = ids_host_.data();
  const auto first_id = static_cast<uint32_t>(offset / block_bytes_);
  const auto end_id = static_cast<uint32_t>(cuda::NumBlocks(offset + bytes, block_bytes_));
  const size_t first = std::lower_bound(ids, ids + staged_count_, first_id) - ids;
  const size_t last = std::lower_bound(ids + first, ids + staged_count_, end_id) - ids;
  const size_t count = last - first;
  std::vector<uint32_t> range_ids(count);
  for (size_t j = 0; j < count; ++j) range_ids[j] = ids[first + j] - first_id;
  XorBlocks blocks;
  blocks.dtype = dtype_;
  blocks.element_count = bytes / esize;
  blocks.block_bytes = block_bytes_;
  blocks.ids = range_ids.data();
  blocks.count = count;
  blocks.bytes = staging_ + first * block_bytes_;
  // The shadow's range becomes the new value as the blocks are scanned.
  const std::span<uint8_t> shadow(shadow_ + offset, bytes);
  EASYSYNC_ASSIGN_OR_RETURN(
      const size_t size, encoder.ApplyAndEncodeXorBlocks(blocks, shadow, base_version_, base_hash,
                                                         new_version_, out, copy_to));
  if (size != 0) return size;
  // Too dense for a sparse frame after all: the range's base is its new value with the blocks
  // applied once more (XOR undoes itself); encode from the two.
  std::vector<uint8_t> range_base(shadow.begin(), shadow.end());
  EASYSYNC_RETURN_IF_ERROR(cuda::ApplyCompactedBlocksHost(range_ids.data(), blocks.bytes, count,
                                                          bytes, block_bytes_, range_base.data()));
  const TensorBytes now{dtype_, bytes / esize, shadow.data()};
  const TensorBytes base{dtype_, bytes / esize, range_base.data()};
  EncodeHints hints;
  hints.known_base_hash = base_hash;
  return encoder.Encode(now, &base, base_version_, new_version_, out, hints);
}

Status DeviceEncoder::Commit(const uint8_t* cur) {
  if (!staged_) return Status::InvalidArgument("DeviceEncoder: no staged update");
  staged_ = false;
  size_t covered = 0;
  {
    std::lock_guard<std::mutex> lock(ranges_mu_);
    for (const auto& [b, e] : encoded_) covered += e - b;
  }
  if (covered != 0 && covered != n_) {
    // Some ranges went, others not: the shadow is neither the old value nor the new one.
    base_version_ = 0;
    return Status::InvalidArgument("DeviceEncoder: commit of an update only partly encoded");
  }
  if (in_place_) {
    // base_ holds the value already; the host shadow gets it now.
    in_place_ = false;
    EASYSYNC_RETURN_IF_ERROR(backend_->ToHost(staging_, base_, n_));
    stats_.bytes_to_host += n_;
    std::swap(shadow_, staging_);
    shadow_hash_ = whole_hash_;
    base_version_ = new_version_;
    return Status::Ok();
  }
  if (kind_ == Staged::kBlocks) {
    if (covered == 0) {
      EASYSYNC_RETURN_IF_ERROR(cuda::ApplyCompactedBlocksHost(
          ids_host_.data(), staging_, staged_count_, n_, block_bytes_, shadow_));
    }
  } else {
    std::swap(shadow_, staging_);
  }
  // Known when one range covered the whole tensor (its frame's result hash); else on demand.
  shadow_hash_ = whole_hash_;
  EASYSYNC_RETURN_IF_ERROR(backend_->Copy(base_, cur, n_));
  base_version_ = new_version_;
  return Status::Ok();
}

uint64_t DeviceEncoder::shadow_hash() {
  if (!shadow_hash_) shadow_hash_ = HashBytes({shadow_, n_});
  return *shadow_hash_;
}

}  // namespace easysync::codec
