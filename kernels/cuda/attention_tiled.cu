// The tiled attention kernel of attention.h for many query rows per kv head (prefill): kRows rows of a
// kv head share each key tile staged in shared memory (f32, widened from the cache's dtype).
#include "kernels/cuda/attention_tiled.h"

#include <cuda_fp16.h>

#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/kv_store.cuh"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 128;

using Params = AttentionKernelParams;

// Query rows of a kv head per block, keys per tile: 16 x 32 keeps the tiles under 48 KB of shared memory
// up to head_dim 128; head_dim 256 takes 8 x 16.
constexpr int rows_for(int head_dim) { return head_dim > 128 ? 8 : 16; }
template <int kDMax> constexpr int kRowsOf = rows_for(kDMax);
template <int kDMax> constexpr int kKeysOf = kDMax > 128 ? 16 : 32;

size_t shared_bytes(int rows, int keys, int head_dim) {
  return sizeof(float) * (size_t(rows + 2 * keys) * size_t(head_dim + 1) + size_t(rows * keys) + 2 * size_t(rows));
}

// Block (tile of kRows query rows of kv head blockIdx.y, key split blockIdx.z). Row r of the kv head
// is token r / group, query head g * group + r % group. Scores live in the log2 domain (exp2).
// Thread mapping for scores: key j = tid % kKeys of rows tid / kKeys + i * (kThreads / kKeys); for the
// output: elements tid + a * kThreads of the flattened [kRows, head_dim] tile.
template <typename T, int kDMax>
__global__ void __launch_bounds__(kThreads) attention_tiled_kernel(Params p) {
  constexpr int kRows = kRowsOf<kDMax>, kKeys = kKeysOf<kDMax>;
  constexpr int kRowGroups = kThreads / kKeys, kScores = kRows / kRowGroups, kAcc = kRows * kDMax / kThreads;
  extern __shared__ float smem[];
  const int D = p.head_dim, ds = D + 1;  // +1: rows of a tile fall in different banks
  float* qs = smem;                      // [kRows][ds]
  float* ks = qs + kRows * ds;           // [kKeys][ds]
  float* vs = ks + kKeys * ds;           // [kKeys][ds]
  float* ps = vs + kKeys * ds;           // [kRows][kKeys] probabilities of the tile
  float* corr_s = ps + kRows * kKeys;    // [kRows] rescale of the running output
  float* l_s = corr_s + kRows;           // [kRows] final sums

  const int g = blockIdx.y, split = blockIdx.z, tid = threadIdx.x;
  const int group = p.n_heads / p.n_kv_heads;
  const int64_t n_rows = p.n_tokens * group, row0 = int64_t(blockIdx.x) * kRows;
  const int64_t first = *p.first_position, n_keys = first + p.n_tokens;

  for (int e = tid; e < kRows * D; e += kThreads) {
    const int r = e / D, d = e % D;
    const int64_t row = row0 + r;
    float v = 0.0f;
    if (row < n_rows) v = p.q[((row / group) * p.n_heads + g * group + row % group) * D + d];
    qs[r * ds + d] = v;
  }

  // The keys any row of this block can see, cut to this split's share.
  const int64_t last_row = min(row0 + kRows, n_rows) - 1;
  const int64_t p_lo = first + row0 / group, p_hi = first + last_row / group;
  int64_t lo = 0, hi = n_keys;
  if (p.causal) hi = p_hi + 1;
  if (p.window > 0) {
    lo = max(int64_t(0), p_lo - p.window + 1);
    if (!p.causal) hi = min(hi, p_hi + p.window);
  }
  const int64_t chunk = ((n_keys + p.n_splits - 1) / p.n_splits + kKeys - 1) / kKeys * kKeys;
  const int64_t begin = max(lo, split * chunk), end = min(hi, (split + 1) * chunk);

  const int j = tid % kKeys, rg = tid / kKeys;
  float m[kScores], l[kScores], slope[kScores];
  int64_t pos[kScores];
  bool valid[kScores];
#pragma unroll
  for (int i = 0; i < kScores; ++i) {
    const int64_t row = row0 + rg + i * kRowGroups;
    valid[i] = row < n_rows;
    pos[i] = first + row / group;
    slope[i] = p.alibi_slopes != nullptr && valid[i] ? p.alibi_slopes[g * group + row % group] * kLog2e : 0.0f;
    m[i] = -INFINITY;
    l[i] = 0.0f;
  }
  float acc[kAcc];
  int acc_r[kAcc], acc_d[kAcc];
#pragma unroll
  for (int a = 0; a < kAcc; ++a) {
    const int e = tid + a * kThreads;
    acc[a] = 0.0f;
    acc_r[a] = e / D;  // >= kRows: unused slot (head_dim < kDMax)
    acc_d[a] = e % D;
  }

  const float qk_scale = p.scale * kLog2e;
  const T* k_head = static_cast<const T*>(p.k_cache) + int64_t(g) * p.kv_stride * D;
  const T* v_head = static_cast<const T*>(p.v_cache) + int64_t(g) * p.kv_stride * D;
  for (int64_t j0 = begin; j0 < end; j0 += kKeys) {
    __syncthreads();  // the previous tile is consumed (and qs is written before the first)
    const int64_t n_in = min(int64_t(kKeys), end - j0);
#pragma unroll 1
    for (int e = tid; e < kKeys * D; e += kThreads) {
      const int jj = e / D, d = e % D;
      const bool in = jj < n_in;  // keys past `end` are zeros: never read unwritten cache rows
      ks[jj * ds + d] = in ? float(k_head[(j0 + jj) * D + d]) : 0.0f;
      vs[jj * ds + d] = in ? float(v_head[(j0 + jj) * D + d]) : 0.0f;
    }
    __syncthreads();
    const int64_t key = j0 + j;
#pragma unroll
    for (int i = 0; i < kScores; ++i) {
      const int r = rg + i * kRowGroups;
      float s = -INFINITY;
      const bool visible = valid[i] && key < end && (!p.causal || key <= pos[i]) &&
                           (p.window <= 0 || (key > pos[i] - p.window && (p.causal || key < pos[i] + p.window)));
      if (visible) {
        float dot = 0.0f;
        for (int d = 0; d < D; ++d) dot += qs[r * ds + d] * ks[j * ds + d];
        s = dot * qk_scale + slope[i] * float(key - pos[i]);
      }
      float tile_max = s;
#pragma unroll
      for (int off = kKeys / 2; off > 0; off >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
      const float m_new = fmaxf(m[i], tile_max);
      const float prob = s == -INFINITY ? 0.0f : exp2f(s - m_new);
      const float corr = m[i] == -INFINITY ? 0.0f : exp2f(m[i] - m_new);
      float sum = prob;
#pragma unroll
      for (int off = kKeys / 2; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      l[i] = l[i] * corr + sum;
      m[i] = m_new;
      ps[r * kKeys + j] = prob;
      if (j == 0) corr_s[r] = corr;
    }
    __syncthreads();
    // Rows of unused slots (acc_r >= kRows) read in-bounds shared memory and are never written out.
#pragma unroll
    for (int a = 0; a < kAcc; ++a) acc[a] *= corr_s[min(acc_r[a], kRows - 1)];
    for (int jj = 0; jj < kKeys; ++jj) {
      const float* v_row = vs + jj * ds;
#pragma unroll
      for (int a = 0; a < kAcc; ++a) acc[a] += ps[min(acc_r[a], kRows - 1) * kKeys + jj] * v_row[acc_d[a]];
    }
  }

  __syncthreads();
  const int64_t n_th = p.n_tokens * p.n_heads;
  // [n_splits, n_tokens, n_heads, 2] after the partial outputs
  float* ml = p.n_splits > 1 ? p.partial + int64_t(p.n_splits) * n_th * D : nullptr;
#pragma unroll
  for (int i = 0; i < kScores; ++i) {
    const int r = rg + i * kRowGroups;
    if (j != 0) continue;
    l_s[r] = l[i];
    const int64_t row = row0 + r;
    if (p.n_splits > 1 && valid[i]) {
      const int64_t th = (row / group) * p.n_heads + g * group + row % group;
      ml[(split * n_th + th) * 2] = m[i];
      ml[(split * n_th + th) * 2 + 1] = l[i];
    }
  }
  __syncthreads();
#pragma unroll
  for (int a = 0; a < kAcc; ++a) {
    const int64_t row = row0 + acc_r[a];
    if (acc_r[a] >= kRows || row >= n_rows) continue;
    const int64_t th = (row / group) * p.n_heads + g * group + row % group;
    if (p.n_splits == 1) {
      const float total = l_s[acc_r[a]];
      p.out[th * D + acc_d[a]] = total > 0.0f ? acc[a] / total : 0.0f;
    } else {
      p.partial[(split * n_th + th) * D + acc_d[a]] = acc[a];
    }
  }
}

template <typename T, int kDMax>
void launch_tiles(const Params& p, cudaStream_t stream) {
  constexpr int kRows = kRowsOf<kDMax>;
  const int64_t tiles = (p.n_tokens * (p.n_heads / p.n_kv_heads) + kRows - 1) / kRows;
  const dim3 grid(unsigned(tiles), unsigned(p.n_kv_heads), unsigned(p.n_splits));
  attention_tiled_kernel<T, kDMax><<<grid, kThreads, shared_bytes(kRows, kKeysOf<kDMax>, p.head_dim), stream>>>(p);
  KILN_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_for_dim(const Params& p, cudaStream_t stream) {
  if (p.head_dim <= 32) launch_tiles<T, 32>(p, stream);
  else if (p.head_dim <= 64) launch_tiles<T, 64>(p, stream);
  else if (p.head_dim <= 128) launch_tiles<T, 128>(p, stream);
  else launch_tiles<T, 256>(p, stream);
}

}  // namespace

int attention_tiled_rows(int head_dim) { return rows_for(head_dim); }

void attention_tiled(const AttentionArgs& a) {
  const Params p = kernel_params(a);
  with_kv_type(a.kv_dtype, [&](auto t) { launch_for_dim<decltype(t)>(p, a.stream); });
}

}  // namespace kiln::cuda
