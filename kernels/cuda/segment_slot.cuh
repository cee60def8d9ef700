// A warp's ring of slots, each holding a 2 KB segment of two weight rows, filled by bulk copies
// (bulk_copy.cuh). The streamed GEMV (gemv_streamed.cu) and the persistent decode step's streamed feed
// (persistent_streamed.cu) stream their weights this way.
//
// A step of a warp fills one slot: lanes 0 and 1 each issue one bulk copy of their row's segment, counted
// on the slot's mbarrier; for int8 the segments' f16 group scales follow by the lanes' 4-byte copies (rows
// of scales are too short and too unaligned for bulk copies), counted on the same barrier by one arrival
// a lane.
#pragma once

#include <cstdint>

#include "kernels/cuda/bulk_copy.cuh"

namespace kiln::cuda::segment_slot {

constexpr int kRows = 2;                             // rows of a tile
constexpr int kLoads = 4;                            // 16-byte chunks a lane and row in a step
constexpr int kSegmentVecs = 32 * kLoads;            // 16-byte vectors of a row segment
constexpr int kSegmentBytes = kSegmentVecs * 16;     // 2 KB
constexpr int kScaleBytes = kSegmentBytes / 16 * 2;  // int8: a segment's f16 scales, groups of 16 or more
constexpr int kMinStages = 2, kMaxStages = 8;

constexpr int slot_bytes(bool int8) { return kRows * (kSegmentBytes + (int8 ? kScaleBytes : 0)); }

// Row r's segment and (int8) its scales in a slot.
__device__ __forceinline__ const uint4* segment(const unsigned char* slot, int r) {
  return reinterpret_cast<const uint4*>(slot) + r * kSegmentVecs;
}
__device__ __forceinline__ const uint16_t* scales(const unsigned char* slot, int r) {
  return reinterpret_cast<const uint16_t*>(slot + kRows * kSegmentBytes) + r * (kScaleBytes / 2);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// Lane 0 sets up the warp's n_stages barriers: the expecting arrival, and for int8 every lane's after its
// scale copies.
template <bool kInt8>
__device__ void init_barriers(uint64_t* barriers, int n_stages) {
  if (threadIdx.x % 32 == 0) {
    for (int s = 0; s < n_stages; ++s) barrier_init(&barriers[s], kInt8 ? 1 + 32 : 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");  // visible to the copy engine
  }
  __syncwarp();
}

// Starts the copies of one step into `slot`: `bytes` of each of the tile's `rows` rows, lane r < rows
// copying row r's from `from` (nullptr on the other lanes: each lane computes only its own row). The slot
// was last read by this warp's loads, ordered before by a __syncwarp after them; the proxy fence orders
// those reads before the copies' writes.
__device__ __forceinline__ void fill_segments(unsigned char* slot, uint64_t* barrier, uint32_t rows, const char* from,
                                              uint32_t bytes) {
  const int lane = int(threadIdx.x) % 32;
  if (lane == 0) barrier_expect(barrier, rows * bytes);
  __syncwarp();
  if (from != nullptr) {
    fence_proxy_async();
    bulk_copy(slot + lane * kSegmentBytes, from, bytes, barrier);
  }
}

// int8: the pairs of f16 scales of the segment `chunk` of a row of `groups` groups, segments of
// `segment_groups` (every row has an even number of groups: the callers' shape checks).
__device__ __forceinline__ int scale_pairs(int chunk, int64_t groups, int segment_groups) {
  const int64_t groups_left = groups - int64_t(chunk) * segment_groups;
  return int(groups_left < segment_groups ? groups_left : segment_groups) / 2;
}

// int8: then `pairs` pairs of f16 scales of row r from scale_rows[r] (nullptr: no row r), by every lane.
__device__ __forceinline__ void fill_scales(unsigned char* slot, uint64_t* barrier,
                                            const uint16_t* const (&scale_rows)[kRows], int pairs) {
  const int lane = int(threadIdx.x) % 32;
  auto* to = reinterpret_cast<uint32_t*>(slot + kRows * kSegmentBytes);
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (scale_rows[r] == nullptr) continue;
    for (int pair = lane; pair < pairs; pair += 32)
      copy4_async(to + r * (kScaleBytes / 4) + pair, scale_rows[r] + 2 * pair);
  }
  barrier_arrive_after_copies(barrier);
}
#endif

}  // namespace kiln::cuda::segment_slot
