#include "kernels/cuda/persistent_decode.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"
#include "kernels/cuda/activate.cuh"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/grid_barrier.cuh"
#include "kernels/cuda/kv_store.cuh"
#include "kernels/cuda/launch_pdl.cuh"
#include "kernels/cuda/rotary_device.cuh"

namespace kiln::cuda {
namespace {

// Warps a block: 16, or 12 when no stage deals more than 12 units to a block (block_warps): SmolLM2's
// step is ~3% faster with 12 (each warp has at most one unit a stage, and the attention folds fewer
// warps), TinyLlama's (gate/up: 43 units a block) ~7% faster with 16.
constexpr int kMaxWarps = 16;
constexpr int kFewWarps = 12;
constexpr int kAttentionUnroll = 4;  // passes of keys a warp loads before it waits

static_assert(sizeof(PersistentLayer) % sizeof(uint64_t) == 0, "the table of layers is copied in 8-byte words");

struct Params {
  PersistentDecodeArgs a;
  int warp_bytes;  // shared bytes of each warp's weight buffer
  int max_k;       // the widest matmul input
  int warps;       // a block's (block_warps)
};

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// This warp's place when a stage's work is dealt out: consecutive items go to consecutive blocks, so that
// a stage with less work than warps spreads it over the multiprocessors rather than filling the first ones.
__device__ __forceinline__ int warp_slot() { return int(threadIdx.x) / 32 * int(gridDim.x) + int(blockIdx.x); }
template <int kWarps>
__device__ __forceinline__ int warp_slots() { return int(gridDim.x) * kWarps; }

// Slot of input value i of a matmul of k inputs in shared memory: the first four of every eight in the
// lower half, the others in the upper half, so that lanes reading eight values each at consecutive
// offsets take two conflict-free float4 loads.
__device__ __forceinline__ int x_slot(int i, int k) { return ((i & 4) != 0 ? k / 2 : 0) + (i >> 3) * 4 + (i & 3); }

__device__ __forceinline__ void copy16_async(void* shared, const void* global) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(shared_address(shared)), "l"(global) : "memory");
}
__device__ __forceinline__ void copy4_async(void* shared, const void* global) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(shared_address(shared)), "l"(global) : "memory");
}

// Signed int8 byte i of `biased` (the word with 0x80 added to each byte) as a float: the byte under the
// exponent of 2^23 gives 2^23 + 128 + value exactly, one permute and one subtraction.
__device__ __forceinline__ float int8_at(uint32_t biased, int i) {
  return __int_as_float(int(__byte_perm(biased, 0x4B000000u, 0x7540u | unsigned(i)))) - 8388736.0f;
}

// The x values of one 16-byte chunk of weights (8 for f16, 16 for int8) from shared memory (x_slot order).
template <bool kInt8>
struct XChunk {
  float4 v[kInt8 ? 4 : 2];
  __device__ __forceinline__ XChunk(const float* xs, int k, int c) {
#pragma unroll
    for (int h = 0; h < (kInt8 ? 2 : 1); ++h) {
      const int eight = kInt8 ? 2 * c + h : c;  // the chunk's h-th group of eight values
      v[2 * h] = *reinterpret_cast<const float4*>(xs + eight * 4);
      v[2 * h + 1] = *reinterpret_cast<const float4*>(xs + k / 2 + eight * 4);
    }
  }
};

// Shared bytes of a weight row of k values in a warp's buffer (WeightRows).
__host__ __device__ int row_slot_bytes(int k, int group_size, bool int8) {
  if (!int8) return 2 * k;
  const int scale_words = (2 * (k / group_size) + 5) / 4;  // up to 2 bytes of skew, then the scales
  return k + (4 * scale_words + 15) / 16 * 16;
}

// A matmul's weight rows: f16, or int8 with an f16 scale for each group of group_size values (a multiple of
// 16, so a 16-byte chunk has one). In a warp's buffer a row takes its bytes, then (int8) the aligned
// 4-byte words that hold its scales, padded to 16 bytes.
template <bool kInt8>
struct WeightRows {
  const void* data;
  const uint16_t* scales;  // int8: [rows, k / group_size]
  int k, group_size;

  __device__ int row_bytes() const { return kInt8 ? k : 2 * k; }
  __device__ int groups() const { return k / group_size; }
  __device__ int slot_bytes() const { return row_slot_bytes(k, group_size, kInt8); }
  // Bytes before the row's first scale in its first word (the scales' array is 4-byte aligned).
  __device__ int scale_skew(int row) const { return (row * groups() * 2) & 3; }

  // Starts copying row `row` into `to`. The last word of a row's scales may reach 2 bytes past the array:
  // the forward pads every allocation to 256 bytes.
  __device__ void copy(int row, char* to, int lane) const {
    const char* from = static_cast<const char*>(data) + int64_t(row) * row_bytes();
    for (int c = lane; c < row_bytes() / 16; c += 32) copy16_async(to + c * 16, from + c * 16);
    if constexpr (kInt8) {
      const char* first = reinterpret_cast<const char*>(scales + int64_t(row) * groups()) - scale_skew(row);
      const int words = (scale_skew(row) + 2 * groups() + 3) / 4;
      for (int i = lane; i < words; i += 32) copy4_async(to + row_bytes() + 4 * i, first + 4 * i);
    }
  }

  // sum + the products of chunk c of a row (its copy at `slot`) with its x values.
  __device__ __forceinline__ float dot(const char* slot, int row, int c, const XChunk<kInt8>& x, float sum) const {
    const uint4 raw = *reinterpret_cast<const uint4*>(slot + c * 16);
    if constexpr (kInt8) {
      const uint32_t words[4] = {raw.x ^ 0x80808080u, raw.y ^ 0x80808080u, raw.z ^ 0x80808080u,
                                 raw.w ^ 0x80808080u};
      float part = 0.0f;
#pragma unroll
      for (int q = 0; q < 4; ++q) {  // word q holds values 4q .. 4q + 3, whose x values are x.v[q]
        part = fmaf(int8_at(words[q], 0), x.v[q].x, part);
        part = fmaf(int8_at(words[q], 1), x.v[q].y, part);
        part = fmaf(int8_at(words[q], 2), x.v[q].z, part);
        part = fmaf(int8_at(words[q], 3), x.v[q].w, part);
      }
      const __half* row_scales = reinterpret_cast<const __half*>(slot + row_bytes() + scale_skew(row));
      return fmaf(__half2float(row_scales[c * 16 / group_size]), part, sum);
    } else {
      const float2 w0 = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
      const float2 w1 = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
      const float2 w2 = __half22float2(*reinterpret_cast<const __half2*>(&raw.z));
      const float2 w3 = __half22float2(*reinterpret_cast<const __half2*>(&raw.w));
      sum = fmaf(w0.x, x.v[0].x, sum);
      sum = fmaf(w0.y, x.v[0].y, sum);
      sum = fmaf(w1.x, x.v[0].z, sum);
      sum = fmaf(w1.y, x.v[0].w, sum);
      sum = fmaf(w2.x, x.v[1].x, sum);
      sum = fmaf(w2.y, x.v[1].y, sum);
      sum = fmaf(w3.x, x.v[1].z, sum);
      return fmaf(w3.y, x.v[1].w, sum);
    }
  }
};

// A warp's share of a matmul stage: units first, first + stride, ... below n_units, each kRows weight rows
// (whose indices row_of(unit, r) gives), copied into the warp's shared buffer a group of `per_group` units
// at a time.
template <int kRows, bool kInt8, int kWarps, typename RowOf>
struct MatmulStage {
  WeightRows<kInt8> w;
  int n_units;
  RowOf row_of;

  __device__ int first() const { return warp_slot(); }
  __device__ int stride() const { return warp_slots<kWarps>(); }
  __device__ int count() const { return first() < n_units ? ceil_div(n_units - first(), stride()) : 0; }
  __device__ int per_group(int warp_bytes) const { return warp_bytes / (kRows * w.slot_bytes()); }

  // Starts the copies of group `group` (asynchronous: the warp waits for them in run()).
  __device__ void load(char* buffer, int warp_bytes, int group) const {
    const int lane = int(threadIdx.x) % 32, per = per_group(warp_bytes), n = count();
    for (int j = 0; j < per && group * per + j < n; ++j) {
      const int unit = first() + (group * per + j) * stride();
#pragma unroll
      for (int r = 0; r < kRows; ++r) w.copy(row_of(unit, r), buffer + (j * kRows + r) * w.slot_bytes(), lane);
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
  }

  // y = W · xs for every unit of the warp (xs: k inputs in x_slot order), then epilogue(unit, y) on lane 0.
  // Group 0 was loaded before (load(..., 0)) when `loaded`.
  template <typename Epilogue>
  __device__ void run(const float* xs, char* buffer, int warp_bytes, bool loaded, Epilogue epilogue) const {
    const int lane = int(threadIdx.x) % 32, chunks = w.row_bytes() / 16, per = per_group(warp_bytes), n = count();
    for (int group = 0; group * per < n; ++group) {
      if (group > 0 || !loaded) load(buffer, warp_bytes, group);
      asm volatile("cp.async.wait_all;" ::: "memory");
      __syncwarp();
      for (int j = 0; j < per && group * per + j < n; ++j) {
        const int unit = first() + (group * per + j) * stride();
        int rows[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) rows[r] = row_of(unit, r);
        // The rows of a unit share each x value read from shared memory (its bandwidth bounds this loop).
        float y[kRows] = {};
        for (int c = lane; c < chunks; c += 32) {
          const XChunk<kInt8> x(xs, w.k, c);
#pragma unroll
          for (int r = 0; r < kRows; ++r) y[r] = w.dot(buffer + (j * kRows + r) * w.slot_bytes(), rows[r], c, x, y[r]);
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) y[r] = warp_sum(y[r]);
        if (lane == 0) epilogue(unit, y);
      }
      __syncwarp();  // every lane has read the group before the next one overwrites it
    }
  }
};

template <int kRows, bool kInt8, int kWarps, typename RowOf>
__device__ MatmulStage<kRows, kInt8, kWarps, RowOf> matmul_stage(const PersistentMatrix& m, int k, int group_size,
                                                                 int n_units, RowOf row_of) {
  return {{m.data, m.scales, k, group_size}, n_units, row_of};
}

// The residual stream h = x + delta: the stream as the stage before last left it plus the last stage's
// output, added here so that a stage's epilogue never waits for a read of the stream. Block 0 writes h to
// h_out (never x: other blocks still read it).
struct ResidualIn {
  const float* x;
  const float* delta;  // or nullptr
  float* h_out;
};

// xs = h times the norm's weight; returns the RMS scale 1 / rms(h), which the matmul's epilogue applies
// (W (s h * w) = s W (h * w)), so that one __syncthreads serves both xs and the sum of squares: each warp
// adds the warps' partial sums itself.
template <int kWarps>
__device__ float stage_normed(const Params& p, const ResidualIn& in, const float* weight, float* xs, float* reduce) {
  const int dim = p.a.dim;
  float sum_sq = 0.0f;
  for (int i = threadIdx.x; i < dim; i += kWarps * 32) {
    float v = __ldcg(in.x + i);
    if (in.delta != nullptr) v += __ldcg(in.delta + i);
    if (blockIdx.x == 0) in.h_out[i] = v;
    xs[x_slot(i, dim)] = v * weight[i];
    sum_sq += v * v;
  }
  sum_sq = warp_sum(sum_sq);
  if (threadIdx.x % 32 == 0) reduce[threadIdx.x / 32] = sum_sq;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += reduce[w];
  return rsqrtf(total / float(dim) + p.a.eps);
}

// xs = v (n values from global memory, written by an earlier stage).
template <int kWarps>
__device__ void stage_plain(const float* v, int n, float* xs) {
  for (int i = threadIdx.x; i < n; i += kWarps * 32) xs[x_slot(i, n)] = __ldcg(v + i);
  __syncthreads();
}

// Attention of query head h (q: its head_dim values) over the keys [lo, hi) of the cache, by the whole
// block, into att [head_dim]:
// kL lanes share a key (16 bytes each), a warp takes 32 / kL keys a pass and the block kWarps times that;
// each lane group keeps a running max, sum and output (log2 domain), folded across the warp, then across
// the warps through shared memory (fold: kWarps * (head_dim + 2) floats).
template <typename T, int kHeadDim, int kWarps>
__device__ void attend_head(const Params& p, int layer, const float* q, int h, int lo, int hi, float* fold,
                            float* att) {
  constexpr int kW = 16 / int(sizeof(T)), kL = kHeadDim / kW, kKeysPerPass = 32 / kL;
  constexpr int kBlockKeys = kWarps * kKeysPerPass;  // keys of one pass of the block
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32, sub = lane / kL, c = lane % kL;
  const int g = h / (p.a.n_heads / p.a.n_kv_heads);
  const int64_t head_base = ((int64_t(layer) * p.a.n_kv_heads + g) * p.a.n_ctx) * kHeadDim + c * kW;
  const T* k = static_cast<const T*>(p.a.k_cache) + head_base;
  const T* v = static_cast<const T*>(p.a.v_cache) + head_base;
  float qf[kW];  // unscaled: the scale multiplies each dot product, so the first keys load while q does
#pragma unroll
  for (int e = 0; e < kW; ++e) qf[e] = __ldcg(q + c * kW + e);
  const float qk_scale = p.a.scale * kLog2e;
  float m = -INFINITY, l = 0.0f, acc[kW] = {};
  // The loop bound is the same for the whole warp (its shuffles need every lane); a lane's own key is j0 + sub.
  for (int j0 = lo + warp * kKeysPerPass; j0 < hi; j0 += kBlockKeys * kAttentionUnroll) {
    KvChunk<T, kW> kr[kAttentionUnroll], vr[kAttentionUnroll];  // read with __ldcg: written in this kernel
#pragma unroll
    for (int u = 0; u < kAttentionUnroll; ++u) {
      const int key = j0 + u * kBlockKeys + sub;
      if (key < hi) {
        kr[u].raw = __ldcg(reinterpret_cast<const uint4*>(k + int64_t(key) * kHeadDim));
        vr[u].raw = __ldcg(reinterpret_cast<const uint4*>(v + int64_t(key) * kHeadDim));
      } else {
        kr[u].clear();
        vr[u].clear();
      }
    }
    float score[kAttentionUnroll];
    float m_new = m;
#pragma unroll
    for (int u = 0; u < kAttentionUnroll; ++u) {
      float kf[kW];
      kr[u].widen(kf);
      float dot = 0.0f;
#pragma unroll
      for (int e = 0; e < kW; ++e) dot = fmaf(qf[e], kf[e], dot);
#pragma unroll
      for (int off = kL / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
      score[u] = j0 + u * kBlockKeys + sub < hi ? dot * qk_scale : -INFINITY;
      m_new = fmaxf(m_new, score[u]);
    }
    if (m_new != m) {  // the running max moved (to a finite score)
      const float corr = m == -INFINITY ? 0.0f : exp2f(m - m_new);
      l *= corr;
#pragma unroll
      for (int e = 0; e < kW; ++e) acc[e] *= corr;
      m = m_new;
    }
#pragma unroll
    for (int u = 0; u < kAttentionUnroll; ++u) {
      const float weight = score[u] == -INFINITY ? 0.0f : exp2f(score[u] - m);
      float vf[kW];
      vr[u].widen(vf);
      l += weight;
#pragma unroll
      for (int e = 0; e < kW; ++e) acc[e] = fmaf(weight, vf[e], acc[e]);
    }
  }
  // Fold the warp's key groups: lanes with the same chunk c in other groups are kL, 2 kL, ... lanes away.
#pragma unroll
  for (int off = kL; off < 32; off <<= 1) {
    const float m_other = __shfl_xor_sync(0xffffffffu, m, off), l_other = __shfl_xor_sync(0xffffffffu, l, off);
    const float big = fmaxf(m, m_other);
    const float mine = m == -INFINITY ? 0.0f : exp2f(m - big);
    const float theirs = m_other == -INFINITY ? 0.0f : exp2f(m_other - big);
    l = l * mine + l_other * theirs;
#pragma unroll
    for (int e = 0; e < kW; ++e) acc[e] = acc[e] * mine + __shfl_xor_sync(0xffffffffu, acc[e], off) * theirs;
    m = big;
  }
  float* slot = fold + warp * (kHeadDim + 2);
  if (sub == 0) {
#pragma unroll
    for (int e = 0; e < kW; ++e) slot[c * kW + e] = acc[e];
    if (c == 0) {
      slot[kHeadDim] = m;
      slot[kHeadDim + 1] = l;
    }
  }
  __syncthreads();
  if (warp == 0) {  // each warp's weight 2^(m - max) / sum, in place of its max
    const float m_w = lane < kWarps ? fold[lane * (kHeadDim + 2) + kHeadDim] : -INFINITY;
    const float big = warp_max(m_w), weight = m_w == -INFINITY ? 0.0f : exp2f(m_w - big);
    const float sum = warp_sum(lane < kWarps ? weight * fold[lane * (kHeadDim + 2) + kHeadDim + 1] : 0.0f);
    if (lane < kWarps) fold[lane * (kHeadDim + 2) + kHeadDim] = weight / sum;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < kHeadDim; d += kWarps * 32) {
    float out = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float* theirs = fold + w * (kHeadDim + 2);
      out = fmaf(theirs[kHeadDim], theirs[d], out);
    }
    att[d] = out;
  }
  __syncthreads();  // fold is free for the next head
}

// Every query head's attention into att [n_heads, head_dim], a head a block.
template <typename T, int kHeadDim, int kWarps>
__device__ void attention_stage(const Params& p, int layer, int position, const float* q, float* fold, float* att) {
  const int lo = p.a.window > 0 ? int(max(int64_t(0), int64_t(position) - p.a.window + 1)) : 0;
  for (int h = blockIdx.x; h < p.a.n_heads; h += gridDim.x)
    attend_head<T, kHeadDim, kWarps>(p, layer, q + h * kHeadDim, h, lo, position + 1, fold, att + h * kHeadDim);
}

// The QKV matmul's units: pairs of rows. A query or key head's rotated pairs (i, i + rotary_dim/2) or
// (2i, 2i + 1) come first, then its other rows two by two; a value head's rows two by two.
struct QkvRows {
  int head_dim, rotated_heads, half, mode;  // half: rotary_dim / 2 (0: no rotary)
  __device__ int operator()(int unit, int r) const {
    const int slot = unit / (head_dim / 2), j = unit % (head_dim / 2), base = slot * head_dim;
    if (slot < rotated_heads && j < half) {
      if (mode == int(RotaryMode::RotateHalf)) return base + j + r * half;
      return base + 2 * j + r;
    }
    const int first = slot < rotated_heads ? 2 * half : 0, jj = slot < rotated_heads ? j - half : j;
    return base + first + 2 * jj + r;
  }
};

// Shared floats a block needs besides the warps' weight buffers, 16-byte aligned: the matmul input, the
// rotary angles, a reduction's, the attention's fold, then the table of layers.
__host__ __device__ int table_offset_floats(int max_k, int rotary_dim, int head_dim) {
  return (max_k + rotary_dim + 32 + kMaxWarps * (head_dim + 2) + 3) / 4 * 4;
}
__host__ __device__ int fixed_floats(int max_k, int rotary_dim, int head_dim, int n_layers) {
  const int table_floats = (n_layers * int(sizeof(PersistentLayer) / sizeof(float)) + 3) / 4 * 4;
  return table_offset_floats(max_k, rotary_dim, head_dim) + table_floats;
}

template <typename T>
__device__ void store_kv(void* cache, int64_t i, float v) {
  if constexpr (sizeof(T) == 2) static_cast<__half*>(cache)[i] = __float2half_rn(v);
  else static_cast<float*>(cache)[i] = v;
}

template <typename T, int kHeadDim, bool kInt8, int kWarps>
__global__ void __launch_bounds__(kWarps * 32, 1) persistent_decode_kernel(Params p) {
  extern __shared__ __align__(16) float smem[];
  const PersistentDecodeArgs& a = p.a;
  float* xs = smem;                              // [max_k]
  float* cs = xs + p.max_k;                      // [rotary_dim]: cos, then sin, of every pair
  float* reduce = cs + a.rotary_dim;             // [32]
  float* fold = reduce + 32;                     // [kMaxWarps, head_dim + 2]: kWarps used
  // The table of layers, copied once: read from global memory, every field would cost a round trip in the
  // stage that first needs it.
  PersistentLayer* layers =
      reinterpret_cast<PersistentLayer*>(smem + table_offset_floats(p.max_k, a.rotary_dim, kHeadDim));
  char* buffers = reinterpret_cast<char*>(smem + fixed_floats(p.max_k, a.rotary_dim, kHeadDim, a.n_layers));
  char* buffer = buffers + size_t(threadIdx.x / 32) * p.warp_bytes;  // this warp's
  GridBarrier barrier{reinterpret_cast<unsigned*>(a.scratch), reinterpret_cast<unsigned*>(a.scratch) + 1};
  // The stages' outputs: the rotated queries, the attention's, the activation's; the residual stream after
  // the attention (a.x holds it at the start and end of a layer); the output projection's and the down
  // projection's, which the next norm adds to the stream.
  float* q = a.scratch + 32;  // [n_heads, head_dim]
  float* att = q + a.n_heads * kHeadDim;
  float* act = att + a.n_heads * kHeadDim;  // [ffn]
  float* h = act + a.ffn;
  float* attn_proj = h + a.dim;
  float* ffn_out = attn_proj + a.dim;

  const int H = a.n_heads, KV = a.n_kv_heads, D = kHeadDim, dim = a.dim, q_dim = H * D, ffn = a.ffn;
  const int qkv_units = (H + 2 * KV) * D / 2;
  const QkvRows qkv_rows{D, a.mode == RotaryMode::None ? 0 : H + KV, a.mode == RotaryMode::None ? 0 : a.rotary_dim / 2,
                         int(a.mode)};
  const auto one_row = [](int unit, int) { return unit; };
  const auto gate_up_rows = [ffn](int unit, int r) { return unit + r * ffn; };
  const int gs = a.group_size;
  const auto qkv = [&](int l) { return matmul_stage<2, kInt8, kWarps>(layers[l].qkv, dim, gs, qkv_units, qkv_rows); };
  const auto out = [&](int l) { return matmul_stage<1, kInt8, kWarps>(layers[l].out, q_dim, gs, dim, one_row); };
  const auto up = [&](int l) { return matmul_stage<2, kInt8, kWarps>(layers[l].up, dim, gs, ffn, gate_up_rows); };
  const auto down = [&](int l) { return matmul_stage<1, kInt8, kWarps>(layers[l].down, ffn, gs, dim, one_row); };

  // The barrier before a stage, with the next weights' copies started once this block has arrived: issued
  // before the arrival, they would queue ahead of it and delay every block.
  const auto cross = [&](auto&& prefetch) {
    barrier.arrive();
    prefetch();
    barrier.wait();
  };
  constexpr int kLayerWords = int(sizeof(PersistentLayer) / sizeof(uint64_t));
  for (int i = threadIdx.x; i < a.n_layers * kLayerWords; i += kWarps * 32)
    reinterpret_cast<uint64_t*>(layers)[i] = reinterpret_cast<const uint64_t*>(a.layers)[i];
  __syncthreads();

  qkv(0).load(buffer, p.warp_bytes, 0);  // weights are not written by the kernel before: load them early
  pdl_wait();                            // x and the position are written
  const int position = *a.position;
  if (a.mode != RotaryMode::None) {
    const RotaryShape shape{H, KV, D, a.rotary_dim, double(a.theta), double(a.position_scale)};
    rotary_angles<RotaryMode::RotateHalf>(position, shape, cs);  // the angles are those of either mode
  }

  for (int layer = 0; layer < a.n_layers; ++layer) {
    const PersistentLayer& w = layers[layer];
    const int64_t cache_layer = int64_t(layer) * KV * a.n_ctx * D;
    // norm + QKV, rotated, the keys and values into the cache
    const float attn_scale = stage_normed<kWarps>(p, {a.x, layer > 0 ? ffn_out : nullptr, h}, w.attn_norm, xs, reduce);
    qkv(layer).run(xs, buffer, p.warp_bytes, true, [&](int unit, const float (&y)[2]) {
      const int r0 = qkv_rows(unit, 0), r1 = qkv_rows(unit, 1);
      float y0 = y[0] * attn_scale + (w.qkv_bias != nullptr ? w.qkv_bias[r0] : 0.0f);
      float y1 = y[1] * attn_scale + (w.qkv_bias != nullptr ? w.qkv_bias[r1] : 0.0f);
      const int slot = r0 / D, d0 = r0 - slot * D, d1 = r1 - slot * D;
      const int pair = unit % (D / 2);
      if (slot < qkv_rows.rotated_heads && pair < qkv_rows.half) {
        const float c = cs[pair], s = cs[qkv_rows.half + pair], y0r = y0 * c - y1 * s;
        y1 = y1 * c + y0 * s;
        y0 = y0r;
      }
      if (slot < H) {
        q[r0] = y0;
        q[r1] = y1;
      } else {
        const bool key = slot < H + KV;
        const int g = key ? slot - H : slot - H - KV;
        const int64_t at = cache_layer + (int64_t(g) * a.n_ctx + position) * D;
        store_kv<T>(key ? a.k_cache : a.v_cache, at + d0, y0);
        store_kv<T>(key ? a.k_cache : a.v_cache, at + d1, y1);
      }
    });
    cross([&] { out(layer).load(buffer, p.warp_bytes, 0); });

    attention_stage<T, kHeadDim, kWarps>(p, layer, position, q, fold, att);
    barrier.sync();

    // output projection (the next norm adds it to the stream)
    stage_plain<kWarps>(att, q_dim, xs);
    out(layer).run(xs, buffer, p.warp_bytes, true, [&](int unit, const float (&y)[1]) { attn_proj[unit] = y[0]; });
    cross([&] { up(layer).load(buffer, p.warp_bytes, 0); });

    // norm + gate/up + activation
    const float ffn_scale = stage_normed<kWarps>(p, {h, attn_proj, a.x}, w.ffn_norm, xs, reduce);
    up(layer).run(xs, buffer, p.warp_bytes, true, [&](int unit, const float (&y)[2]) {
      act[unit] = activate(a.act, y[0] * ffn_scale) * (y[1] * ffn_scale);
    });
    cross([&] { down(layer).load(buffer, p.warp_bytes, 0); });

    // down projection + residual
    stage_plain<kWarps>(act, ffn, xs);
    const bool last = layer + 1 == a.n_layers;  // the stream itself takes the last layer's output
    down(layer).run(xs, buffer, p.warp_bytes, true, [&](int unit, const float (&y)[1]) {
      if (last) a.x[unit] = __ldcg(a.x + unit) + y[0];
      else ffn_out[unit] = y[0];
    });
    if (!last) cross([&] { qkv(layer + 1).load(buffer, p.warp_bytes, 0); });
  }
  barrier.leave();
}

int max_shared_bytes() {
  int device = 0, bytes = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&device));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

// A warp's buffer: what the block has left after the fixed part, in 16-byte steps.
int warp_buffer_bytes(int max_k, int rotary_dim, int head_dim, int n_layers, int warps) {
  const int left = max_shared_bytes() - fixed_floats(max_k, rotary_dim, head_dim, n_layers) * int(sizeof(float));
  return left / warps / 16 * 16;
}

// The warps of a block (see kMaxWarps): the most units a stage deals to a block (QKV: pairs of rows,
// gate/up: a gate and an up row, the projections: a row).
int block_warps(int dim, int n_heads, int n_kv_heads, int head_dim, int ffn) {
  const int most = std::max({(n_heads + 2 * n_kv_heads) * head_dim / 2, dim, ffn});
  return (most + multiprocessor_count() - 1) / multiprocessor_count() <= kFewWarps ? kFewWarps : kMaxWarps;
}

// The largest unit a warp's buffer must hold: two rows of dim (QKV, gate/up), a row of q_dim or ffn.
int largest_unit_bytes(int dim, int q_dim, int ffn, int group_size, bool int8) {
  return std::max({2 * row_slot_bytes(dim, group_size, int8), row_slot_bytes(q_dim, group_size, int8),
                   row_slot_bytes(ffn, group_size, int8)});
}

template <typename T, int kHeadDim, int kWarps>
void launch(const Params& p, size_t shared_bytes) {
  const auto kernel = p.a.int8 ? persistent_decode_kernel<T, kHeadDim, true, kWarps>
                               : persistent_decode_kernel<T, kHeadDim, false, kWarps>;
  KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared_bytes)));
  int per_multiprocessor = 0;
  KILN_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_multiprocessor, kernel, kWarps * 32, shared_bytes));
  KILN_CHECK(per_multiprocessor >= 1, "cuda persistent_decode: a block of {} shared bytes does not fit", shared_bytes);
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(multiprocessor_count()));
  config.blockDim = dim3(kWarps * 32);
  config.dynamicSmemBytes = shared_bytes;
  config.stream = p.a.stream;
  cudaLaunchAttribute attributes[2];
  attributes[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[0].val.programmaticStreamSerializationAllowed = programmatic_launch_enabled() ? 1 : 0;
  attributes[1].id = cudaLaunchAttributeCooperative;  // every block resident at once, or the launch fails
  attributes[1].val.cooperative = 1;
  config.attrs = attributes;
  config.numAttrs = 2;
  KILN_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, p));
}

template <typename T, int kHeadDim>
void launch_warps(const Params& p, size_t shared_bytes) {
  if (p.warps == kFewWarps) launch<T, kHeadDim, kFewWarps>(p, shared_bytes);
  else launch<T, kHeadDim, kMaxWarps>(p, shared_bytes);
}

template <typename T>
void launch_head_dim(const Params& p, size_t shared_bytes) {
  switch (p.a.head_dim) {
    case 16: launch_warps<T, 16>(p, shared_bytes); break;
    case 32: launch_warps<T, 32>(p, shared_bytes); break;
    case 64: launch_warps<T, 64>(p, shared_bytes); break;
    case 128: launch_warps<T, 128>(p, shared_bytes); break;
    default:
      if constexpr (sizeof(T) == 2) launch_warps<T, 256>(p, shared_bytes);  // an f32 key of 256 is 64 lanes of 16 bytes
      break;
  }
}

}  // namespace

bool persistent_decode_supported(int n_layers, int dim, int n_heads, int n_kv_heads, int head_dim, int ffn,
                                 KvDType kv_dtype, bool int8, int group_size) {
  const bool head_dim_ok = head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128 ||
                           (head_dim == 256 && kv_dtype == KvDType::F16);
  if (!head_dim_ok || (kv_dtype != KvDType::F16 && kv_dtype != KvDType::F32)) return false;
  if (n_layers <= 0 || dim <= 0 || ffn <= 0 || n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads != 0)
    return false;
  const int q_dim = n_heads * head_dim;
  if (dim % 8 != 0 || ffn % 8 != 0 || q_dim % 8 != 0) return false;
  // int8: a 16-byte chunk of a row has one scale
  if (int8 && (group_size < 16 || group_size % 16 != 0 || dim % group_size != 0 || q_dim % group_size != 0 ||
               ffn % group_size != 0))
    return false;
  const int max_k = std::max({dim, q_dim, ffn});
  const int warps = block_warps(dim, n_heads, n_kv_heads, head_dim, ffn);
  return warp_buffer_bytes(max_k, head_dim, head_dim, n_layers, warps) >=
         largest_unit_bytes(dim, q_dim, ffn, group_size, int8);
}

size_t persistent_decode_scratch_floats(int dim, int q_dim, int ffn) {
  return 32 + 2 * size_t(q_dim) + size_t(ffn) + 3 * size_t(dim);
}

void persistent_decode(const PersistentDecodeArgs& a) {
  KILN_CHECK(a.layers != nullptr && a.n_layers >= 1 && a.x != nullptr && a.scratch != nullptr &&
                 a.position != nullptr && a.k_cache != nullptr && a.v_cache != nullptr,
             "cuda persistent_decode: null input, output or scratch");
  KILN_CHECK(persistent_decode_supported(a.n_layers, a.dim, a.n_heads, a.n_kv_heads, a.head_dim, a.ffn, a.kv_dtype,
                                         a.int8, a.group_size),
             "cuda persistent_decode: dim {}, {} heads ({} kv) of {}, ffn {}, {} weights (groups of {}) and a {} cache "
             "are not supported",
             a.dim, a.n_heads, a.n_kv_heads, a.head_dim, a.ffn, a.int8 ? "int8" : "f16", a.group_size,
             kv_dtype_name(a.kv_dtype));
  KILN_CHECK(a.mode == RotaryMode::None || (a.rotary_dim > 0 && a.rotary_dim % 2 == 0 && a.rotary_dim <= a.head_dim),
             "cuda persistent_decode: rotary_dim {} for head_dim {}", a.rotary_dim, a.head_dim);
  KILN_CHECK(a.n_ctx >= 1 && a.window >= 0 && a.eps >= 0, "cuda persistent_decode: context {}, window {}", a.n_ctx,
             a.window);
  Params p{a, 0, std::max({a.dim, a.n_heads * a.head_dim, a.ffn}),
           block_warps(a.dim, a.n_heads, a.n_kv_heads, a.head_dim, a.ffn)};
  if (a.mode == RotaryMode::None) p.a.rotary_dim = 0;
  p.warp_bytes = warp_buffer_bytes(p.max_k, p.a.rotary_dim, a.head_dim, a.n_layers, p.warps);
  const size_t shared = size_t(fixed_floats(p.max_k, p.a.rotary_dim, a.head_dim, a.n_layers)) * sizeof(float) +
                        size_t(p.warps) * size_t(p.warp_bytes);
  if (a.kv_dtype == KvDType::F16) launch_head_dim<__half>(p, shared);
  else launch_head_dim<float>(p, shared);
}

}  // namespace kiln::cuda
