// The persistent decode step's kernel (kernels/cuda/persistent_decode.h), shared by its two ways of
// bringing the weights into shared memory (the "feeds"): whole units of rows into each warp's buffer
// (persistent_buffered.cu, small models) or row segments streamed through a ring of stages a warp
// (persistent_streamed.cu, models whose rows do not fit). The stages between the matmuls, the attention
// and the grid barriers are the same for both.
#pragma once

#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "engine/error.h"
#include "kernels/cuda/activate.cuh"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/grid_barrier.cuh"
#include "kernels/cuda/kv_store.cuh"
#include "kernels/cuda/launch_pdl.cuh"
#include "kernels/cuda/persistent_decode.h"
#include "kernels/cuda/rotary_device.cuh"

namespace kiln::cuda::persistent_detail {

// Warps a block with the buffered feed: 16, or 12 when no stage deals more than 12 units to a block
// (block_warps): SmolLM2's step is ~3% faster with 12 (each warp has at most one unit a stage, and the
// attention folds fewer warps), TinyLlama's (gate/up: 43 units a block) ~7% faster with 16. The streamed
// feed runs 16 warps, or 8 for f16 weights (persistent_streamed.cu).
constexpr int kMaxWarps = 16;
constexpr int kFewWarps = 12;
// Passes of keys a warp loads before it waits: a block of 8 warps loads 8, so that it keeps as many keys in
// flight as one of 16 (with 4 it read a cache of ~1,000 keys at about half the rate).
__host__ __device__ constexpr int attention_unroll(int warps) { return warps <= 8 ? 8 : 4; }

static_assert(sizeof(PersistentLayer) % sizeof(uint64_t) == 0, "the table of layers is copied in 8-byte words");

struct Params {
  PersistentDecodeArgs a;
  int warp_bytes;  // buffered: shared bytes of each warp's weight buffer
  int max_k;       // the widest matmul input
  int n_stages;    // streamed: stages of each warp's ring
};

// Slot of input value i of a matmul of k inputs in shared memory: the first four of every eight in the
// lower half, the others in the upper half, so that lanes reading eight values each at consecutive
// offsets take two conflict-free float4 loads.
__device__ __forceinline__ int x_slot(int i, int k) { return ((i & 4) != 0 ? k / 2 : 0) + (i >> 3) * 4 + (i & 3); }

// With int8 weights the matmul input is staged quantized instead (QuantizedX): its products are four int8
// values an instruction (dp4a). Multiplied in f32, a value took a byte permute, a subtraction and an FMA,
// and the 7B int8 step was bound by its instructions (56% of the copy rate against 80% for f16).
//
// x quantized to int8 by chunks of 16 values: the values' bytes (k), then an f32 scale a chunk (the chunk's
// largest magnitude / 127), in the shared memory of xs. Four consecutive lanes quantize a chunk, a float4
// each: a thread a chunk made SmolLM2's step 10% slower (its staging waited on one thread's 16 values).
struct QuantizedX {
  uint32_t* words;
  float* scales;
  __device__ QuantizedX(float* xs, int k) : words(reinterpret_cast<uint32_t*>(xs)), scales(scales_of(xs, k)) {}

  template <typename F>
  __device__ static F* scales_of(F* xs, int k) {
    using Bytes = std::conditional_t<std::is_const_v<F>, const char, char>;
    return reinterpret_cast<F*>(reinterpret_cast<Bytes*>(xs) + k);
  }

  // Values 4 q .. 4 q + 3; every lane of the warp calls it (the lanes of a chunk share its largest
  // magnitude), those past the end with store false.
  __device__ void store_quad(int q, const float4& v, bool store) const {
    float most = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
    most = fmaxf(most, __shfl_xor_sync(0xffffffffu, most, 1));
    most = fmaxf(most, __shfl_xor_sync(0xffffffffu, most, 2));
    const float to_int = most > 0.0f ? 127.0f / most : 0.0f;
    const auto byte = [&](float value, int shift) {
      return (uint32_t(__float2int_rn(value * to_int)) & 0xFFu) << shift;
    };
    if (!store) return;
    words[q] = byte(v.x, 0) | byte(v.y, 8) | byte(v.z, 16) | byte(v.w, 24);
    if (q % 4 == 0) scales[q / 4] = most / 127.0f;
  }
};

// Stages n values into xs: fetch(q) gives values 4 q .. 4 q + 3, kBatch of them a thread in flight at once
// (a loop that used each value as it came would wait an L2 round trip, ~0.5 us with the weights streaming,
// a trip). As f32 in x_slot order (four consecutive values keep four consecutive slots), or for int8
// weights quantized (QuantizedX), which is why the loop's bounds are the warp's: its lanes shuffle together.
template <int kWarps, bool kInt8, typename Fetch>
__device__ void stage_values(int n, float* xs, Fetch fetch) {
  constexpr int kThreads = kWarps * 32, kBatch = 4;
  const QuantizedX quantized(xs, n);
  const int quads = n / 4, lane = int(threadIdx.x) % 32;
  for (int warp_base = int(threadIdx.x) - lane; warp_base < quads; warp_base += kBatch * kThreads) {
    float4 v[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int q = warp_base + b * kThreads + lane;
      v[b] = q < quads ? fetch(q) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int warp_quad = warp_base + b * kThreads, q = warp_quad + lane;  // the warp's first, the lane's
      if (warp_quad >= quads) continue;
      if constexpr (kInt8) quantized.store_quad(q, v[b], q < quads);
      else if (q < quads) *reinterpret_cast<float4*>(xs + x_slot(4 * q, n)) = v[b];
    }
  }
}

// The x values of one 16-byte chunk of weights from shared memory: 8 for f16 (x_slot order), 16 for int8
// (QuantizedX) with their scale.
template <bool kInt8>
struct XChunk;
template <>
struct XChunk<false> {
  float4 v[2];
  __device__ __forceinline__ XChunk(const float* xs, int k, int c)
      : v{*reinterpret_cast<const float4*>(xs + c * 4), *reinterpret_cast<const float4*>(xs + k / 2 + c * 4)} {}
};
template <>
struct XChunk<true> {
  uint4 q;
  float scale;
  __device__ __forceinline__ XChunk(const float* xs, int k, int c)
      : q(reinterpret_cast<const uint4*>(xs)[c]), scale(QuantizedX::scales_of(xs, k)[c]) {}
};

// sum + the products of a 16-byte chunk of weights with its x values; int8 weights are multiplied by
// their group's scale.
template <bool kInt8>
__device__ __forceinline__ float chunk_dot(const uint4& raw, const XChunk<kInt8>& x, float scale, float sum) {
  if constexpr (kInt8) {
    int dot = __dp4a(int(raw.x), int(x.q.x), 0);
    dot = __dp4a(int(raw.y), int(x.q.y), dot);
    dot = __dp4a(int(raw.z), int(x.q.z), dot);
    dot = __dp4a(int(raw.w), int(x.q.w), dot);
    return fmaf(scale * x.scale, float(dot), sum);
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

// The residual stream h = x + delta: the stream as the stage before last left it plus the last stage's
// output, added here so that a stage's epilogue never waits for a read of the stream. Block 0 writes h to
// h_out (never x: other blocks still read it).
struct ResidualIn {
  const float* x;
  const float* delta;  // or nullptr
  float* h_out;
};

// Brings the n floats of a and of b into L2, their 128-byte lines dealt to the grid's threads: at the
// barrier before a norm, its stream and weight, which were read or written long before and would otherwise
// miss L2 behind the queue of streamed weights (the staging took ~3.8 us of the 8B's QKV stage).
__device__ __forceinline__ void prefetch_pair_l2(const float* a, const float* b, int n) {
  const int lines = (n + 31) / 32, t = int(threadIdx.x * gridDim.x + blockIdx.x);
  if (t < 2 * lines) {
    const float* at = t < lines ? a + t * 32 : b + (t - lines) * 32;
    asm volatile("prefetch.global.L2 [%0];" ::"l"(at));
  }
}

// xs = h times the norm's weight; returns the RMS scale 1 / rms(h), which the matmul's epilogue applies
// (W (s h * w) = s W (h * w)), so that one __syncthreads serves both xs and the sum of squares: each warp
// adds the warps' partial sums itself. For int8 weights xs is quantized (QuantizedX).
template <int kWarps, bool kInt8>
__device__ float stage_normed(const Params& p, const ResidualIn& in, const float* weight, float* xs, float* reduce) {
  const int dim = p.a.dim;
  float sum_sq = 0.0f;
  const auto normed = [&](int q) {
    float4 v = __ldcg(reinterpret_cast<const float4*>(in.x) + q);
    if (in.delta != nullptr) {
      const float4 d = __ldcg(reinterpret_cast<const float4*>(in.delta) + q);
      v = make_float4(v.x + d.x, v.y + d.y, v.z + d.z, v.w + d.w);
    }
    const float4 w = __ldcg(reinterpret_cast<const float4*>(weight) + q);
    if (blockIdx.x == 0) reinterpret_cast<float4*>(in.h_out)[q] = v;
    sum_sq += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    return make_float4(v.x * w.x, v.y * w.y, v.z * w.z, v.w * w.w);
  };
  stage_values<kWarps, kInt8>(dim, xs, normed);
  sum_sq = warp_sum(sum_sq);
  if (threadIdx.x % 32 == 0) reduce[threadIdx.x / 32] = sum_sq;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += reduce[w];
  return rsqrtf(total / float(dim) + p.a.eps);
}

// xs = v (n values from global memory, written by an earlier stage), quantized for int8 weights.
template <int kWarps, bool kInt8>
__device__ void stage_plain(const float* v, int n, float* xs) {
  const auto plain = [&](int q) { return __ldcg(reinterpret_cast<const float4*>(v) + q); };
  stage_values<kWarps, kInt8>(n, xs, plain);
  __syncthreads();
}

// Attention of query head h (q: its head_dim values) over the keys [lo, hi) of the cache, by the whole
// block, into att [head_dim] (and the keys' max score and sum of weights, log2 domain, into fold's
// head_dim + 1 and 2 head_dim + 3, where a split's merge_if_last finds them):
// kL lanes share a key (16 bytes each), a warp takes 32 / kL keys a pass and the block kWarps times that;
// each lane group keeps a running max, sum and output (log2 domain), folded across the warp, then across
// the warps through shared memory (fold: kWarps * (head_dim + 2) floats).
template <typename T, int kHeadDim, int kWarps>
__device__ void attend_head(const Params& p, int layer, const float* q, int h, int lo, int hi, float* fold,
                            float* att) {
  constexpr int kW = 16 / int(sizeof(T)), kL = kHeadDim / kW, kKeysPerPass = 32 / kL;
  constexpr int kBlockKeys = kWarps * kKeysPerPass;  // keys of one pass of the block
  constexpr int kAttentionUnroll = attention_unroll(kWarps);
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
    if (lane < kWarps) fold[lane * (kHeadDim + 2) + kHeadDim] = sum > 0.0f ? weight / sum : 0.0f;
    if (lane == 0) {  // in the sums' slots of warps 0 and 1, which the output below does not read
      fold[kHeadDim + 1] = big;
      fold[2 * kHeadDim + 3] = sum;
    }
  }
  __syncthreads();
  for (int d = threadIdx.x; d < kHeadDim; d += kWarps * 32) {
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float* theirs = fold + w * (kHeadDim + 2);
      o = fmaf(theirs[kHeadDim], theirs[d], o);
    }
    att[d] = o;
  }
  __syncthreads();  // fold is free for the next head
}

// Keys of the cache a split of a head's attention takes at least: below that, one block walks them all.
constexpr int kSplitKeys = 256;

// Splits of each head's keys: a block each, as long as the grid has blocks for every head's splits and
// each split keeps kSplitKeys keys.
__device__ __forceinline__ int attention_splits(int keys, int heads) {
  return max(1, min(int(gridDim.x) / heads, (keys + kSplitKeys - 1) / kSplitKeys));
}

// att [head_dim] = the splits' outputs (each [head_dim], then its max and sum) weighted by their sums at
// the common max, in split order: the same bits whichever split ended last.
template <int kHeadDim>
__device__ void merge_splits(const float* parts, int splits, float* att) {
  for (int d = threadIdx.x; d < kHeadDim; d += blockDim.x) {
    float big = -INFINITY;
    for (int s = 0; s < splits; ++s) big = fmaxf(big, __ldcg(parts + s * (kHeadDim + 2) + kHeadDim));
    float total = 0.0f, o = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float* part = parts + s * (kHeadDim + 2);
      const float sum = __ldcg(part + kHeadDim + 1);
      const float weight = sum > 0.0f ? exp2f(__ldcg(part + kHeadDim) - big) * sum : 0.0f;
      total += weight;
      o = fmaf(weight, __ldcg(part + d), o);
    }
    att[d] = total > 0.0f ? o / total : 0.0f;
  }
}

// The scratch: the barrier's 32 floats; the stages' outputs (q and att [n_heads, head_dim], the activation
// [ffn], h and the two projections' outputs [dim], as persistent_decode_kernel lays them out); then the
// attention's split counts, one a head (4-float aligned), and the splits' parts.
__host__ __device__ __forceinline__ int stage_outputs_end(int dim, int n_heads, int head_dim, int ffn) {
  return 32 + 2 * n_heads * head_dim + ffn + 3 * dim;
}
__host__ __device__ __forceinline__ int split_counts_floats(int n_heads) { return (n_heads + 3) / 4 * 4; }

// The splits' addresses are worked out where they are used, not kept through the layer loop, whose
// registers are all taken.
__device__ __forceinline__ unsigned* split_counts(const Params& p, int head_dim) {
  return reinterpret_cast<unsigned*>(p.a.scratch + stage_outputs_end(p.a.dim, p.a.n_heads, head_dim, p.a.ffn));
}
template <int kHeadDim>
__device__ __forceinline__ float* split_parts(const Params& p) {
  return reinterpret_cast<float*>(split_counts(p, kHeadDim)) + split_counts_floats(p.a.n_heads);
}

// After split `unit` of its head (unit / splits) has left its output: its max and sum (from fold) complete
// its part, and the head's last split to finish merges the parts into att and sets the count back to zero
// (read again only in the next layer, after its barriers).
template <int kHeadDim>
__device__ void merge_if_last(const Params& p, int unit, int splits, const float* fold, float* att) {
  const int h = unit / splits;
  __shared__ bool last;
  if (threadIdx.x == 0) {
    float* part = split_parts<kHeadDim>(p) + unit * (kHeadDim + 2);
    part[kHeadDim] = fold[kHeadDim + 1];
    part[kHeadDim + 1] = fold[2 * kHeadDim + 3];
    __threadfence();  // the part (the block's stores, ordered by attend_head's last barrier) before the count
    last = atomicAdd(split_counts(p, kHeadDim) + h, 1u) == unsigned(splits - 1);
    __threadfence();
  }
  __syncthreads();
  if (!last) return;
  merge_splits<kHeadDim>(split_parts<kHeadDim>(p) + h * splits * (kHeadDim + 2), splits, att + h * kHeadDim);
  if (threadIdx.x == 0) split_counts(p, kHeadDim)[h] = 0;
}

// Every query head's attention into att [n_heads, head_dim]: a head a block, or over long contexts each
// head's keys split between blocks (flash-decoding), so that the cache streams through every
// multiprocessor; the head's last split to finish merges their parts (merge_if_last).
template <typename T, int kHeadDim, int kWarps>
__device__ void attention_stage(const Params& p, int layer, int position, const float* q, float* fold, float* att) {
  const int lo = p.a.window > 0 ? int(max(int64_t(0), int64_t(position) - p.a.window + 1)) : 0;
  const int splits = attention_splits(position + 1 - lo, p.a.n_heads);
  const int chunk = (position + 1 - lo + splits - 1) / splits;
  for (int unit = blockIdx.x; unit < p.a.n_heads * splits; unit += gridDim.x) {
    const int h = unit / splits, from = lo + (unit - h * splits) * chunk;
    attend_head<T, kHeadDim, kWarps>(p, layer, q + h * kHeadDim, h, from, min(position + 1, from + chunk), fold,
                                     splits == 1 ? att + h * kHeadDim
                                                 : split_parts<kHeadDim>(p) + unit * (kHeadDim + 2));
    if (splits > 1) merge_if_last<kHeadDim>(p, unit, splits, fold, att);
  }
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
__host__ __device__ inline int table_offset_floats(int max_k, int rotary_dim, int head_dim) {
  return (max_k + rotary_dim + 32 + kMaxWarps * (head_dim + 2) + 3) / 4 * 4;
}
__host__ __device__ inline int fixed_floats(int max_k, int rotary_dim, int head_dim, int n_layers) {
  const int table_floats = (n_layers * int(sizeof(PersistentLayer) / sizeof(float)) + 3) / 4 * 4;
  return table_offset_floats(max_k, rotary_dim, head_dim) + table_floats;
}

template <typename T>
__device__ void store_kv(void* cache, int64_t i, float v) {
  if constexpr (sizeof(T) == 2) static_cast<__half*>(cache)[i] = __float2half_rn(v);
  else static_cast<float*>(cache)[i] = v;
}

// The four matmuls of a layer, in the order a step runs them.
enum Kind : int { kQkv = 0, kOut = 1, kUp = 2, kDown = 3 };

// Their shapes and rows. A unit is what one epilogue call takes: a pair of QKV rows (QkvRows), a gate row
// and its up row, or one row of the projections.
struct Matmuls {
  const PersistentLayer* layers;  // the block's copy of the table
  int dim, q_dim, ffn, group_size, qkv_units;
  QkvRows qkv_rows;

  __device__ const PersistentMatrix& matrix(int kind, int layer) const {
    const PersistentLayer& l = layers[layer];
    return kind == kQkv ? l.qkv : kind == kOut ? l.out : kind == kUp ? l.up : l.down;
  }
  __device__ int k(int kind) const { return kind == kOut ? q_dim : kind == kDown ? ffn : dim; }
  __device__ int units(int kind) const { return kind == kQkv ? qkv_units : kind == kUp ? ffn : dim; }
  __device__ int row(int kind, int unit, int r) const {
    return kind == kQkv ? qkv_rows(unit, r) : kind == kUp ? unit + r * ffn : unit;
  }
};

// The step. Feed<kInt8, kWarps> brings each matmul's weights into shared memory (after the fixed part):
//   Feed(p, matmuls, shared)       the warp's state
//   begin()                        first weights in flight, before the kernel waits for x
//   prefetch(kind, layer)          at the barrier before that matmul, once the block has arrived
//   run<kRows>(kind, layer, xs, e) the warp's units: e(unit, y) on lane 0, y [kRows] = W · xs of its rows
template <typename T, int kHeadDim, bool kInt8, int kWarps, template <bool, int> class Feed>
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
  char* after_fixed = reinterpret_cast<char*>(smem + fixed_floats(p.max_k, a.rotary_dim, kHeadDim, a.n_layers));
  GridBarrier barrier{reinterpret_cast<unsigned*>(a.scratch), reinterpret_cast<unsigned*>(a.scratch) + 1};
  // The stages' outputs: the rotated queries, the attention's, the activation's; the residual stream after
  // the attention (a.x holds it at the start and end of a layer); the output projection's and the down
  // projection's, which the next norm adds to the stream.
  float* q = a.scratch + 32;  // [n_heads, head_dim]
  float* att = q + a.n_heads * kHeadDim;
  float* act = att + a.n_heads * kHeadDim;  // [ffn]
  float* h = act + a.ffn;
  float* attn_proj = h + a.dim;
  float* ffn_out = attn_proj + a.dim;  // then the attention's splits (attention_stage)

  const int H = a.n_heads, KV = a.n_kv_heads, D = kHeadDim, dim = a.dim, q_dim = H * D, ffn = a.ffn;
  const int qkv_units = (H + 2 * KV) * D / 2;
  const QkvRows qkv_rows{D, a.mode == RotaryMode::None ? 0 : H + KV, a.mode == RotaryMode::None ? 0 : a.rotary_dim / 2,
                         int(a.mode)};

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

  Feed<kInt8, kWarps> feed(p, Matmuls{layers, dim, q_dim, ffn, a.group_size, qkv_units, qkv_rows}, after_fixed);
  feed.begin();  // weights are not written by the kernel before: load them early
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
    const ResidualIn attn_in{a.x, layer > 0 ? ffn_out : nullptr, h};
    const float attn_scale = stage_normed<kWarps, kInt8>(p, attn_in, w.attn_norm, xs, reduce);
    feed.template run<2>(kQkv, layer, xs, [&](int unit, const float (&y)[2]) {
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
    cross([&] { feed.prefetch(kOut, layer); });

    attention_stage<T, kHeadDim, kWarps>(p, layer, position, q, fold, att);
    barrier.sync();

    // output projection (the next norm adds it to the stream)
    stage_plain<kWarps, kInt8>(att, q_dim, xs);
    feed.template run<1>(kOut, layer, xs, [&](int unit, const float (&y)[1]) { attn_proj[unit] = y[0]; });
    cross([&] {
      feed.prefetch(kUp, layer);
      prefetch_pair_l2(h, w.ffn_norm, dim);
    });

    // norm + gate/up + activation
    const float ffn_scale = stage_normed<kWarps, kInt8>(p, {h, attn_proj, a.x}, w.ffn_norm, xs, reduce);
    feed.template run<2>(kUp, layer, xs, [&](int unit, const float (&y)[2]) {
      act[unit] = activate(a.act, y[0] * ffn_scale) * (y[1] * ffn_scale);
    });
    cross([&] { feed.prefetch(kDown, layer); });

    // down projection + residual
    stage_plain<kWarps, kInt8>(act, ffn, xs);
    const bool last = layer + 1 == a.n_layers;  // the stream itself takes the last layer's output
    feed.template run<1>(kDown, layer, xs, [&](int unit, const float (&y)[1]) {
      if (last) a.x[unit] = __ldcg(a.x + unit) + y[0];
      else ffn_out[unit] = y[0];
    });
    if (!last)
      cross([&] {
        feed.prefetch(kQkv, layer + 1);
        prefetch_pair_l2(a.x, layers[layer + 1].attn_norm, dim);
      });
  }
  barrier.leave();
}

// Launches the kernel with one block a multiprocessor, all resident at once (cooperative).
template <typename T, int kHeadDim, bool kInt8, int kWarps, template <bool, int> class Feed>
void launch_kernel(const Params& p, size_t shared_bytes) {
  const auto kernel = persistent_decode_kernel<T, kHeadDim, kInt8, kWarps, Feed>;
  KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared_bytes)));
  int per_multiprocessor = 0;
  KILN_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_multiprocessor, kernel, kWarps * 32, shared_bytes));
  KILN_CHECK(per_multiprocessor >= 1, "cuda persistent_decode: a block of {} shared bytes does not fit", shared_bytes);
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(device_limits().multiprocessors));
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

// The kernel for p's cache type and head_dim (16 to 256; an f32 cache up to 128).
template <bool kInt8, int kWarps, template <bool, int> class Feed, typename T>
void launch_head_dim(const Params& p, size_t shared_bytes) {
  switch (p.a.head_dim) {
    case 16: launch_kernel<T, 16, kInt8, kWarps, Feed>(p, shared_bytes); break;
    case 32: launch_kernel<T, 32, kInt8, kWarps, Feed>(p, shared_bytes); break;
    case 64: launch_kernel<T, 64, kInt8, kWarps, Feed>(p, shared_bytes); break;
    case 128: launch_kernel<T, 128, kInt8, kWarps, Feed>(p, shared_bytes); break;
    default:
      // an f32 key of 256 is 64 lanes of 16 bytes
      if constexpr (sizeof(T) == 2) launch_kernel<T, 256, kInt8, kWarps, Feed>(p, shared_bytes);
      break;
  }
}

// The kernel for p's cache type and head_dim, its weights int8 or f16 as kInt8 says (p.a.int8's).
template <bool kInt8, int kWarps, template <bool, int> class Feed>
void launch_weights(const Params& p, size_t shared_bytes) {
  if (p.a.kv_dtype == KvDType::F16) launch_head_dim<kInt8, kWarps, Feed, __half>(p, shared_bytes);
  else launch_head_dim<kInt8, kWarps, Feed, float>(p, shared_bytes);
}
// ... with kInt8 taken from p.a.int8.
template <int kWarps, template <bool, int> class Feed>
void launch_feed(const Params& p, size_t shared_bytes) {
  if (p.a.int8) launch_weights<true, kWarps, Feed>(p, shared_bytes);
  else launch_weights<false, kWarps, Feed>(p, shared_bytes);
}

// The two feeds. fits: whether the shapes fit the feed's shared memory on this device (checked for
// everything else by persistent_decode_supported); launch: sets the feed's fields of p and launches the step.
bool buffered_fits(const PersistentShape& s);
void launch_buffered(Params p);
bool streamed_fits(const PersistentShape& s);
void launch_streamed(Params p);

}  // namespace kiln::cuda::persistent_detail
