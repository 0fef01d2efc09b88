// Delta encoding of tensors that live on a GPU: only the changed blocks cross PCIe.
//
// Per update, on the device: XOR against the device copy of the receiver's base with a
// per-block change map, then compaction of the changed blocks (cuda/). Only the change
// count, the changed block ids and their XOR bytes are copied to the host, where they are
// applied to a host shadow of the base (to hash the result: frames carry XXH3-64 of base
// and result) and encoded as an ordinary sparse frame (Encoder::EncodeXorBlocks), so the
// receiver needs nothing special. Dense updates, and the first one, copy the full tensor.
//
// The device stages sit behind DeltaBackend: a CUDA backend (device memory, the caller's
// stream) and a host backend running the kernels' host twins on host memory, which is how
// the whole pipeline is tested where there is no GPU.
//
// Thread-safety: one thread at a time per DeviceEncoder.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "easysync/codec.h"

namespace easysync::codec {

class DeltaBackend {
 public:
  virtual ~DeltaBackend() = default;
  virtual const char* name() const = 0;
  // Memory the stages below work on (device memory for CUDA).
  virtual Result<uint8_t*> Allocate(size_t bytes) = 0;
  virtual void Free(uint8_t* p) = 0;
  // cuda::XorDiff* and cuda::CompactChangedBlocks* (count lands in backend memory).
  virtual Status XorDiff(const uint8_t* cur, const uint8_t* base, size_t n, size_t block_bytes,
                         uint8_t* xor_out, uint8_t* changed) = 0;
  virtual Result<size_t> CompactTempBytes(size_t n, size_t block_bytes) = 0;
  virtual Status Compact(const uint8_t* xor_bytes, size_t n, size_t block_bytes,
                         const uint8_t* changed, uint32_t* ids, uint8_t* out, uint32_t* count,
                         uint8_t* temp, size_t temp_bytes) = 0;
  // The XXH3 block sums (cuda/xxh3_blocks.h) of `blocks` KiB of backend memory at data, into
  // host memory: computed where the bytes live, so that only the sums cross. The default
  // brings the bytes to the host a MiB at a time (ToHost) and runs the host twin.
  virtual Status Xxh3BlockSums(const uint8_t* data, size_t blocks, const uint64_t* secret,
                               uint64_t* host_sums);
  // Whether Allocate gives device memory (what a transport must be told it reads).
  virtual bool device_memory() const { return false; }
  // Copies to host memory and waits for everything queued before it.
  virtual Status ToHost(void* host_dst, const void* src, size_t bytes) = 0;
  // Copies within backend memory (queued).
  virtual Status Copy(uint8_t* dst, const uint8_t* src, size_t bytes) = 0;
  // Host memory that ToHost fills at the link's full speed: page-locked for CUDA (a copy to
  // pageable memory goes through the driver's small staging buffers, several times slower).
  virtual Result<uint8_t*> AllocateHost(size_t bytes);
  virtual void FreeHost(uint8_t* p);
};

// The host twins on host memory.
std::unique_ptr<DeltaBackend> MakeHostDeltaBackend();
// The CUDA kernels on `stream` (a cudaStream_t; nullptr: the default stream). Unavailable in
// a build without CUDA or on a machine without a device.
Result<std::unique_ptr<DeltaBackend>> MakeCudaDeltaBackend(void* stream);

struct DeviceEncoderStats {
  uint64_t bytes_to_host = 0;  // what crossed from the backend to the host
  uint64_t full_frames = 0;    // first update, or after Reset / a shape change
  uint64_t block_frames = 0;   // sparse frames built from the changed blocks alone
  uint64_t dense_frames = 0;   // updates too dense for that: the full tensor was copied
};

// The header EncodeRangeInPlace writes: a frame's header (docs/wire_format.md).
inline constexpr size_t kFrameHeaderBytes = 64;

class DeviceEncoder {
 public:
  // block_bytes: granularity of the change map (a positive multiple of 8). Small blocks
  // matter: with 1.5% of bf16 elements changed at random, nearly every 4 KiB block has a
  // change, while about 60% of 64-byte blocks have none.
  explicit DeviceEncoder(std::unique_ptr<DeltaBackend> backend, EncoderOptions options = {},
                         size_t block_bytes = 64);
  ~DeviceEncoder();
  DeviceEncoder(const DeviceEncoder&) = delete;
  DeviceEncoder& operator=(const DeviceEncoder&) = delete;

  // Encodes `cur` (element_count elements of dtype, in backend memory) as version
  // new_version, against what the previous update encoded (which the receiver is assumed to
  // hold from now on). The first update, or one after Reset() or a dtype/size change, gives a
  // full value. REQUIRES: out.size() >= EncodeBound(dtype, element_count).
  Result<size_t> Encode(DType dtype, size_t element_count, const uint8_t* cur, uint64_t new_version,
                        std::span<uint8_t> out);

  // The same update as several frames, one per byte range (how a large tensor is sent in
  // segments that travel while the next is encoded): Stage() brings the update to the host
  // (the changed blocks, or the whole tensor), EncodeRange() encodes one range of it as a frame
  // of its own against the same range of the base, and Commit() makes the update the base of
  // the next one. Encode() is these three over the whole tensor.
  enum class Staged { kFull, kBlocks, kDense };
  Result<Staged> Stage(DType dtype, size_t element_count, const uint8_t* cur, uint64_t new_version);
  // Bytes [offset, offset + bytes) of the staged update as a frame of bytes / DTypeSize
  // elements; base_hash: that range's XXH3-64 in the base, where the caller knows it.
  // REQUIRES: a staged update; offset a multiple of block_bytes and of the element size, the
  // end one too or the tensor's end, ranges that do not overlap (InvalidArgument otherwise);
  // out.size() >= EncodeBound for the range. Several threads may encode different ranges of
  // one update at once, each with an encoder of its own (the overload without one uses the
  // DeviceEncoder's). copy_to, when set, gets the range's new bytes (what RangeValue gives)
  // within the encoder's pass over them, where the caller keeps a copy of the value: that
  // saves a pass over memory. It must not overlap the encoder's buffers or `out`.
  Result<size_t> EncodeRange(size_t offset, size_t bytes, std::optional<uint64_t> base_hash,
                             std::span<uint8_t> out) {
    return EncodeRange(encoder_, offset, bytes, base_hash, out);
  }
  Result<size_t> EncodeRange(Encoder& encoder, size_t offset, size_t bytes,
                             std::optional<uint64_t> base_hash, std::span<uint8_t> out,
                             uint8_t* copy_to = nullptr);
  // The staged update's new bytes of a range that EncodeRange has encoded (host memory;
  // valid until Commit or the next Stage). REQUIRES: offset + bytes <= the tensor's bytes.
  std::span<const uint8_t> RangeValue(size_t offset, size_t bytes) const {
    return {(kind_ == Staged::kBlocks ? shadow_ : staging_) + offset, bytes};
  }
  // The receiver now holds the staged update. REQUIRES: every range of it was encoded, or
  // none (InvalidArgument for a part: the update is dropped, the next one goes whole).
  Status Commit(const uint8_t* cur);

  // A full value that the transport reads where it lives (device memory, where UCX moves it)
  // instead of from the host: StageInPlace() copies `cur` within the backend into the
  // encoder's copy of the base, which keeps it unchanged until the next Stage or
  // StageInPlace; EncodeRangeInPlace() writes the 64-byte header of a raw full frame for a
  // range of it (the range hashed in the backend: cuda/xxh3_blocks.h, only sums and a tail
  // cross to the host) and returns where the range's bytes are, the frame's payload (backend
  // memory); Commit() brings the value to the host shadow. No entropy stage: the frame's
  // payload is the tensor's bytes. Ranges as for EncodeRange, with offsets multiples of 1024
  // too; several threads may encode ranges at once.
  Status StageInPlace(DType dtype, size_t element_count, const uint8_t* cur, uint64_t new_version);
  Result<const uint8_t*> EncodeRangeInPlace(size_t offset, size_t bytes, std::span<uint8_t> header);
  // Whether the next Stage would give a full value (nothing acknowledged of this dtype and
  // size): then StageInPlace may take its place.
  bool NextIsFull(DType dtype, size_t element_count) const {
    return base_version_ == 0 || staging_ == nullptr || dtype != dtype_ || element_count != count_;
  }
  bool device_memory() const { return backend_->device_memory(); }

  // The receiver lost track (it asked for a full value): the next frame is a full value.
  void Reset() {
    base_version_ = 0;
    staged_ = false;
    in_place_ = false;
  }
  // The receiver holds what the last update encoded, as `version` (where another party, e.g.
  // a hub, assigns versions): the next delta names that version as its base.
  void Acknowledge(uint64_t version) {
    if (base_version_ != 0) base_version_ = version;
  }
  // A host copy of what the last update encoded (the receiver's base), and its XXH3-64
  // (computed here when the update went in ranges).
  std::span<const uint8_t> shadow() const { return {shadow_, n_}; }
  uint64_t shadow_hash();
  const DeviceEncoderStats& stats() const { return stats_; }

 private:
  Status Prepare(DType dtype, size_t element_count);
  // What Stage and StageInPlace begin with: nothing staged, buffers for this dtype and size.
  Status BeginStage(DType dtype, size_t element_count, const uint8_t* cur, uint64_t new_version);
  // Records [begin, end) as encoded; InvalidArgument when it overlaps a range encoded before.
  Status ClaimRange(size_t begin, size_t end);
  void FreeAll();
  Result<size_t> EncodeBlocksRange(Encoder& encoder, size_t offset, size_t bytes,
                                   uint64_t base_hash, std::span<uint8_t> out, uint8_t* copy_to);

  std::unique_ptr<DeltaBackend> backend_;
  Encoder encoder_;
  size_t block_bytes_;
  DType dtype_ = DType::kUInt8;
  size_t count_ = 0;
  size_t n_ = 0;
  uint64_t base_version_ = 0;  // 0: the receiver has nothing we know of
  std::optional<uint64_t> shadow_hash_;
  // The staged update: its kind and version, its changed blocks (ids_host_[0, staged_count_),
  // their bytes in staging_), or the whole tensor in staging_.
  bool staged_ = false;
  Staged kind_ = Staged::kFull;
  bool in_place_ = false;  // the staged full value is in base_ (StageInPlace)
  uint64_t new_version_ = 0;
  size_t staged_count_ = 0;
  std::mutex ranges_mu_;  // guards the two below (ranges may be encoded at once)
  std::vector<std::pair<size_t, size_t>> encoded_;  // the ranges encoded: [begin, end)
  std::optional<uint64_t> whole_hash_;              // the result of a range that was the whole
  // Backend memory.
  uint8_t* base_ = nullptr;
  uint8_t* xor_ = nullptr;
  uint8_t* changed_ = nullptr;
  uint8_t* ids_ = nullptr;
  uint8_t* compacted_ = nullptr;
  uint8_t* count_dev_ = nullptr;
  uint8_t* temp_ = nullptr;
  size_t temp_bytes_ = 0;
  // Host memory (AllocateHost) for the XXH3 block sums of base_ (StageInPlace), on first use.
  uint8_t* sums_host_ = nullptr;
  // Host memory (AllocateHost): the receiver's base, and staging for what comes back.
  uint8_t* shadow_ = nullptr;
  uint8_t* staging_ = nullptr;
  std::vector<uint32_t> ids_host_;
  DeviceEncoderStats stats_;
};

}  // namespace easysync::codec
