#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "compact.h"
#include "easysync/device_codec.h"
#include "xor_diff.h"

namespace easysync::codec {
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
  for (uint8_t** p : {&shadow_, &staging_}) {
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
  EASYSYNC_RETURN_IF_ERROR(Prepare(dtype, element_count));
  if (n_ != 0 && cur == nullptr) return Status::InvalidArgument("DeviceEncoder: null tensor");
  if (out.size() < EncodeBound(dtype, element_count)) {
    return Status::InvalidArgument("DeviceEncoder: output buffer below EncodeBound");
  }
  if (base_version_ == 0 || n_ == 0) return EncodeFull(cur, new_version, out);

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
  if (uint64_t{count} * block_bytes_ > n_ / 2) return EncodeDense(cur, new_version, out);

  EASYSYNC_RETURN_IF_ERROR(backend_->ToHost(ids_host_.data(), ids_, count * sizeof(uint32_t)));
  const size_t bytes =
      count == 0 ? 0 : cuda::CompactedBytes(count, ids_host_[count - 1], n_, block_bytes_);
  EASYSYNC_RETURN_IF_ERROR(backend_->ToHost(staging_, compacted_, bytes));
  stats_.bytes_to_host += count * sizeof(uint32_t) + bytes;

  // The shadow becomes cur: only the changed blocks are written, then the whole is hashed.
  EASYSYNC_RETURN_IF_ERROR(
      cuda::ApplyCompactedBlocksHost(ids_host_.data(), staging_, count, n_, block_bytes_, shadow_));
  const uint64_t result_hash = HashBytes({shadow_, n_});
  XorBlocks blocks;
  blocks.dtype = dtype_;
  blocks.element_count = count_;
  blocks.block_bytes = block_bytes_;
  blocks.ids = ids_host_.data();
  blocks.count = count;
  blocks.bytes = staging_;
  EASYSYNC_ASSIGN_OR_RETURN(
      const size_t size,
      encoder_.EncodeXorBlocks(blocks, base_version_, shadow_hash_, new_version, result_hash, out));
  if (size == 0) {
    // Not worth a sparse frame after all: undo (XOR twice) and send from the full tensors.
    EASYSYNC_RETURN_IF_ERROR(cuda::ApplyCompactedBlocksHost(ids_host_.data(), staging_, count, n_,
                                                            block_bytes_, shadow_));
    return EncodeDense(cur, new_version, out);
  }
  EASYSYNC_RETURN_IF_ERROR(Adopt(cur, result_hash, new_version));
  ++stats_.block_frames;
  return size;
}

Status DeviceEncoder::Adopt(const uint8_t* cur, uint64_t result_hash, uint64_t new_version) {
  EASYSYNC_RETURN_IF_ERROR(backend_->Copy(base_, cur, n_));
  shadow_hash_ = result_hash;
  base_version_ = new_version;
  return Status::Ok();
}

Result<size_t> DeviceEncoder::EncodeFull(const uint8_t* cur, uint64_t new_version,
                                         std::span<uint8_t> out) {
  EASYSYNC_RETURN_IF_ERROR(backend_->ToHost(shadow_, cur, n_));
  stats_.bytes_to_host += n_;
  TensorBytes t{dtype_, count_, shadow_};
  EASYSYNC_ASSIGN_OR_RETURN(const size_t size, encoder_.EncodeFull(t, new_version, out));
  EASYSYNC_ASSIGN_OR_RETURN(const FrameInfo info, PeekFrame(out.first(size)));
  EASYSYNC_RETURN_IF_ERROR(Adopt(cur, info.result_hash, new_version));
  ++stats_.full_frames;
  return size;
}

Result<size_t> DeviceEncoder::EncodeDense(const uint8_t* cur, uint64_t new_version,
                                          std::span<uint8_t> out) {
  EASYSYNC_RETURN_IF_ERROR(backend_->ToHost(staging_, cur, n_));
  stats_.bytes_to_host += n_;
  TensorBytes now{dtype_, count_, staging_};
  TensorBytes base{dtype_, count_, shadow_};
  EncodeHints hints;
  hints.known_base_hash = shadow_hash_;
  EASYSYNC_ASSIGN_OR_RETURN(const size_t size,
                            encoder_.Encode(now, &base, base_version_, new_version, out, hints));
  EASYSYNC_ASSIGN_OR_RETURN(const FrameInfo info, PeekFrame(out.first(size)));
  std::swap(shadow_, staging_);
  EASYSYNC_RETURN_IF_ERROR(Adopt(cur, info.result_hash, new_version));
  ++stats_.dense_frames;
  return size;
}

}  // namespace easysync::codec
