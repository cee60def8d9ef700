// The merge of split attention results (attention.cu and paged_attention.cu): out = sum_s 2^(m_s - M) acc_s /
// sum_s 2^(m_s - M) l_s over the splits a (token, head) slot used, M their largest max. Splits whose max is
// -inf saw no key and add nothing. A block per slot: its warps take every kMergeWarps-th split and their
// lanes the head_dim values (4 at a time when head_dim allows), so the split loads overlap. Either a kernel
// of its own, or fused into the split kernel (merge_splits_if_last).
#pragma once

#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch_pdl.cuh"

namespace kiln::cuda {

inline constexpr int kMergeWarps = 4;
inline constexpr int kMergeThreads = 32 * kMergeWarps;
inline constexpr int kMergeMaxHeadDim = 256;

// Shared bytes of a merge over n_splits splits.
inline size_t merge_shared_bytes(int n_splits) {
  return sizeof(float) * (size_t(n_splits) + size_t(kMergeWarps) * kMergeMaxHeadDim);
}

// Merges slot th over the splits [first, last) into out[th] (and out16[th] in f16 unless nullptr): partial
// is [n_splits, n_th, head_dim] outputs, then [n_splits, n_th, 2] (max, sum). Every thread of a block of
// kMergeThreads calls this; smem holds merge_shared_bytes(n_splits). The loads bypass L1 (ld.cg): the fused
// merge reads what other blocks of the same kernel wrote. kVec: values a lane loads at once (4 needs
// head_dim % 4 == 0 and partial 16-aligned).
template <int kVec>
__device__ void merge_slot(const float* __restrict__ partial, float* __restrict__ out, int n_splits, int64_t n_th,
                           int head_dim, int64_t th, int first, int last, float* smem, __half* out16 = nullptr) {
  float* sum_s = smem;                                       // [kMergeWarps][kMergeMaxHeadDim] each warp's outputs
  float* weight_s = sum_s + kMergeWarps * kMergeMaxHeadDim;  // [n_splits] 2^(m_s - M)
  __shared__ float scratch[32];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const float* ml = partial + int64_t(n_splits) * n_th * head_dim;
  __syncthreads();  // a slot merged before by this block is done with the shared memory
  float big = -INFINITY;
  for (int s = first + tid; s < last; s += kMergeThreads) big = fmaxf(big, __ldcg(ml + (s * n_th + th) * 2));
  big = warp_max(big);
  if (lane == 0) scratch[warp] = big;
  __syncthreads();
  big = scratch[0];
#pragma unroll
  for (int w = 1; w < kMergeWarps; ++w) big = fmaxf(big, scratch[w]);
  float sum = 0.0f;
  for (int s = first + tid; s < last; s += kMergeThreads) {
    const float m = __ldcg(ml + (s * n_th + th) * 2), w = m == -INFINITY ? 0.0f : exp2f(m - big);
    weight_s[s - first] = w;
    if (w != 0.0f) sum += w * __ldcg(ml + (s * n_th + th) * 2 + 1);
  }
  sum = block_sum(sum, scratch);  // its barriers also publish weight_s

  constexpr int kPerLane = kMergeMaxHeadDim / 32 / kVec;  // vectors of head_dim a lane may own
  constexpr int kBatch = 4;                                // splits a warp loads before it adds
  float o[kPerLane][kVec] = {};
  const int n_vec = head_dim / kVec;
  for (int s0 = first + warp; s0 < last; s0 += kBatch * kMergeWarps) {
    float w[kBatch], x[kBatch][kPerLane][kVec];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int s = s0 + b * kMergeWarps;
      w[b] = s < last ? weight_s[s - first] : 0.0f;
      const float* src = partial + (int64_t(s) * n_th + th) * head_dim;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int c = lane + 32 * i;
        const bool used = w[b] != 0.0f && c < n_vec;  // a split without keys never wrote its outputs
        if constexpr (kVec == 4) {
          const float4 v = used ? __ldcg(reinterpret_cast<const float4*>(src) + c) : make_float4(0, 0, 0, 0);
          x[b][i][0] = v.x;
          x[b][i][1] = v.y;
          x[b][i][2] = v.z;
          x[b][i][3] = v.w;
        } else {
          x[b][i][0] = used ? __ldcg(src + c) : 0.0f;
        }
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b)
#pragma unroll
      for (int i = 0; i < kPerLane; ++i)
#pragma unroll
        for (int e = 0; e < kVec; ++e) o[i][e] += w[b] * x[b][i][e];
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int c = lane + 32 * i;
    if (c < n_vec)
#pragma unroll
      for (int e = 0; e < kVec; ++e) sum_s[warp * kMergeMaxHeadDim + c * kVec + e] = o[i][e];
  }
  __syncthreads();
  for (int d = tid; d < head_dim; d += kMergeThreads) {
    float x = 0.0f;
#pragma unroll
    for (int w = 0; w < kMergeWarps; ++w) x += sum_s[w * kMergeMaxHeadDim + d];
    const float y = sum > 0.0f ? x / sum : 0.0f;
    out[th * head_dim + d] = y;
    if (out16 != nullptr) out16[th * head_dim + d] = __float2half_rn(y);
  }
}

// One block per slot th; range(th, n_splits) gives the splits [x, y) the slot used (int2); an empty range
// leaves out[th] as it is.
template <int kVec, typename Range>
__global__ void __launch_bounds__(kMergeThreads) attention_merge_kernel(const float* __restrict__ partial,
                                                                        float* __restrict__ out, int n_splits,
                                                                        int64_t n_th, int head_dim, Range range,
                                                                        __half* __restrict__ out16) {
  extern __shared__ float merge_smem[];
  pdl_wait();  // the split results are complete
  const int2 used = range(int64_t(blockIdx.x), n_splits);
  if (used.x >= used.y) return;  // a slot another kernel writes
  merge_slot<kVec>(partial, out, n_splits, n_th, head_dim, blockIdx.x, used.x, used.y, merge_smem, out16);
}

// The merge fused into a split kernel (one launch fewer): each of the n_used blocks of a group counts itself
// once its partial results are out, and the group's last block merges the slots th(0 .. n_rows) over the
// splits [0, n_used) (partial laid out for n_splits), then re-arms the counter (zero again for the next
// call). The fences order the partial results before the count, and the count before the merging reads.
template <typename Rows>
__device__ void merge_splits_if_last(const float* partial, float* out, int n_splits, int n_used, int64_t n_th,
                                     int head_dim, int* counter, const Rows& rows, float* smem) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counter, 1) == n_used - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const bool vec = head_dim % 4 == 0 && reinterpret_cast<uintptr_t>(partial) % 16 == 0;
  for (int r = 0; r < rows.n_rows; ++r) {
    if (vec) merge_slot<4>(partial, out, n_splits, n_th, head_dim, rows.th(r), 0, n_used, smem);
    else merge_slot<1>(partial, out, n_splits, n_th, head_dim, rows.th(r), 0, n_used, smem);
  }
  if (threadIdx.x == 0) *counter = 0;
}

// Launches the merge of n_th slots on `stream`, as a dependent launch of the kernel that wrote partial; out16:
// the slots in f16 as well, or nullptr.
template <typename Range>
void launch_attention_merge(const float* partial, float* out, int n_splits, int64_t n_th, int head_dim, Range range,
                            cudaStream_t stream, __half* out16 = nullptr) {
  const size_t shared = merge_shared_bytes(n_splits);
  const bool vec = head_dim % 4 == 0 && reinterpret_cast<uintptr_t>(partial) % 16 == 0;
  launch_pdl(vec ? attention_merge_kernel<4, Range> : attention_merge_kernel<1, Range>, dim3(unsigned(n_th)),
             dim3(kMergeThreads), shared, stream, partial, out, n_splits, n_th, head_dim, range, out16);
}

}  // namespace kiln::cuda
