// The one-token GEMV with its weights streamed into shared memory by bulk copies (TMA, sm_90).
//
// Why: the register GEMV (gemv.cu) has one chunk a warp in flight and waits a memory latency at each;
// Nsight shows it at ~70% of DRAM bandwidth with too few bytes in flight. Here every warp streams its own
// even share of the row tiles, in order, through its own ring of stages in shared memory: lanes 0 and 1
// issue one bulk copy each (a 2 KB segment of the tile's two rows) whose bytes count on the stage's
// mbarrier, so that the ring's other stages are in flight while the warp multiplies one. No warp waits
// for another (a ring shared by the block, refilled after a __syncthreads, measured slower). Staging x,
// the multiply and the epilogue are the register GEMV's (gemv_device.cuh).
//
// int8 weights stream the same way; each block quantizes x while its ring fills (x quantized once by a
// kernel before, as the register GEMV reads it, was slower here: 7B-shape decode 319 against 368 t/s on
// an H200). Their group scales follow each segment into the slot by the lanes' own 4-byte asynchronous
// copies, whose completion counts on the same barrier (the scales' rows are too short and too unaligned
// for bulk copies).
#include <algorithm>

#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/gemv_device.cuh"
#include "kernels/cuda/launch_pdl.cuh"
#include "kernels/cuda/segment_slot.cuh"

namespace kiln::cuda::gemv_detail {
namespace {

constexpr int kStreamThreads = 512, kStreamWarps = kStreamThreads / 32;
using segment_slot::kLoads, segment_slot::kMaxStages, segment_slot::kMinStages, segment_slot::kRows,
    segment_slot::kSegmentBytes, segment_slot::kSegmentVecs;
template <DType kW>
constexpr int kSlotBytes = segment_slot::slot_bytes(kW == DType::I8);  // a warp's step
template <DType kW>
constexpr int kStageBytes = kStreamWarps * kSlotBytes<kW>;  // a step of every warp: 64 KB, int8 72 KB
constexpr size_t kStaticBytes = 2048;  // the kernel's scratch and barriers, with room
constexpr int64_t kMinStreamedBytes = int64_t(16) << 20;

// Where a step of a warp reads or fills: its slot in the warp's ring of stages, its chunk of the row
// segments and its tile. Steps are taken in order, so each moves on from the one before (no division).
struct Cursor {
  int slot = 0, chunk = 0;
  int64_t tile = 0;
  __device__ void advance(int n_stages, int n_chunks) {
    if (++slot == n_stages) slot = 0;
    if (++chunk == n_chunks) {
      chunk = 0;
      ++tile;
    }
  }
};

// p.n_tiles counts tiles of kRows rows (row_of); each warp streams an even share of them, in order,
// through its own ring of n_stages slots (from ring_offset, after x in shared memory). Its step i fills
// slot i % n_stages with chunk i % n_chunks of its tile i / n_chunks: one segment a row, then for int8
// the segments' scales.
template <DType kW>
__global__ void __launch_bounds__(kStreamThreads, 1) gemv_streamed_kernel(GemvParams p, uint32_t ring_offset,
                                                                           int n_stages) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ float scratch[32];
  __shared__ uint64_t full[kStreamWarps][kMaxStages];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t n_vec = p.n_in / kPerLoad<kW>;
  const int n_chunks = int((n_vec + kSegmentVecs - 1) / kSegmentVecs);
  const int64_t all_warps = int64_t(gridDim.x) * kStreamWarps, index = int64_t(blockIdx.x) * kStreamWarps + warp;
  const int64_t first = p.n_tiles * index / all_warps, end = p.n_tiles * (index + 1) / all_warps;
  const int64_t n_steps = (end - first) * n_chunks;
  constexpr bool kInt8 = kW == DType::I8;
  unsigned char* ring = smem + ring_offset + size_t(warp) * n_stages * kSlotBytes<kW>;
  // int8: the groups of a segment (an even count: launch_streamed).
  const int segment_groups = kInt8 ? (kSegmentVecs * 16) >> p.group_shift : 0;
  uint64_t* barriers = full[warp];

  Cursor fill;
  fill.tile = first;
  const auto issue = [&]() {
    const int64_t left = n_vec - int64_t(fill.chunk) * kSegmentVecs;
    const uint32_t bytes = uint32_t((left < kSegmentVecs ? left : kSegmentVecs) * 16);
    const bool copy = lane < kRows && row_valid<kRows>(p, fill.tile, lane);
    const uint32_t copies = __popc(__ballot_sync(0xffffffffu, copy));
    const int64_t row_bytes = p.n_in * kBytesOf<kW>;
    const char* from = copy ? static_cast<const char*>(p.w) + row_of<kRows>(p, fill.tile, lane) * row_bytes +
                                  int64_t(fill.chunk) * kSegmentBytes
                            : nullptr;
    unsigned char* slot = ring + fill.slot * kSlotBytes<kW>;
    segment_slot::fill_segments(slot, &barriers[fill.slot], copies, from, bytes);
    if constexpr (kInt8) {
      const int first_group = fill.chunk * segment_groups;
      const uint16_t* scale_rows[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        scale_rows[r] = row_valid<kRows>(p, fill.tile, r)
                            ? p.scales + row_of<kRows>(p, fill.tile, r) * p.n_groups + first_group
                            : nullptr;
      segment_slot::fill_scales(slot, &barriers[fill.slot], scale_rows,
                                segment_slot::scale_pairs(fill.chunk, p.n_groups, segment_groups));
    }
    fill.advance(n_stages, n_chunks);
  };

  segment_slot::init_barriers<kInt8>(barriers, n_stages);
  pdl_launch_dependents();
  // Weights never change: in flight before the kernel that writes x has finished.
  for (int64_t i = 0; i < n_stages && i < n_steps; ++i) issue();
  pdl_wait();
  stage<kW>(p, smem, scratch);

  float acc[kRows][1] = {};
  Cursor use;
  use.tile = first;
  uint32_t parity = 0;  // of the ring's barriers in this round over it
  for (int64_t i = 0; i < n_steps; ++i) {
    Chunk<kW, kRows, kLoads> c;
    barrier_wait(&barriers[use.slot], parity);
    const unsigned char* slot = ring + use.slot * kSlotBytes<kW>;
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        const int at = u * 32 + lane;
        const bool loaded = row_valid<kRows>(p, use.tile, r) && int64_t(use.chunk) * kSegmentVecs + at < n_vec;
        c.w[r][u] = loaded ? segment_slot::segment(slot, r)[at] : make_uint4(0, 0, 0, 0);
        if constexpr (kInt8) c.scale[r][u] = loaded ? segment_slot::scales(slot, r)[at * 16 >> p.group_shift] : 0;
      }
    multiply_chunk<kW, 1, kRows, kLoads, true>(p, smem, use.chunk, c, acc);
    if (use.chunk == n_chunks - 1) store_tile(p, use.tile, acc);
    __syncwarp();  // every lane is done with the slot
    if (i + n_stages < n_steps) issue();
    use.advance(n_stages, n_chunks);
    if (use.slot == 0) parity ^= 1u;
  }
#endif
}

template <DType kW>
void launch_typed(GemvParams& p, uint32_t ring_offset, int n_stages, const DeviceLimits& device,
                  cudaStream_t stream) {
  const size_t smem = ring_offset + size_t(n_stages) * kStageBytes<kW>;
  KILN_CUDA_CHECK(cudaFuncSetAttribute(gemv_streamed_kernel<kW>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       int(smem)));
  const int64_t blocks = std::min<int64_t>(device.multiprocessors, (p.n_tiles + kStreamWarps - 1) / kStreamWarps);
  launch_pdl(gemv_streamed_kernel<kW>, dim3(unsigned(blocks)), dim3(kStreamThreads), smem, stream, p, ring_offset,
             n_stages);
}

}  // namespace

bool launch_streamed(GemvParams& p, DType dtype, size_t smem_x, const DeviceLimits& device, cudaStream_t stream) {
  // Small weights are left to the register GEMV: a first form of this kernel, streaming every weight,
  // took SmolLM2-135M's decode from 1,164 to 1,061 t/s, its launches' fixed costs (barriers, the first
  // copy's latency) above what streaming ~1 MB gains. int8 copies its scales in pairs: an even number of
  // groups a row, groups of 16 to 2,048 (whole groups a segment).
  const bool int8 = dtype == DType::I8;
  if (int8 && (p.n_groups % 2 != 0 || p.group_shift < 4 || p.group_shift > 11 ||
               reinterpret_cast<uintptr_t>(p.scales) % 4 != 0))
    return false;
  if (!int8 && dtype != DType::F16 && dtype != DType::BF16) return false;
  const int element_bytes = int8 ? 1 : 2;
  if (p.n_out * p.n_in * element_bytes < kMinStreamedBytes) return false;
  const size_t smem_max = size_t(device.smem_optin);
  const size_t ring_offset = (smem_x + 127) / 128 * 128;
  const size_t stage_bytes = int8 ? kStageBytes<DType::I8> : kStageBytes<DType::F16>;
  if (device.major < 9 || ring_offset + kMinStages * stage_bytes + kStaticBytes > smem_max) return false;
  const int n_stages = int(std::min<size_t>(kMaxStages, (smem_max - kStaticBytes - ring_offset) / stage_bytes));
  p.n_tiles = tiles_of(p, kRows);
  if (dtype == DType::F16) launch_typed<DType::F16>(p, uint32_t(ring_offset), n_stages, device, stream);
  else if (dtype == DType::BF16) launch_typed<DType::BF16>(p, uint32_t(ring_offset), n_stages, device, stream);
  else launch_typed<DType::I8>(p, uint32_t(ring_offset), n_stages, device, stream);
  return true;
}

}  // namespace kiln::cuda::gemv_detail
