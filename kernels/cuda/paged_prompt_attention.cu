// paged_prompt_attention of paged_attention.h: flash attention (the FlashAttention-2 loop) on the tensor
// cores for the prompt rows of a batch step. A block takes one tile of query slots (consecutive rows of one
// sequence x the query heads of one kv head, 16 slots a warp) and walks that sequence's keys in tiles of 64:
// scores S = Q Kᵀ and the update O += P V are mma.sync m16n8k16 (f16 in, f32 sums), the softmax is online
// in registers (the accumulator of S is the A fragment of P V, no trip through shared memory), and the next
// key tile streams in with cp.async while this one is used.
//
// A row's result never depends on the rest of its tile: an mma's output rows are independent, key tiles
// start at multiples of 64 whatever the tile, and a key tile a row cannot see leaves its state exactly as it
// was (probabilities 0, rescale 1, or 0 x 0 before its first key).
//
// An fp8 pool: the key tiles stream in as they are stored (two stages of fp8), and each is widened to f16
// in shared memory before its mma (exactly: every e4m3 value is an f16 value).
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>

#include "engine/error.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch_pdl.cuh"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/kv_store.cuh"
#include "kernels/cuda/paged_kv.cuh"

namespace kiln::cuda {
namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kSlots = 16 * kWarps;  // query slots of a tile: an mma's 16 rows a warp
constexpr int kKeys = 64;            // keys of a key tile
constexpr int kMaxDim = 128;

// Halves between shared rows: 16 bytes past the row, so the 8 rows of an ldmatrix start in 8 bank groups.
template <int kD>
constexpr int kStride = kD + 8;

// Q [kSlots], then K and V, two stages each [2][kKeys], rows of kStride halves. fp8: one f16 stage of K and
// V, then the two fp8 stages of K and V [2][kKeys][kD] each.
template <int kD, bool kFp8>
__host__ __device__ constexpr size_t shared_bytes() {
  if constexpr (kFp8) return size_t(kSlots + 2 * kKeys) * kStride<kD> * sizeof(__half) + size_t(4 * kKeys * kD);
  return size_t(kSlots + 4 * kKeys) * kStride<kD> * sizeof(__half);
}

struct Params {
  PagedAttentionArgs a;
  const int32_t* tiles;
  int64_t q_stride;
  float qk_scale;  // scale x log2(e): scores in the exp2 domain
};

__device__ __forceinline__ void cp_async16(void* shared, const void* global, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(shared)), "l"(global),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __half* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const __half* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

// c += a b: a 16x16 (row major), b 16x8 (column major), c 16x8 in f32.
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// 16 fp8 values (one 16-byte chunk, read from shared memory) to 16 halves.
__device__ __forceinline__ void widen_fp8(const uint4& raw, __half* to) {
  KvChunk<__nv_fp8_e4m3, 16> chunk;
  chunk.raw = raw;
  __half2 h[8];
  chunk.widen_half2(h);
  reinterpret_cast<uint4*>(to)[0] = reinterpret_cast<const uint4*>(h)[0];
  reinterpret_cast<uint4*>(to)[1] = reinterpret_cast<const uint4*>(h)[1];
}

// Block (tile blockIdx.x, kv head blockIdx.y). A thread owns two slots of its warp's 16: lane / 4 and
// lane / 4 + 8 (the rows of an mma accumulator), and in each the columns 2 (lane % 4) + {0, 1} of every
// 8-wide column group.
template <int kD, bool kFp8>
__global__ void __launch_bounds__(kThreads) paged_prompt_kernel(Params p) {
  constexpr int kS = kStride<kD>, kKeyGroups = kKeys / 8, kDimGroups = kD / 8, kF16Stages = kFp8 ? 1 : 2;
  extern __shared__ __align__(16) unsigned char smem[];
  __half* qs = reinterpret_cast<__half*>(smem);  // [kSlots][kS]
  __half* ks = qs + kSlots * kS;                 // [kF16Stages][kKeys][kS]
  __half* vs = ks + kF16Stages * kKeys * kS;     // [kF16Stages][kKeys][kS]
  unsigned char* k8 = reinterpret_cast<unsigned char*>(vs + kF16Stages * kKeys * kS);  // fp8: [2][kKeys][kD]
  unsigned char* v8 = k8 + 2 * kKeys * kD;                                             // fp8: [2][kKeys][kD]
  const PagedAttentionArgs& a = p.a;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int D = a.kv.head_dim, group = a.n_heads / a.kv.n_kv_heads, g = int(blockIdx.y);

  if (D < kD) {  // the columns past head_dim take part in the mma: zeros
    for (int i = tid; i < int(shared_bytes<kD, kFp8>() / 16); i += kThreads)
      reinterpret_cast<uint4*>(smem)[i] = uint4{};
    __syncthreads();  // before any thread stores a query or starts a copy into what another zeroes
  }
  pdl_wait();  // the queries and the pool are written
  pdl_launch_dependents();

  const int first_row = p.tiles[2 * blockIdx.x], n_rows = p.tiles[2 * blockIdx.x + 1];
  const int first = a.row_position[first_row], last = first + n_rows - 1;
  const int32_t* table = a.kv.block_table + int64_t(a.row_seq[first_row]) * a.kv.max_blocks_per_seq;
  const int lowest = a.window > 0 ? int(max(int64_t(0), int64_t(first) - a.window + 1)) : 0;  // the tile's first key

  // Queries: slot m is row m / group, query head g * group + m % group; f16, unscaled.
  const int half_dim = D / 2;
  for (int e = tid; e < kSlots * half_dim; e += kThreads) {
    const int m = e / half_dim, d = 2 * (e - m * half_dim), r = m / group;
    float2 v = make_float2(0.0f, 0.0f);
    if (r < n_rows)
      v = *reinterpret_cast<const float2*>(a.q + int64_t(first_row + r) * p.q_stride +
                                           int64_t(g * group + m % group) * D + d);
    *reinterpret_cast<__half2*>(qs + m * kS + d) = __floats2half2_rn(v.x, v.y);
  }

  // Key tile kt into stage st: keys the tile cannot see are zeros (never read: the pool past them may be
  // unwritten or another sequence's).
  // Element sizes and 16-byte chunks: 8 f16 values or 16 fp8 ones.
  constexpr int kBytes = kFp8 ? 1 : 2, kChunkValues = 16 / kBytes;
  const unsigned char* k_pool = static_cast<const unsigned char*>(a.kv.k_pool);
  const unsigned char* v_pool = static_cast<const unsigned char*>(a.kv.v_pool);
  const int chunks = D / kChunkValues, bp = int(a.kv.block_positions);
  const auto load_tile = [&](int kt, int st) {
    for (int e = tid; e < kKeys * chunks; e += kThreads) {
      const int j = e / chunks, c = e - j * chunks, key = kt * kKeys + j;
      const bool valid = key >= lowest && key <= last;
      int64_t at = 0;
      if (valid) {
        const int b = key / bp;
        at = (((int64_t(table[b]) * a.kv.n_kv_heads + g) * bp + (key - b * bp)) * D + kChunkValues * c) * kBytes;
      }
      if constexpr (kFp8) {
        const int to = (st * kKeys + j) * kD + 16 * c;
        cp_async16(k8 + to, k_pool + at, valid);
        cp_async16(v8 + to, v_pool + at, valid);
      } else {
        const int to = (st * kKeys + j) * kS + 8 * c;
        cp_async16(ks + to, k_pool + at, valid);
        cp_async16(vs + to, v_pool + at, valid);
      }
    }
    cp_async_commit();
  };
  // fp8: stage st of the fp8 tiles widened into the f16 tiles (the caller syncs before and after).
  const auto widen_tile = [&](int st) {
    for (int e = tid; e < kKeys * chunks; e += kThreads) {
      const int j = e / chunks, c = e - j * chunks, from = (st * kKeys + j) * kD + 16 * c, to = j * kS + 16 * c;
      widen_fp8(*reinterpret_cast<const uint4*>(k8 + from), ks + to);
      widen_fp8(*reinterpret_cast<const uint4*>(v8 + from), vs + to);
    }
  };

  // This thread's two slots.
  int pos[2];
  bool used[2];
  float slope[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int m = warp * 16 + lane / 4 + 8 * i, r = m / group;
    used[i] = r < n_rows;
    pos[i] = first + r;
    slope[i] = a.alibi_slopes != nullptr ? a.alibi_slopes[g * group + m % group] * kLog2e : 0.0f;
  }
  // The warp's rows, for skipping key tiles none of them sees (a skip changes no bit).
  const int warp_first = first + (warp * 16) / group, warp_last = min(last, first + (warp * 16 + 15) / group);
  const bool warp_used = warp_first <= last;
  const int warp_lowest = a.window > 0 ? int(max(int64_t(0), int64_t(warp_first) - a.window + 1)) : 0;

  const int kt_begin = lowest / kKeys, kt_end = last / kKeys + 1;
  load_tile(kt_begin, 0);
  __syncthreads();  // the queries are in shared memory
  uint32_t qf[kD / 16][4];
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk)
    ldmatrix_x4(qf[kk], qs + (warp * 16 + lane % 16) * kS + kk * 16 + (lane / 16) * 8);

  float o[kDimGroups][4] = {};
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  for (int kt = kt_begin; kt < kt_end; ++kt) {
    const int st = (kt - kt_begin) & 1;
    if (kt + 1 < kt_end) {
      load_tile(kt + 1, st ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // tile kt is in shared memory
    if constexpr (kFp8) {
      widen_tile(st);
      __syncthreads();
    }
    const int key0 = kt * kKeys;
    if (warp_used && key0 <= warp_last && key0 + kKeys > warp_lowest) {
      const __half* kst = ks + (kFp8 ? 0 : st) * kKeys * kS;
      const __half* vst = vs + (kFp8 ? 0 : st) * kKeys * kS;
      float s[kKeyGroups][4] = {};
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk)
#pragma unroll
        for (int n2 = 0; n2 < kKeys / 16; ++n2) {
          uint32_t b[4];
          ldmatrix_x4(b, kst + (n2 * 16 + (lane / 16) * 8 + lane % 8) * kS + kk * 16 + ((lane / 8) % 2) * 8);
          mma(s[2 * n2], qf[kk], b[0], b[1]);
          mma(s[2 * n2 + 1], qf[kk], b[2], b[3]);
        }

      float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < kKeyGroups; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = e / 2, key = key0 + n * 8 + (lane % 4) * 2 + e % 2;
          const bool visible =
              used[i] && key <= pos[i] && (a.window <= 0 || int64_t(key) > int64_t(pos[i]) - a.window);
          s[n][e] = visible ? s[n][e] * p.qk_scale + slope[i] * float(key - pos[i]) : -INFINITY;
          tile_max[i] = fmaxf(tile_max[i], s[n][e]);
        }
      float corr[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 1));
        tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 2));
        const float m_new = fmaxf(m_run[i], tile_max[i]);
        corr[i] = m_run[i] == -INFINITY ? 0.0f : exp2f(m_run[i] - m_new);
        m_run[i] = m_new;
      }
#pragma unroll
      for (int n = 0; n < kKeyGroups; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = e / 2;
          s[n][e] = s[n][e] == -INFINITY ? 0.0f : exp2f(s[n][e] - m_run[i]);
          sum[i] += s[n][e];
        }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 1);
        sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 2);
        l_run[i] = l_run[i] * corr[i] + sum[i];
      }
#pragma unroll
      for (int n = 0; n < kDimGroups; ++n) {
        o[n][0] *= corr[0];
        o[n][1] *= corr[0];
        o[n][2] *= corr[1];
        o[n][3] *= corr[1];
      }
      // O += P V: two key groups of S make one A fragment of P.
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        const uint32_t pa[4] = {pack_half2(s[2 * kk][0], s[2 * kk][1]), pack_half2(s[2 * kk][2], s[2 * kk][3]),
                                pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int n2 = 0; n2 < kD / 16; ++n2) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, vst + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kS + n2 * 16 + (lane / 16) * 8);
          mma(o[2 * n2], pa, b[0], b[1]);
          mma(o[2 * n2 + 1], pa, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with stage st before the next iteration refills it
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (!used[i]) continue;
    const int m = warp * 16 + lane / 4 + 8 * i;
    float* out = a.out + (int64_t(first_row + m / group) * a.n_heads + g * group + m % group) * D;
    const float inv = l_run[i] > 0.0f ? 1.0f / l_run[i] : 0.0f;
#pragma unroll
    for (int n = 0; n < kDimGroups; ++n) {
      const int d = n * 8 + (lane % 4) * 2;
      if (d < D) *reinterpret_cast<float2*>(out + d) = make_float2(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
    }
  }
}

template <int kD, bool kFp8>
void launch(const Params& p, int64_t n_tiles) {
  constexpr size_t bytes = shared_bytes<kD, kFp8>();
  static const bool attribute_set = [] {
    KILN_CUDA_CHECK(cudaFuncSetAttribute(paged_prompt_kernel<kD, kFp8>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         int(bytes)));
    return true;
  }();
  (void)attribute_set;
  const dim3 grid(unsigned(n_tiles), unsigned(p.a.kv.n_kv_heads));
  launch_pdl(paged_prompt_kernel<kD, kFp8>, grid, dim3(kThreads), bytes, p.a.stream, p);
}

template <bool kFp8>
void launch_dims(const Params& p, int64_t n_tiles) {
  if (p.a.kv.head_dim <= 32) launch<32, kFp8>(p, n_tiles);
  else if (p.a.kv.head_dim <= 64) launch<64, kFp8>(p, n_tiles);
  else launch<128, kFp8>(p, n_tiles);
}

}  // namespace

bool paged_prompt_attention_supported(const PagedKvLayout& kv, int n_heads) {
  const int chunk = kv.dtype == KvDType::F16 ? 8 : kv.dtype == KvDType::F8 ? 16 : 0;  // values in 16 bytes
  return chunk > 0 && kv.head_dim % chunk == 0 && kv.head_dim >= chunk && kv.head_dim <= kMaxDim &&
         kv.n_kv_heads >= 1 && n_heads % kv.n_kv_heads == 0 && n_heads / kv.n_kv_heads <= kSlots;
}

int paged_prompt_tile_rows(int n_heads, int n_kv_heads) { return kSlots / (n_heads / n_kv_heads); }

void paged_prompt_attention(const PagedAttentionArgs& a, const int32_t* tiles, int64_t n_tiles) {
  KILN_CHECK(n_tiles >= 0 && n_tiles < (int64_t(1) << 31), "cuda paged_prompt_attention: {} tiles", n_tiles);
  if (n_tiles == 0) return;
  check_paged_layout(a.kv, "paged_prompt_attention");
  KILN_CHECK(paged_prompt_attention_supported(a.kv, a.n_heads),
             "cuda paged_prompt_attention: needs an f16 or fp8 pool, head_dim a multiple of 8 (fp8: 16) up to {} and "
             "at most {} query heads a kv head (here {}, head_dim {}, {} heads over {})",
             kMaxDim, kSlots, kv_dtype_name(a.kv.dtype), a.kv.head_dim, a.n_heads, a.kv.n_kv_heads);
  KILN_CHECK(a.scale > 0 && std::isfinite(a.scale), "cuda paged_prompt_attention: scale {} must be positive", a.scale);
  KILN_CHECK(a.window >= 0, "cuda paged_prompt_attention: window {}", a.window);
  KILN_CHECK(a.q != nullptr && a.out != nullptr && a.row_seq != nullptr && a.row_position != nullptr &&
                 tiles != nullptr,
             "cuda paged_prompt_attention: null input, output or tiles");
  const int64_t width = int64_t(a.n_heads) * a.kv.head_dim, q_stride = a.q_stride > 0 ? a.q_stride : width;
  KILN_CHECK(q_stride >= width && q_stride % 2 == 0 && reinterpret_cast<uintptr_t>(a.q) % 8 == 0,
             "cuda paged_prompt_attention: query rows {} floats apart hold {} heads of {} (an even stride, 8-byte "
             "aligned)",
             q_stride, a.n_heads, a.kv.head_dim);
  KILN_CHECK(reinterpret_cast<uintptr_t>(a.kv.k_pool) % 16 == 0 && reinterpret_cast<uintptr_t>(a.kv.v_pool) % 16 == 0 &&
                 reinterpret_cast<uintptr_t>(a.out) % 8 == 0,
             "cuda paged_prompt_attention: the pools must be 16-byte aligned and the output 8-byte aligned");
  const Params p{a, tiles, q_stride, a.scale * kLog2e};
  if (a.kv.dtype == KvDType::F8) launch_dims<true>(p, n_tiles);
  else launch_dims<false>(p, n_tiles);
}

}  // namespace kiln::cuda
