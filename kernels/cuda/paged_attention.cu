#include "kernels/cuda/paged_attention.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"
#include "kernels/cuda/cuda_util.h"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kKeys = 32;           // keys per tile: one per lane in the softmax reductions
constexpr int kMaxGroupFloats = 2048;  // query heads x head_dim of one block (16 accumulators a thread)
constexpr int kAcc = kMaxGroupFloats / kThreads;
constexpr float kLog2e = 1.4426950408889634f;

// The pool address of position j of kv head g of the sequence whose table row is `table`.
__device__ inline int64_t slot_offset(const PagedKvLayout& kv, const int32_t* table, int64_t j, int g) {
  const int64_t block = table[j / kv.block_positions];
  return ((block * kv.n_kv_heads + g) * kv.block_positions + j % kv.block_positions) * kv.head_dim;
}

__global__ void paged_kv_store_kernel(PagedKvStoreArgs a) {
  const int64_t kv_dim = int64_t(a.kv.n_kv_heads) * a.kv.head_dim, n = a.n_rows * kv_dim;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / kv_dim, e = i % kv_dim;
    const int g = int(e / a.kv.head_dim), d = int(e % a.kv.head_dim);
    const int32_t* table = a.kv.block_table + int64_t(a.row_seq[r]) * a.kv.max_blocks_per_seq;
    const int64_t dst = slot_offset(a.kv, table, a.row_position[r], g) + d;
    a.kv.k_pool[dst] = a.k[r * a.k_stride + e];
    a.kv.v_pool[dst] = a.v[r * a.v_stride + e];
  }
}

// Block (row blockIdx.x, kv head blockIdx.y, query heads [blockIdx.z * group, + group) of that kv head).
// Keys go kKeys at a time through shared memory (values are read where they lie, a row of the tile per
// step); each query head keeps a running max and sum (log2 domain) and its output in registers: element
// e = tid + i * kThreads of the flattened [group, head_dim] tile.
__global__ void __launch_bounds__(kThreads) paged_attention_kernel(PagedAttentionArgs a, int group) {
  extern __shared__ float smem[];
  const int D = a.kv.head_dim, ds = D + 1;  // +1: keys of a tile fall in different banks
  __shared__ int64_t slot_s[kKeys];         // pool offsets of the tile's keys (kv head g)
  float* qs = smem;                         // [group][D]
  float* ks = qs + group * D;               // [kKeys][ds]
  float* ps = ks + kKeys * ds;              // [group][kKeys] scores, then probabilities
  float* corr_s = ps + group * kKeys;       // [group] rescale of the running output
  float* l_s = corr_s + group;              // [group] running sums
  float* m_s = l_s + group;                 // [group] running maxima

  const int64_t row = blockIdx.x;
  const int g = blockIdx.y, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int n_rep = a.n_heads / a.kv.n_kv_heads;
  const int h0 = g * n_rep + int(blockIdx.z) * group;
  const int n_here = min(group, g * n_rep + n_rep - h0);  // query heads of this block
  const int64_t position = a.row_position[row];
  const int32_t* table = a.kv.block_table + int64_t(a.row_seq[row]) * a.kv.max_blocks_per_seq;
  const int64_t lo = a.window > 0 ? max(int64_t(0), position - a.window + 1) : 0, hi = position + 1;

  for (int e = tid; e < n_here * D; e += kThreads) qs[e] = a.q[(row * a.n_heads + h0) * D + e];
  for (int r = tid; r < n_here; r += kThreads) {
    m_s[r] = -INFINITY;
    l_s[r] = 0.0f;
  }
  float acc[kAcc];
#pragma unroll
  for (int i = 0; i < kAcc; ++i) acc[i] = 0.0f;
  const float qk_scale = a.scale * kLog2e;

  for (int64_t j0 = lo; j0 < hi; j0 += kKeys) {
    __syncthreads();  // the previous tile is consumed (and qs, m_s, l_s are written before the first)
    const int n_in = int(min(int64_t(kKeys), hi - j0));  // keys past the row's position are never read
    if (tid < n_in) slot_s[tid] = slot_offset(a.kv, table, j0 + tid, g);
    __syncthreads();
    for (int e = tid; e < n_in * D; e += kThreads) {
      const int jj = e / D, d = e % D;
      ks[jj * ds + d] = a.kv.k_pool[slot_s[jj] + d];
    }
    __syncthreads();
    for (int e = tid; e < n_here * kKeys; e += kThreads) {
      const int r = e / kKeys, jj = e % kKeys;
      float s = -INFINITY;
      if (jj < n_in) {
        float dot = 0.0f;
        for (int d = 0; d < D; ++d) dot += qs[r * D + d] * ks[jj * ds + d];
        s = dot * qk_scale;
        if (a.alibi_slopes != nullptr) s += a.alibi_slopes[h0 + r] * kLog2e * float(j0 + jj - position);
      }
      ps[r * kKeys + jj] = s;
    }
    __syncthreads();
    for (int r = warp; r < n_here; r += kWarps) {  // lane = key of the tile
      const float s = ps[r * kKeys + lane];
      float tile_max = s;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
      const float m_old = m_s[r], m_new = fmaxf(m_old, tile_max);
      const float prob = s == -INFINITY ? 0.0f : exp2f(s - m_new);
      float sum = prob;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      ps[r * kKeys + lane] = prob;
      if (lane == 0) {
        const float corr = m_old == -INFINITY ? 0.0f : exp2f(m_old - m_new);
        corr_s[r] = corr;
        l_s[r] = l_s[r] * corr + sum;
        m_s[r] = m_new;
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kAcc; ++i) {
      const int e = tid + i * kThreads;
      if (e < n_here * D) {
        const int r = e / D, d = e % D;
        float o = acc[i] * corr_s[r];
        for (int jj = 0; jj < n_in; ++jj) o += ps[r * kKeys + jj] * a.kv.v_pool[slot_s[jj] + d];
        acc[i] = o;
      }
    }
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kAcc; ++i) {
    const int e = tid + i * kThreads;
    if (e < n_here * D) a.out[(row * a.n_heads + h0) * D + e] = acc[i] / l_s[e / D];
  }
}

// Query heads of a kv head per block: all of them when their outputs fit the accumulators.
int heads_per_block(int n_rep, int head_dim) { return std::max(1, std::min(n_rep, kMaxGroupFloats / head_dim)); }

size_t shared_bytes(int group, int head_dim) {
  return sizeof(float) * (size_t(group) * size_t(head_dim) + size_t(kKeys) * size_t(head_dim + 1) +
                          size_t(group) * kKeys + 3 * size_t(group));
}

void check_layout(const PagedKvLayout& kv, const char* what) {
  KILN_CHECK(kv.n_kv_heads >= 1 && kv.n_kv_heads <= 65535 && kv.head_dim >= 1 &&
                 kv.head_dim <= kPagedAttentionMaxHeadDim && kv.block_positions >= 1 && kv.max_blocks_per_seq >= 1,
             "cuda {}: bad KV layout: {} kv heads, head_dim {} (at most {}), {} positions a block, {} blocks a "
             "sequence",
             what, kv.n_kv_heads, kv.head_dim, kPagedAttentionMaxHeadDim, kv.block_positions, kv.max_blocks_per_seq);
  KILN_CHECK(kv.k_pool != nullptr && kv.v_pool != nullptr && kv.block_table != nullptr, "cuda {}: null pool or table",
             what);
}

}  // namespace

void paged_kv_store(const PagedKvStoreArgs& a) {
  KILN_CHECK(a.n_rows >= 0, "cuda paged_kv_store: {} rows", a.n_rows);
  if (a.n_rows == 0) return;
  check_layout(a.kv, "paged_kv_store");
  KILN_CHECK(a.k != nullptr && a.v != nullptr && a.row_seq != nullptr && a.row_position != nullptr,
             "cuda paged_kv_store: null input");
  const int64_t n = a.n_rows * a.kv.n_kv_heads * a.kv.head_dim;
  const unsigned grid = unsigned(std::min<int64_t>((n + 255) / 256, 65536));
  paged_kv_store_kernel<<<grid, 256, 0, a.stream>>>(a);
  KILN_CUDA_CHECK_LAUNCH();
}

void paged_attention(const PagedAttentionArgs& a) {
  KILN_CHECK(a.n_rows >= 0 && a.n_rows < (int64_t(1) << 31), "cuda paged_attention: {} rows", a.n_rows);
  if (a.n_rows == 0) return;
  check_layout(a.kv, "paged_attention");
  KILN_CHECK(a.n_heads >= 1 && a.n_heads % a.kv.n_kv_heads == 0,
             "cuda paged_attention: {} query heads do not split into {} kv heads", a.n_heads, a.kv.n_kv_heads);
  KILN_CHECK(a.scale > 0 && std::isfinite(a.scale), "cuda paged_attention: scale {} must be positive", a.scale);
  KILN_CHECK(a.window >= 0, "cuda paged_attention: window {}", a.window);
  KILN_CHECK(a.q != nullptr && a.out != nullptr && a.row_seq != nullptr && a.row_position != nullptr,
             "cuda paged_attention: null input or output");
  const int n_rep = a.n_heads / a.kv.n_kv_heads;
  const int group = heads_per_block(n_rep, a.kv.head_dim);
  const dim3 grid(unsigned(a.n_rows), unsigned(a.kv.n_kv_heads), unsigned((n_rep + group - 1) / group));
  paged_attention_kernel<<<grid, kThreads, shared_bytes(group, a.kv.head_dim), a.stream>>>(a, group);
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln::cuda
