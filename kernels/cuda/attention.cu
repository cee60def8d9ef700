#include "kernels/cuda/attention.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"
#include "kernels/cuda/cuda_util.h"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;
constexpr int64_t kMinKeysPerSplit = 256;

struct Params {
  const float* q;
  const float* k_cache;
  const float* v_cache;
  float* out;
  float* partial;
  const int32_t* first_position;
  const float* alibi_slopes;
  int64_t n_tokens, kv_stride, window;
  int n_heads, n_kv_heads, head_dim, n_splits;
  float scale;
  bool causal;
};

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
template <int kDMax>
__global__ void __launch_bounds__(kThreads) attention_kernel(Params p) {
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
  const float* k_head = p.k_cache + int64_t(g) * p.kv_stride * D;
  const float* v_head = p.v_cache + int64_t(g) * p.kv_stride * D;
  for (int64_t j0 = begin; j0 < end; j0 += kKeys) {
    __syncthreads();  // the previous tile is consumed (and qs is written before the first)
    const int64_t n_in = min(int64_t(kKeys), end - j0);
    for (int e = tid; e < kKeys * D; e += kThreads) {
      const int jj = e / D, d = e % D;
      const bool in = jj < n_in;  // keys past `end` are zeros: never read unwritten cache rows
      ks[jj * ds + d] = in ? k_head[(j0 + jj) * D + d] : 0.0f;
      vs[jj * ds + d] = in ? v_head[(j0 + jj) * D + d] : 0.0f;
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

// One block per (token, head): out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s.
__global__ void attention_merge_kernel(const float* __restrict__ partial, float* __restrict__ out, int n_splits,
                                       int64_t n_th, int head_dim) {
  const int64_t th = blockIdx.x;
  const float* ml = partial + int64_t(n_splits) * n_th * head_dim;
  float max_m = -INFINITY;
  for (int s = 0; s < n_splits; ++s) max_m = fmaxf(max_m, ml[(s * n_th + th) * 2]);
  float total = 0.0f;
  for (int s = 0; s < n_splits; ++s) {
    const float m = ml[(s * n_th + th) * 2];
    if (m != -INFINITY) total += ml[(s * n_th + th) * 2 + 1] * exp2f(m - max_m);
  }
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.0f;
    for (int s = 0; s < n_splits; ++s) {
      const float m = ml[(s * n_th + th) * 2];
      if (m != -INFINITY) o += partial[(s * n_th + th) * head_dim + d] * exp2f(m - max_m);
    }
    out[th * head_dim + d] = total > 0.0f ? o / total : 0.0f;
  }
}

template <int kDMax>
void launch_tiles(const Params& p, cudaStream_t stream) {
  constexpr int kRows = kRowsOf<kDMax>;
  const int64_t tiles = (p.n_tokens * (p.n_heads / p.n_kv_heads) + kRows - 1) / kRows;
  const dim3 grid(unsigned(tiles), unsigned(p.n_kv_heads), unsigned(p.n_splits));
  attention_kernel<kDMax><<<grid, kThreads, shared_bytes(kRows, kKeysOf<kDMax>, p.head_dim), stream>>>(p);
  KILN_CUDA_CHECK_LAUNCH();
}

void attention_launch(const AttentionArgs& a) {
  const Params p{a.q,        a.k_cache,   a.v_cache,  a.out,     a.partial,    a.first_position, a.alibi_slopes,
                 a.n_tokens, a.kv_stride, a.window,   a.n_heads, a.n_kv_heads, a.head_dim,       a.n_splits,
                 a.scale,    a.causal};
  if (a.head_dim <= 32) launch_tiles<32>(p, a.stream);
  else if (a.head_dim <= 64) launch_tiles<64>(p, a.stream);
  else if (a.head_dim <= 128) launch_tiles<128>(p, a.stream);
  else launch_tiles<256>(p, a.stream);
  if (a.n_splits > 1) {
    const int64_t n_th = a.n_tokens * a.n_heads;
    attention_merge_kernel<<<unsigned(n_th), 64, 0, a.stream>>>(a.partial, a.out, a.n_splits, n_th, a.head_dim);
    KILN_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

int attention_splits(int64_t n_tokens, int n_heads, int n_kv_heads, int head_dim, int64_t max_keys,
                     int n_multiprocessors) {
  KILN_CHECK(n_tokens >= 1 && n_heads >= 1 && n_kv_heads >= 1 && n_heads % n_kv_heads == 0 && head_dim >= 1,
             "attention_splits: bad shape: {} tokens, {} heads, {} kv heads, head_dim {}", n_tokens, n_heads,
             n_kv_heads, head_dim);
  const int rows = rows_for(head_dim);
  const int64_t blocks = (n_tokens * (n_heads / n_kv_heads) + rows - 1) / rows * n_kv_heads;
  int64_t splits = (2 * int64_t(n_multiprocessors) + blocks - 1) / blocks;
  splits = std::min<int64_t>({splits, kAttentionMaxSplits, (max_keys + kMinKeysPerSplit - 1) / kMinKeysPerSplit});
  return int(std::max<int64_t>(splits, 1));
}

size_t attention_partial_floats(int n_splits, int64_t n_tokens, int n_heads, int head_dim) {
  if (n_splits <= 1) return 0;
  return size_t(n_splits) * size_t(n_tokens) * size_t(n_heads) * size_t(head_dim + 2);
}

void attention(const AttentionArgs& a) {
  KILN_CHECK(a.n_tokens >= 0 && a.n_heads >= 1 && a.n_kv_heads >= 1 && a.n_heads % a.n_kv_heads == 0,
             "cuda attention: {} query heads do not split into {} kv heads", a.n_heads, a.n_kv_heads);
  KILN_CHECK(a.head_dim >= 1 && a.head_dim <= kAttentionMaxHeadDim, "cuda attention: head_dim {} is outside [1, {}]",
             a.head_dim, kAttentionMaxHeadDim);
  KILN_CHECK(a.n_splits >= 1 && a.n_splits <= 65535, "cuda attention: {} splits", a.n_splits);
  KILN_CHECK(a.n_kv_heads <= 65535 && a.n_tokens * a.n_heads < (int64_t(1) << 31),
             "cuda attention: {} tokens x {} heads is too large", a.n_tokens, a.n_heads);
  KILN_CHECK(a.scale > 0 && std::isfinite(a.scale), "cuda attention: scale {} must be positive", a.scale);
  if (a.n_tokens == 0) return;
  KILN_CHECK(a.q != nullptr && a.k_cache != nullptr && a.v_cache != nullptr && a.out != nullptr &&
                 a.first_position != nullptr && a.kv_stride >= a.n_tokens,
             "cuda attention: null input, output or position, or a cache of {} positions for {} tokens", a.kv_stride,
             a.n_tokens);
  KILN_CHECK(a.n_splits == 1 || a.partial != nullptr, "cuda attention: {} splits need a partial buffer", a.n_splits);
  attention_launch(a);
}

}  // namespace kiln::cuda
