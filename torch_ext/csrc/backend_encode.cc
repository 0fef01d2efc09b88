// delta_encode through a DeltaBackend: the XOR diff and the compaction of changed blocks run
// where the tensors live, and only what the frame needs comes to the host. The CUDA kernel of
// delta_encode (ops_cuda.cc) runs this on the CUDA backend; tests run it on the host backend.
#include <ATen/ATen.h>

#include <algorithm>

#include "compact.h"
#include "ops.h"

namespace easysync::torch_ext {
namespace {

// The change-map granularity: DeviceEncoder's default, for the same reason (a sparse
// training update leaves most 64-byte blocks untouched, few 4 KiB ones).
constexpr size_t kBlockBytes = 64;
constexpr const char* kOp = "easysync::delta_encode";

uint8_t* Bytes(const at::Tensor& t) { return static_cast<uint8_t*>(t.data_ptr()); }

void CheckStatus(const Status& s) { TORCH_CHECK(s.ok(), kOp, ": ", s.ToString()); }

}  // namespace

at::Tensor EncodeThroughBackend(codec::DeltaBackend& backend, DType dtype, const at::Tensor& base,
                                const at::Tensor& value, int64_t level) {
  const size_t n = value.nbytes();
  const auto count = static_cast<size_t>(value.numel());
  if (n == 0) return EncodeOnHost(dtype, base.cpu(), value.cpu(), level);
  const size_t blocks = cuda::NumBlocks(n, kBlockBytes);
  TORCH_CHECK(blocks <= cuda::kMaxBlocks, kOp, ": the tensor has too many 64-byte blocks");

  // Scratch from torch's allocator on the tensors' device (the caching allocator, on the
  // current stream, for CUDA).
  const auto bytes_there = at::TensorOptions().dtype(at::kByte).device(value.device());
  const at::Tensor xor_bytes = at::empty({static_cast<int64_t>(n)}, bytes_there);
  const at::Tensor changed = at::empty({static_cast<int64_t>(blocks)}, bytes_there);
  const at::Tensor ids = at::empty({static_cast<int64_t>(blocks)}, bytes_there.dtype(at::kInt));
  const at::Tensor compacted = at::empty({static_cast<int64_t>(n)}, bytes_there);
  const at::Tensor changed_count = at::empty({1}, bytes_there.dtype(at::kInt));
  auto temp_bytes = backend.CompactTempBytes(n, kBlockBytes);
  CheckStatus(temp_bytes.status());
  const at::Tensor temp =
      at::empty({static_cast<int64_t>(std::max<size_t>(*temp_bytes, 1))}, bytes_there);

  CheckStatus(
      backend.XorDiff(Bytes(value), Bytes(base), n, kBlockBytes, Bytes(xor_bytes), Bytes(changed)));
  CheckStatus(backend.Compact(Bytes(xor_bytes), n, kBlockBytes, Bytes(changed),
                              static_cast<uint32_t*>(ids.data_ptr()), Bytes(compacted),
                              static_cast<uint32_t*>(changed_count.data_ptr()), Bytes(temp),
                              *temp_bytes));
  // torch's device-to-host copies run on the current stream (the backend's) and wait for it.
  const auto changed_blocks = static_cast<uint32_t>(changed_count.cpu().item<int32_t>());
  TORCH_CHECK(changed_blocks <= blocks, kOp, ": compaction reported ", changed_blocks,
              " changed blocks of ", blocks);
  // Frames carry XXH3-64 hashes of base and result, which are computed on the host.
  const at::Tensor base_host = base.cpu();
  // Once more than half the blocks changed, the blocks save little traffic and a sparse frame
  // will not pay off: the value crosses whole.
  if (uint64_t{changed_blocks} * kBlockBytes > n / 2) {
    return EncodeOnHost(dtype, base_host, value.cpu(), level);
  }

  const at::Tensor ids_host = ids.narrow(0, 0, changed_blocks).cpu();
  const auto* id_list = static_cast<const uint32_t*>(ids_host.const_data_ptr());
  const size_t xor_size = cuda::CompactedBytes(
      changed_blocks, changed_blocks == 0 ? 0 : id_list[changed_blocks - 1], n, kBlockBytes);
  const at::Tensor xor_host = compacted.narrow(0, 0, static_cast<int64_t>(xor_size)).cpu();
  // The value, rebuilt on the host from the base and the changed blocks, for its hash.
  const at::Tensor value_host = base_host.clone();
  CheckStatus(cuda::ApplyCompactedBlocksHost(id_list, Bytes(xor_host), changed_blocks, n,
                                             kBlockBytes, Bytes(value_host)));
  const uint64_t base_hash = codec::HashBytes({Bytes(base_host), n});
  codec::XorBlocks xor_blocks;
  xor_blocks.dtype = dtype;
  xor_blocks.element_count = count;
  xor_blocks.block_bytes = kBlockBytes;
  xor_blocks.ids = id_list;
  xor_blocks.count = changed_blocks;
  xor_blocks.bytes = Bytes(xor_host);
  at::Tensor out = FrameBuffer(dtype, count, kOp);
  auto size = ThreadEncoder(level).EncodeXorBlocks(
      xor_blocks, kFrameBaseVersion, base_hash, kFrameNewVersion,
      codec::HashBytes({Bytes(value_host), n}), {Bytes(out), static_cast<size_t>(out.numel())});
  CheckStatus(size.status());
  if (*size != 0) return TrimFrame(std::move(out), *size);
  // Too dense for a sparse frame after all: encode from the full tensors, both on the host now.
  codec::EncodeHints hints;
  hints.known_base_hash = base_hash;
  return EncodeOnHost(dtype, base_host, value_host, level, hints);
}

}  // namespace easysync::torch_ext
