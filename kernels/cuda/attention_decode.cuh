// The decode attention kernel shared by attention.cu (contiguous cache) and paged_attention.cu (paged pool),
// flash-decoding style: one block per (kv head, key split) holds the few query rows of that kv head (the
// GQA group of one or a few tokens) in registers and streams the split's keys and values once, in chunks of
// 16 bytes (fp8: 8), with a running softmax per row; a second kernel (attention_merge.cuh) merges the splits.
//
// Thread layout: kTk lanes share a key (each owns kCpt chunks of kW values of head_dim), so a block of
// kThreads works on kSub = kThreads / kTk keys at once, kU such steps per iteration (loads of all of them
// issued before the first is used). Each key group keeps its own running max, sum and output; the block
// folds them together at the end. Scores live in the log2 domain (exp2), the query pre-scaled by
// scale * log2(e).
#pragma once

#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/kv_store.cuh"
#include "kernels/cuda/launch_pdl.cuh"

namespace kiln::cuda {

inline constexpr int kDecodeThreads = 128;
inline constexpr int kDecodeMaxRows = 8;  // query rows a block holds at most
// Blocks of kR rows a multiprocessor must hold at once (bounds the registers: more rows, more outputs);
// the split counts aim at that many blocks per multiprocessor, so all splits run in one wave. The paged
// kernel holds more beside one row (paged_attention.cu's one_row_blocks).
constexpr int decode_min_blocks(int rows) { return rows >= 8 ? 2 : rows >= 4 ? 3 : 4; }
// The kR a launch uses for blocks of `rows` query rows.
constexpr int decode_rows_template(int rows) { return rows <= 1 ? 1 : rows <= 4 ? 4 : kDecodeMaxRows; }

// Where a block's partial result goes: out directly (one split), or the partial buffer
// [n_splits, n_th, head_dim] followed by (max, sum) pairs [n_splits, n_th, 2].
struct DecodeOutput {
  float* out;      // [n_th, head_dim]
  float* partial;  // nullptr: one split
  int64_t n_th;    // (token or row) x head slots of out
  int n_splits;
  __half* out16 = nullptr;  // [n_th, head_dim] out in f16 as well (one split), or nullptr
};

// Shared bytes: the query rows, then for the final fold per key group every row's max, sum, weight and
// output.
inline size_t decode_shared_bytes(int n_sub, int rows, int head_dim) {
  return sizeof(float) * (size_t(n_sub) * size_t(rows) * size_t(head_dim + 3) + size_t(rows) * size_t(head_dim + 2));
}

// kW floats of shared memory (16-byte aligned when kW is a multiple of 4).
template <int kW>
__device__ __forceinline__ void load_floats(const float* p, float (&out)[kW]) {
  if constexpr (kW % 4 == 0) {
#pragma unroll
    for (int i = 0; i < kW / 4; ++i) {
      const float4 f = reinterpret_cast<const float4*>(p)[i];
      out[4 * i] = f.x;
      out[4 * i + 1] = f.y;
      out[4 * i + 2] = f.z;
      out[4 * i + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kW; ++i) out[i] = p[i];
  }
}

// The compile-time shape of one instantiation. kOneRowKeys: keys a thread loads before it waits beside one
// row (a kernel holding more blocks a multiprocessor takes fewer); 0: 8 for f16 values or 32 lanes a key,
// else 4.
template <typename T, int kW, int kTk, int kCpt, int kR, int kOneRowKeys = 0>
struct DecodeShape {
  static constexpr int kSub = kDecodeThreads / kTk;
  static constexpr int kOneRow = kOneRowKeys > 0 ? kOneRowKeys : sizeof(T) == 2 || kTk == 32 ? 8 : 4;
  // Keys a thread loads before it waits: registers bound kR * kU (an f32 row of 64 has 128 registers for 4).
  static constexpr int kU = kR >= 8 ? (kCpt >= 2 ? 1 : 2) : kCpt >= 4 ? 1 : (kR == 1 ? kOneRow : 4) / kCpt;
  static constexpr int kKeysPerStep = kU * kSub;
};

// Src (the addressing of one block, made by the caller from blockIdx) provides:
//   int n_rows, head_dim; int64_t begin, end;  this block's rows and keys [begin, end)
//   const float* q_row(r); int64_t th(r) (slot of out); int pos(r); float slope(r) (log2 domain);
//   bool masked: some key of [begin, end) is hidden from some row, then visible(key, r) says which;
//   bool alibi: the scores take slope(r) * (key - pos(r))
//   int64_t key_offset(key)  element offset of the key's head_dim values in k and v
template <typename T, int kW, int kTk, int kCpt, int kR, int kOneRowKeys = 0, typename Src>
__device__ __forceinline__ void decode_attention_block(const Src& src, const T* __restrict__ k,
                                                       const T* __restrict__ v, float qk_scale, DecodeOutput o,
                                                       int split) {
  using Shape = DecodeShape<T, kW, kTk, kCpt, kR, kOneRowKeys>;
  constexpr int kSub = Shape::kSub, kU = Shape::kU;
  extern __shared__ float decode_smem[];
  const int tid = threadIdx.x, sub = tid / kTk, lane = tid % kTk;
  const int D = src.head_dim, n_chunks = D / kW, n_rows = src.n_rows;

  // The query rows, pre-scaled: up to 4 rows in registers, straight from global memory; 8 rows would leave
  // too few registers for the outputs, so they go to shared memory and are read back chunk by chunk.
  constexpr bool kQInRegisters = kR <= 4;
  // fp8 keys and values: the query-key products and the probability-weighted values are taken in f16 pairs
  // (HFMA2, two products an instruction, on the values as widened: no f32 conversions), then added into the
  // f32 scores a key at a time and into the f32 outputs kU keys at a time. Widening every value to f32 made
  // the loop bound by its instruction issue at 67-82% of the memory's rate. f16 rounds at 2^-11, the e4m3
  // values themselves at 2^-4. f16's range (65504) holds a lane's up to 8 products with e4m3 values (448 at
  // most) and their sums while the chunk's scaled query values stay within 16: a chunk with larger ones is
  // scaled down by a power of two 2^-e, and its sum into the score takes 2^e back in the FMA that adds it
  // (exact; e is 0 for the queries of real models, whose scaled values are a few units).
  constexpr bool kHalf = sizeof(T) == 1 && kQInRegisters && kW >= 8;  // whole 8- or 16-byte chunks
  float* q_s = decode_smem;  // [kR][D] (8 rows)
  float q_reg[kQInRegisters && !kHalf ? kR : 1][kCpt][kW];
  __half2 q_half[kHalf ? kR : 1][kHalf ? kCpt : 1][kHalf ? kW / 2 : 1];
  float q_unscale[kHalf ? kR : 1][kHalf ? kCpt : 1];  // 2^e of each chunk's query
  if constexpr (kQInRegisters) {
#pragma unroll
    for (int r = 0; r < kR; ++r)
#pragma unroll
      for (int i = 0; i < kCpt; ++i) {
        const int c = lane + i * kTk;
        const bool in = c < n_chunks && r < n_rows;
        const float* qr = src.q_row(in ? r : 0) + (in ? c * kW : 0);
        if constexpr (kHalf) {
          float largest = 0.0f;
#pragma unroll
          for (int e = 0; e < kW; ++e) largest = fmaxf(largest, in ? fabsf(qr[e] * qk_scale) : 0.0f);
          const int up = largest > 16.0f ? int(fminf(ceilf(log2f(largest * (1.0f / 16.0f))), 126.0f)) : 0;
          const float down = ldexpf(1.0f, -up);
          q_unscale[r][i] = ldexpf(1.0f, up);
#pragma unroll
          for (int e = 0; e < kW / 2; ++e)
            q_half[r][i][e] =
                in ? __floats2half2_rn(qr[2 * e] * qk_scale * down, qr[2 * e + 1] * qk_scale * down) : __half2{};
        } else {
#pragma unroll
          for (int e = 0; e < kW; ++e) q_reg[r][i][e] = in ? qr[e] : 0.0f;  // scaled in the score (below)
        }
      }
  } else {
    for (int e = tid; e < kR * D; e += kDecodeThreads) {
      const int r = e / D;
      q_s[e] = r < n_rows ? src.q_row(r)[e % D] * qk_scale : 0.0f;
    }
    __syncthreads();
  }
  float acc[kR][kCpt][kW], m[kR], l[kR];
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int i = 0; i < kCpt; ++i)
#pragma unroll
      for (int e = 0; e < kW; ++e) acc[r][i][e] = 0.0f;
  }

  for (int64_t j0 = src.begin; j0 < src.end; j0 += Shape::kKeysPerStep) {
    KvChunk<T, kW> kc[kU][kCpt], vc[kU][kCpt];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t key = j0 + u * kSub + sub;
      const int64_t at = key < src.end ? src.key_offset(key) : 0;
#pragma unroll
      for (int i = 0; i < kCpt; ++i) {
        const int c = lane + i * kTk;
        if (key < src.end && c < n_chunks) {  // keys past `end` are never read: unwritten cache rows
          kc[u][i].load(k + at + c * kW);
          vc[u][i].load(v + at + c * kW);
        } else {
          kc[u][i].clear();
          vc[u][i].clear();
        }
      }
    }
    float s[kU][kR];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
#pragma unroll
      for (int r = 0; r < kR; ++r) s[u][r] = 0.0f;
#pragma unroll
      for (int i = 0; i < kCpt; ++i) {
        const int c = lane + i * kTk;
        if (c >= n_chunks) continue;
        if constexpr (kHalf) {
          __half2 kh[kW / 2];
          kc[u][i].widen_half2(kh);
#pragma unroll
          for (int r = 0; r < kR; ++r) {
            __half2 dot = __hmul2(q_half[r][i][0], kh[0]);
#pragma unroll
            for (int e = 1; e < kW / 2; ++e) dot = __hfma2(q_half[r][i][e], kh[e], dot);
            const float2 f = __half22float2(dot);
            s[u][r] = fmaf(f.x + f.y, q_unscale[r][i], s[u][r]);
          }
        } else {
          float kf[kW];
          kc[u][i].widen(kf);
#pragma unroll
          for (int r = 0; r < kR; ++r) {
            float qf[kW];
            if constexpr (kQInRegisters) {
#pragma unroll
              for (int e = 0; e < kW; ++e) qf[e] = q_reg[r][i][e];
            } else {
              load_floats(q_s + r * D + c * kW, qf);
            }
#pragma unroll
            for (int e = 0; e < kW; ++e) s[u][r] = fmaf(qf[e], kf[e], s[u][r]);
          }
        }
      }
#pragma unroll
      for (int r = 0; r < kR; ++r) {
#pragma unroll
        for (int off = kTk / 2; off > 0; off >>= 1) s[u][r] += __shfl_xor_sync(0xffffffffu, s[u][r], off);
        // Queries in registers are not pre-scaled, so that the first keys' loads need not wait for them.
        if constexpr (kQInRegisters && !kHalf) s[u][r] *= qk_scale;
      }
    }
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      float m_new = m[r];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t key = j0 + u * kSub + sub;
        const bool seen = key < src.end && r < n_rows && (!src.masked || src.visible(int(key), r));
        if (!seen) s[u][r] = -INFINITY;
        else if (src.alibi) s[u][r] += src.slope(r) * float(int(key) - src.pos(r));
        m_new = fmaxf(m_new, s[u][r]);
      }
      if (m_new != m[r]) {  // the running max moved: rescale (a factor of exactly 1 otherwise)
        const float corr = m[r] == -INFINITY ? 0.0f : exp2f(m[r] - m_new);
        m[r] = m_new;
        l[r] *= corr;
#pragma unroll
        for (int i = 0; i < kCpt; ++i)
#pragma unroll
          for (int e = 0; e < kW; ++e) acc[r][i][e] *= corr;
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) s[u][r] = s[u][r] == -INFINITY ? 0.0f : exp2f(s[u][r] - m_new);
    }
    if constexpr (kHalf) {
#pragma unroll
      for (int r = 0; r < kR; ++r)
#pragma unroll
        for (int u = 0; u < kU; ++u) l[r] += s[u][r];
#pragma unroll
      for (int i = 0; i < kCpt; ++i) {
        __half2 o[kR][kW / 2] = {};
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          __half2 vh[kW / 2];
          vc[u][i].widen_half2(vh);
#pragma unroll
          for (int r = 0; r < kR; ++r) {
            const __half2 p = __float2half2_rn(s[u][r]);
#pragma unroll
            for (int e = 0; e < kW / 2; ++e) o[r][e] = __hfma2(p, vh[e], o[r][e]);
          }
        }
#pragma unroll
        for (int r = 0; r < kR; ++r)
#pragma unroll
          for (int e = 0; e < kW / 2; ++e) {
            const float2 f = __half22float2(o[r][e]);
            acc[r][i][2 * e] += f.x;
            acc[r][i][2 * e + 1] += f.y;
          }
      }
    } else {
#pragma unroll
      for (int u = 0; u < kU; ++u)
#pragma unroll
        for (int i = 0; i < kCpt; ++i) {
          float vf[kW];
          vc[u][i].widen(vf);
#pragma unroll
          for (int r = 0; r < kR; ++r) {
            if (i == 0) l[r] += s[u][r];
#pragma unroll
            for (int e = 0; e < kW; ++e) acc[r][i][e] = fmaf(s[u][r], vf[e], acc[r][i][e]);
          }
        }
    }
  }

  // Fold the key groups: [kSub][n_rows] maxima and sums, [kSub][n_rows][D] outputs, then per row the
  // overall max and sum and each group's weight.
  float* m_s = q_s + kR * D;               // [kSub][kR]
  float* l_s = m_s + kSub * kR;            // [kSub][kR]
  float* w_s = l_s + kSub * kR;            // [kSub][kR] weight 2^(m - M) of each group
  float* ml_s = w_s + kSub * kR;           // [kR][2] overall max and sum
  float* acc_s = ml_s + 2 * kR;            // [kSub][kR][D]
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    if (lane == 0) {
      m_s[sub * kR + r] = m[r];
      l_s[sub * kR + r] = l[r];
    }
#pragma unroll
    for (int i = 0; i < kCpt; ++i) {
      const int c = lane + i * kTk;
      if (c < n_chunks)
#pragma unroll
        for (int e = 0; e < kW; ++e) acc_s[(sub * kR + r) * D + c * kW + e] = acc[r][i][e];
    }
  }
  __syncthreads();
  if (tid < n_rows) {
    const int r = tid;
    float big = -INFINITY, sum = 0.0f;
    for (int g = 0; g < kSub; ++g) big = fmaxf(big, m_s[g * kR + r]);
    for (int g = 0; g < kSub; ++g) {
      const float mg = m_s[g * kR + r], w = mg == -INFINITY ? 0.0f : exp2f(mg - big);
      w_s[g * kR + r] = w;
      sum += w * l_s[g * kR + r];
    }
    ml_s[2 * r] = big;
    ml_s[2 * r + 1] = sum;
    if (o.partial != nullptr) {
      float* ml = o.partial + int64_t(o.n_splits) * o.n_th * D;  // after every split's outputs
      ml[(split * o.n_th + src.th(r)) * 2] = big;
      ml[(split * o.n_th + src.th(r)) * 2 + 1] = sum;
    }
  }
  __syncthreads();
  for (int e = tid; e < n_rows * D; e += kDecodeThreads) {
    const int r = e / D, d = e % D;
    float x = 0.0f;
#pragma unroll
    for (int g = 0; g < kSub; ++g) x += w_s[g * kR + r] * acc_s[(g * kR + r) * D + d];
    if (o.partial == nullptr) {
      const float sum = ml_s[2 * r + 1], y = sum > 0.0f ? x / sum : 0.0f;
      o.out[src.th(r) * D + d] = y;
      if (o.out16 != nullptr) o.out16[src.th(r) * D + d] = __float2half_rn(y);
    } else {
      o.partial[(split * o.n_th + src.th(r)) * D + d] = x;
    }
  }
}

// A split without keys: its maxima -inf (the merge skips it), nothing else written.
template <typename Src>
__device__ __forceinline__ void decode_mark_empty(const Src& src, DecodeOutput o, int split) {
  if (o.partial == nullptr || int(threadIdx.x) >= src.n_rows) return;
  float* ml = o.partial + int64_t(o.n_splits) * o.n_th * src.head_dim;
  ml[(split * o.n_th + src.th(threadIdx.x)) * 2] = -INFINITY;
  ml[(split * o.n_th + src.th(threadIdx.x)) * 2 + 1] = 0.0f;
}

}  // namespace kiln::cuda
