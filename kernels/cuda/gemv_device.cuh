// Device-side parts shared by the GEMV kernels (kernels/cuda/gemv.cu, gemv_streamed.cu): their parameters,
// the staging of x in shared memory (normalised or quantized there when asked), the multiply of 16-byte
// weight loads with the staged x, and the epilogue that writes a tile of rows.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/activate.cuh"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/quantize.cuh"

namespace kiln::cuda::gemv_detail {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

struct GemvParams {
  const void* w;             // [n_out, n_in]
  const uint16_t* scales;    // int8: fp16 [n_out, n_groups]
  int group_size;            // int8 (n_in < 2^31, so columns and groups fit 32 bits)
  int64_t n_groups, n_out, n_in;
  const float* x;            // [n_tokens, n_in]
  float* y;                  // [n_tokens, n_y]
  const float* bias;         // [n_out] or nullptr
  const float* residual;     // [n_tokens, n_y] or nullptr; may equal y
  int n_tokens;
  int64_t n_y;               // outputs per token: n_out, or n_out / 2 gated
  int64_t n_tiles;           // tiles of rows, one warp each at a time
  bool gated;
  Activation act;
  bool norm, layer_norm;
  const float* norm_weight;  // [n_in]
  const float* norm_bias;    // [n_in] or nullptr
  float eps;
  float* norm_out;           // [n_tokens, n_in]
  bool x_vec4;               // x 16-byte aligned, n_in % 4 == 0
  int group_shift;           // int8: log2(group_size), or -1 when not a power of two
  bool rotate;               // each tile starts its rows at a different chunk (spreads addresses)
  size_t smem_qscale, smem_q;  // int8: offsets of the quantized x's scales and values in shared memory
  // int8, x quantized once before the GEMV (gemv.cu's quantize_x_kernel): [n_tokens, n_in] and
  // [n_tokens, n_groups] in global memory, which the kernels read instead of staging x.
  const int8_t* xq;
  const float* xq_scale;
};

template <DType kW> constexpr int kBytesOf = kW == DType::F32 ? 4 : kW == DType::I8 ? 1 : 2;
template <DType kW> constexpr int kPerLoad = 16 / kBytesOf<kW>;

// Slot of x[c] in shared memory. With 8 weights per load (f16, bf16) the 8 x values of a load are two
// float4s, the first halves of all loads before the second halves: consecutive lanes then read
// consecutive float4s (no bank conflicts).
template <int kPer>
__device__ __forceinline__ int64_t x_slot(int64_t c, int64_t n_in) {
  if constexpr (kPer == 8) return ((c & 4) != 0 ? n_in / 2 : 0) + (c >> 3) * 4 + (c & 3);
  else return c;
}

// Every token of x into xs [n_tokens, n_in] (x_slot order), the loads in batches that are all in flight
// at once (a staging loop of dependent loads would cost one L2 latency per trip). Sizes that reach shared
// memory fit 32 bits. No barrier at the end.
template <int kPer>
__device__ void stage_raw(const GemvParams& p, float* xs) {
  constexpr int kBatch = 8;
  const int n_in = int(p.n_in), threads = int(blockDim.x);
  const int width = p.x_vec4 ? 4 : 1;
  const int n = p.n_tokens * n_in / width;
  for (int base = 0; base < n; base += kBatch * threads) {
    float4 v[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = base + b * threads + int(threadIdx.x);
      if (i >= n) break;
      if (p.x_vec4) v[b] = reinterpret_cast<const float4*>(p.x)[i];
      else v[b].x = p.x[i];
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = base + b * threads + int(threadIdx.x);
      if (i >= n) break;
      const int e = i * width, t = e / n_in, c = e - t * n_in;
      float* slot = xs + t * n_in + x_slot<kPer>(c, n_in);
      if (p.x_vec4) *reinterpret_cast<float4*>(slot) = v[b];  // c % 4 == 0: 4 consecutive slots
      else *slot = v[b].x;
    }
  }
}

// x staged, then normalised per token if asked; block 0 also writes the normalised x out for the stages
// that read it later. Ends with a barrier.
template <int kPer>
__device__ void stage_x(const GemvParams& p, float* xs, float* scratch) {
  stage_raw<kPer>(p, xs);
  __syncthreads();
  if (!p.norm) return;
  const int64_t n_in = p.n_in;
  for (int t = 0; t < p.n_tokens; ++t) {
    float* st = xs + int64_t(t) * n_in;
    // Each thread rewrites only the slots it summed, so the writes need no barrier after the sums.
    float mean = 0.0f;
    if (p.layer_norm) {
      float sum = 0.0f;
      for (int64_t c = threadIdx.x; c < n_in; c += blockDim.x) sum += st[x_slot<kPer>(c, n_in)];
      mean = block_sum(sum, scratch) / float(n_in);
    }
    float sum_sq = 0.0f;
    for (int64_t c = threadIdx.x; c < n_in; c += blockDim.x) {
      const float d = st[x_slot<kPer>(c, n_in)] - mean;
      sum_sq += d * d;
    }
    const float scale = rsqrtf(block_sum(sum_sq, scratch) / float(n_in) + p.eps);
    // The norm's weights in batches all in flight at once (the stores to norm_out could alias them, so
    // a plain loop would wait for each load in turn).
    constexpr int kBatch = 8;
    for (int64_t base = threadIdx.x; base < n_in; base += kBatch * int64_t(blockDim.x)) {
      float w[kBatch], b[kBatch];
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int64_t c = base + k * int64_t(blockDim.x);
        w[k] = c < n_in ? p.norm_weight[c] : 0.0f;
        b[k] = c < n_in && p.norm_bias != nullptr ? p.norm_bias[c] : 0.0f;
      }
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int64_t c = base + k * int64_t(blockDim.x);
        if (c < n_in) {
          float* slot = st + x_slot<kPer>(c, n_in);
          const float v = (*slot - mean) * scale * w[k] + b[k];
          *slot = v;
          if (blockIdx.x == 0) p.norm_out[int64_t(t) * n_in + c] = v;
        }
      }
    }
  }
  __syncthreads();
}

// x quantized per weight group: q [n_tokens, n_in] and its scales [n_tokens, n_groups], from x staged in
// f32 at the start of smem (normalised if asked), by teams of lanes, one team per group.
inline __device__ void stage_quantized(const GemvParams& p, unsigned char* smem, float* scratch) {
  const auto* xf = reinterpret_cast<const float*>(smem);
  auto* qscale = reinterpret_cast<float*>(smem + p.smem_qscale);
  auto* q = reinterpret_cast<int8_t*>(smem + p.smem_q);
  stage_x<1>(p, reinterpret_cast<float*>(smem), scratch);
  // Groups of consecutive tokens are consecutive in x (n_in is a multiple of the group size), so group i
  // starts at i * group_size. Every lane runs the same number of rounds: the shuffles need the whole warp.
  const int team = quantize_team_lanes(p.group_size);
  const int teams = int(blockDim.x) / team, n = p.n_tokens * int(p.n_groups);
  for (int base = 0; base < n; base += teams) {
    const int i = base + int(threadIdx.x) / team;
    const bool valid = i < n;
    const int start = (valid ? i : 0) * p.group_size;
    quantize_group_team(xf + start, q + start, qscale + (valid ? i : 0), p.group_size, team, valid);
  }
  __syncthreads();
}

template <DType kW>
__device__ __forceinline__ void stage(const GemvParams& p, unsigned char* smem, float* scratch) {
  if constexpr (kW == DType::I8) stage_quantized(p, smem, scratch);
  else stage_x<kPerLoad<kW>>(p, reinterpret_cast<float*>(smem), scratch);
}

__device__ __forceinline__ int group_of(const GemvParams& p, int col) {
  return p.group_shift >= 0 ? col >> p.group_shift : col / p.group_size;
}

// Row r of a tile: kRows consecutive rows, or when gated kRows / 2 gate rows and the matching up rows.
template <int kRows>
__device__ __forceinline__ int64_t row_of(const GemvParams& p, int64_t tile, int r) {
  if constexpr (kRows % 2 == 0) {
    if (p.gated) {
      constexpr int kHalf = kRows / 2;
      return r < kHalf ? tile * kHalf + r : p.n_y + tile * kHalf + (r - kHalf);
    }
  }
  return tile * kRows + r;
}

template <int kRows>
__device__ __forceinline__ bool row_valid(const GemvParams& p, int64_t tile, int r) {
  if constexpr (kRows % 2 == 0) {
    if (p.gated) return tile * (kRows / 2) + r % (kRows / 2) < p.n_y;
  }
  return tile * kRows + r < p.n_y;
}

// Tiles of `rows` rows (row_of): the outputs over rows, or when gated rows / 2 gate rows and their up rows.
inline int64_t tiles_of(const GemvParams& p, int rows) {
  return p.gated ? (p.n_y + rows / 2 - 1) / (rows / 2) : (p.n_y + rows - 1) / rows;
}

// acc [kRows][kTokens]: this lane's partial sums of the tile; the warp adds them up and writes the
// outputs, one per lane.
template <int kRows, int kTokens>
__device__ __forceinline__ void store_tile(const GemvParams& p, int64_t tile, float (&acc)[kRows][kTokens]) {
  static_assert(kRows * kTokens <= 32, "one output per lane");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    if (kTokens > 1 && t >= p.n_tokens) break;  // one-token kernels run with one token only
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r][t] = warp_sum(acc[r][t]);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (lane != t * kRows + r) continue;
      float* y = p.y + int64_t(t) * p.n_y;
      if (!p.gated) {
        const int64_t row = tile * kRows + r;
        if (row >= p.n_y) continue;
        float v = acc[r][t];
        if (p.bias != nullptr) v += p.bias[row];
        if (p.residual != nullptr) v += p.residual[int64_t(t) * p.n_y + row];
        y[row] = v;
      } else if constexpr (kRows % 2 == 0) {
        constexpr int kHalf = kRows / 2;
        const int64_t j = tile * kHalf + r;
        if (r >= kHalf || j >= p.n_y) continue;
        float gate = acc[r][t], up = acc[r + kHalf][t];
        if (p.bias != nullptr) {
          gate += p.bias[j];
          up += p.bias[p.n_y + j];
        }
        y[j] = activate(p.act, gate) * up;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < kTokens; ++t) acc[r][t] = 0.0f;
}

// One chunk of a tile in registers: kLoads 16-byte loads per row and lane (int8: and each load's
// weight group scale, still fp16 bits so that nothing waits for the loads here).
template <DType kW, int kRows, int kLoads>
struct Chunk {
  uint4 w[kRows][kLoads];
  uint16_t scale[kRows][kLoads];
};

// The 16 bytes of one load as 16 / element-size f32 values.
template <DType kW>
__device__ __forceinline__ void widen(const uint4& raw, float* out) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (kW == DType::F32) {
      out[i] = __uint_as_float(words[i]);
    } else if constexpr (kW == DType::F16) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[i]));
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    } else {
      out[2 * i] = __uint_as_float(words[i] << 16);
      out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  }
}

template <DType kW, int kTokens, int kRows, int kLoads, bool kStagedX>
__device__ __forceinline__ void multiply_chunk(const GemvParams& p, const unsigned char* smem, int64_t chunk,
                                               const Chunk<kW, kRows, kLoads>& c, float (&acc)[kRows][kTokens]) {
  constexpr int kPer = kPerLoad<kW>;
  const int lane = threadIdx.x % 32;
  const int n_vec = int(p.n_in / kPer);
#pragma unroll
  for (int u = 0; u < kLoads; ++u) {
    const int v = int(chunk) * (32 * kLoads) + u * 32 + lane;
    if (v >= n_vec) break;
    if constexpr (kW == DType::I8) {
      const int group = v * 16 >> p.group_shift;
      const auto* qscale = kStagedX ? reinterpret_cast<const float*>(smem + p.smem_qscale) : p.xq_scale;
      const auto* q = kStagedX ? reinterpret_cast<const int4*>(smem + p.smem_q) : reinterpret_cast<const int4*>(p.xq);
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        if (kTokens > 1 && t >= p.n_tokens) break;
        const int4 xq = kStagedX ? q[t * n_vec + v] : __ldg(q + t * n_vec + v);
        const int at = t * int(p.n_groups) + group;
        const float x_scale = kStagedX ? qscale[at] : __ldg(qscale + at);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const uint4 w = c.w[r][u];
          int dot = __dp4a(int(w.x), xq.x, 0);
          dot = __dp4a(int(w.y), xq.y, dot);
          dot = __dp4a(int(w.z), xq.z, dot);
          dot = __dp4a(int(w.w), xq.w, dot);
          acc[r][t] += float(dot) * (fp16_bits_to_float(c.scale[r][u]) * x_scale);
        }
      }
    } else {
      float w[kRows][kPer];
#pragma unroll
      for (int r = 0; r < kRows; ++r) widen<kW>(c.w[r][u], w[r]);
      const auto* xs = reinterpret_cast<const float4*>(smem);
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        if (kTokens > 1 && t >= p.n_tokens) break;
        float x[kPer];
        float4 a, b;
        if constexpr (kStagedX) {
          const float4* xt = xs + t * int(p.n_in / 4);
          a = xt[v];
          if constexpr (kPer == 8) b = xt[int(p.n_in / 8) + v];
        } else {
          const auto* xt = reinterpret_cast<const float4*>(p.x + int64_t(t) * p.n_in) + v * (kPer / 4);
          a = __ldg(xt);
          if constexpr (kPer == 8) b = __ldg(xt + 1);
        }
        x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w;
        if constexpr (kPer == 8) x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          float dot = 0.0f;
#pragma unroll
          for (int k = 0; k < kPer; ++k) dot += w[r][k] * x[k];
          acc[r][t] += dot;
        }
      }
    }
  }
}

// One token through the streamed GEMV (gemv_streamed.cu) when it applies: sm_90, f16, bf16 or int8 weights
// of 16 MiB or more on the vector path, x (smem_x bytes staged) and two stages of the warps' rings fitting
// shared memory. Sets p.n_tiles for its tiles. Returns false, launching nothing, when it does not apply.
bool launch_streamed(GemvParams& p, DType dtype, size_t smem_x, const DeviceLimits& device, cudaStream_t stream);

}  // namespace kiln::cuda::gemv_detail
