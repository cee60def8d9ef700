#include "kernels/cuda/gemv.h"

#include <algorithm>
#include <cstdint>

#include "engine/error.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/gemv_device.cuh"
#include "kernels/cuda/launch_pdl.cuh"

namespace kiln::cuda {
namespace {

using namespace gemv_detail;

constexpr size_t kDefaultSmemBytes = 48 * 1024;  // above this a kernel must opt in
constexpr int kQuantizeThreads = 1024;
constexpr int64_t kMinQuantizeOnceInputs = 2048;

// A chunk of a warp's tile in registers, with where it came from.
template <DType kW, int kRows, int kLoads>
struct LoadedChunk {
  Chunk<kW, kRows, kLoads> data;
  int64_t tile;
  int chunk;
  bool last;  // of its tile: the tile's sums are complete after it
};

// Where a warp loads next: the rows of its tile (pointers found once a tile, not once a load), the chunk
// within them and the chunks left of the tile. With p.rotate each tile starts at chunk tile % n_chunks,
// spreading the warps' addresses; the chunk then advances by one and wraps, so the loop divides once a
// tile. Vector indices fit 32 bits (n_in < 2^31).
template <DType kW, int kRows>
struct TileCursor {
  const uint4* w[kRows];
  const uint16_t* scale[kRows];
  int64_t tile;
  int chunk, left;

  __device__ void start(const GemvParams& p, int64_t t, int n_chunks) {
    tile = t;
    chunk = p.rotate ? int(uint32_t(t) % uint32_t(n_chunks)) : 0;
    left = n_chunks;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      // Rows past the end read row 0 instead: their sums are never stored, and the loads need no test.
      const int64_t row = row_valid<kRows>(p, t, r) ? row_of<kRows>(p, t, r) : 0;
      w[r] = reinterpret_cast<const uint4*>(static_cast<const char*>(p.w) + row * p.n_in * kBytesOf<kW>);
      scale[r] = p.scales + row * p.n_groups;
    }
  }

  // The chunk's loads, issued (loads past the end of the rows are left out, and so is their multiply in
  // multiply_chunk); then the cursor moves on.
  template <int kLoads>
  __device__ __forceinline__ void load_and_advance(const GemvParams& p, int n_vec, int n_chunks, int64_t step,
                                                   LoadedChunk<kW, kRows, kLoads>& c) {
    const int first = chunk * (32 * kLoads) + int(threadIdx.x % 32);
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const int v = first + u * 32;
      if (v >= n_vec) break;
      const int group = v * 16 >> p.group_shift;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        c.data.w[r][u] = __ldg(w[r] + first + u * 32);
        if constexpr (kW == DType::I8) c.data.scale[r][u] = __ldg(scale[r] + group);
      }
    }
    c.tile = tile;
    c.chunk = chunk;
    c.last = left == 1;
    if (++chunk == n_chunks) chunk = 0;
    if (--left == 0) start(p, tile + step, n_chunks);
  }
};

// 16-byte loads: n_in a multiple of the values per load, 16-byte aligned rows, int8 groups a power of
// two of at least 16. Each warp walks its tiles chunk by chunk, the next chunk's loads in flight while
// this one is multiplied; the two chunks alternate between two sets of registers (no copy a step).
// kStagedX: x staged in shared memory (for int8: normalised and quantized there by every block), else
// read from global memory (through L1) where it is used (int8: p.xq, quantized once before).
template <DType kW, int kTokens, int kRows, int kLoads, bool kStagedX>
__global__ void __launch_bounds__(kThreads, kTokens == 1 ? 2 : 1) gemv_vector_kernel(GemvParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float scratch[32];
  const int64_t step = int64_t(gridDim.x) * kWarps;
  const int n_vec = int(p.n_in / kPerLoad<kW>);
  const int n_chunks = (n_vec + 32 * kLoads - 1) / (32 * kLoads);
  TileCursor<kW, kRows> fill;
  fill.start(p, int64_t(blockIdx.x) * kWarps + threadIdx.x / 32, n_chunks);
  LoadedChunk<kW, kRows, kLoads> a, b;
  pdl_launch_dependents();
  fill.load_and_advance(p, n_vec, n_chunks, step, a);  // in flight while x is staged
  pdl_wait();
  if constexpr (kStagedX) stage<kW>(p, smem, scratch);
  float acc[kRows][kTokens];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < kTokens; ++t) acc[r][t] = 0.0f;
  // One step: the next chunk's loads into `next`, then `cur` multiplied; false when the warp is done.
  const auto step_with = [&](const LoadedChunk<kW, kRows, kLoads>& cur, LoadedChunk<kW, kRows, kLoads>& next) {
    if (cur.tile >= p.n_tiles) return false;
    fill.load_and_advance(p, n_vec, n_chunks, step, next);
    multiply_chunk<kW, kTokens, kRows, kLoads, kStagedX>(p, smem, cur.chunk, cur.data, acc);
    if (cur.last) store_tile(p, cur.tile, acc);
    return true;
  };
  while (step_with(a, b) && step_with(b, a)) {
  }
}

// One token's x normalised (if asked, writing norm_out) and quantized per group once, by one block, into
// xq and xq_scale: staging x in every block of the int8 GEMV was ~30% of its warps' time (Nsight, 7B
// shape). Same device code as that staging, so the same values.
__global__ void __launch_bounds__(kQuantizeThreads) quantize_x_kernel(GemvParams p, int8_t* xq, float* xq_scale) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float scratch[32];
  pdl_launch_dependents();
  pdl_wait();
  stage_quantized(p, smem, scratch);
  const auto* q = reinterpret_cast<const int4*>(smem + p.smem_q);
  for (int64_t i = threadIdx.x; i < p.n_in / 16; i += blockDim.x) reinterpret_cast<int4*>(xq)[i] = q[i];
  const auto* scale = reinterpret_cast<const float*>(smem + p.smem_qscale);
  for (int64_t i = threadIdx.x; i < p.n_groups; i += blockDim.x) xq_scale[i] = scale[i];
}

// Element-wise loads (any shape and alignment), one lane per column.
template <DType kW, int kTokens, int kRows>
__global__ void __launch_bounds__(kThreads) gemv_generic_kernel(GemvParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float scratch[32];
  pdl_launch_dependents();
  pdl_wait();
  if constexpr (kW == DType::I8) stage_quantized(p, smem, scratch);
  else stage_x<1>(p, reinterpret_cast<float*>(smem), scratch);
  const auto* xs = reinterpret_cast<const float*>(smem);
  const auto* qscale = reinterpret_cast<const float*>(smem + p.smem_qscale);
  const auto* q = reinterpret_cast<const int8_t*>(smem + p.smem_q);
  const int lane = threadIdx.x % 32;
  float acc[kRows][kTokens];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < kTokens; ++t) acc[r][t] = 0.0f;
  for (int64_t tile = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; tile < p.n_tiles;
       tile += int64_t(gridDim.x) * kWarps) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (!row_valid<kRows>(p, tile, r)) continue;
      const int64_t row = row_of<kRows>(p, tile, r);
      for (int64_t c = lane; c < p.n_in; c += 32) {
        if constexpr (kW == DType::I8) {
          const int group = group_of(p, int(c));
          const int w = static_cast<const int8_t*>(p.w)[row * p.n_in + c];
          const float w_scale = fp16_bits_to_float(p.scales[row * p.n_groups + group]);
#pragma unroll
          for (int t = 0; t < kTokens; ++t) {
            if (t >= p.n_tokens) break;
            const int64_t i = int64_t(t) * p.n_in + c;
            acc[r][t] += float(w * q[i]) * (w_scale * qscale[int64_t(t) * p.n_groups + group]);
          }
        } else {
          const float w = weight_value<kW>(p.w, nullptr, 0, p.n_in, row, c);
#pragma unroll
          for (int t = 0; t < kTokens; ++t) {
            if (t >= p.n_tokens) break;
            acc[r][t] += w * xs[int64_t(t) * p.n_in + c];
          }
        }
      }
    }
    store_tile(p, tile, acc);
  }
}

// Lets `kernel` take `smem` bytes of dynamic shared memory where that is above the default (with the
// kernels' static scratch).
template <typename Kernel>
void opt_in_smem(Kernel kernel, size_t smem) {
  if (smem + 1024 > kDefaultSmemBytes)
    KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
}

// Launches with programmatic dependent launch (launch_pdl.cuh): the kernel may start while the previous
// one in the stream finishes, and waits for it before reading x (pdl_wait). The grid is as many blocks as
// fit at once, at most one warp per tile.
template <typename Kernel>
void launch(Kernel kernel, const GemvParams& p, size_t smem, const DeviceLimits& device, cudaStream_t stream) {
  opt_in_smem(kernel, smem);
  int per_sm = 0;
  KILN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  KILN_CHECK(per_sm > 0, "cuda gemv: no block of {} threads with {} bytes of shared memory fits", kThreads, smem);
  const int64_t needed = (p.n_tiles + kWarps - 1) / kWarps;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(needed, int64_t(device.multiprocessors) * per_sm));
  launch_pdl(kernel, dim3(unsigned(blocks)), dim3(unsigned(kThreads)), smem, stream, p);
}

size_t align16(size_t n) { return (n + 15) / 16 * 16; }

// int8, one token, register GEMV (the streamed one quantizes x in every block while its weights arrive),
// rows of kMinQuantizeOnceInputs or more: x quantized once by quantize_x_kernel into the GEMM context's
// x16 scratch (free during a GEMV), when the caller gave a context that holds it; sets p.xq and
// p.xq_scale. Else every block of the GEMV quantizes x itself.
// (Measured on an H200: the 7B shape's decode, 4,096 and 11,008 inputs, went from 315 to 344 t/s;
// SmolLM2-135M's, 576 and 1,536 inputs, from 1,025 to 897, the extra launch above its short staging.)
void quantize_once(GemvParams& p, const MatmulArgs& a, size_t smem) {
  const size_t bytes = align16(size_t(p.n_in)) + size_t(p.n_groups) * sizeof(float);
  const GemmContext* context = a.gemm;
  if (p.n_in < kMinQuantizeOnceInputs || context == nullptr ||
      bytes > size_t(context->max_tokens() * context->max_n_in()) * 4)
    return;
  auto* xq = static_cast<int8_t*>(context->x16());
  auto* xq_scale = reinterpret_cast<float*>(xq + align16(size_t(p.n_in)));
  opt_in_smem(quantize_x_kernel, smem);
  launch_pdl(quantize_x_kernel, dim3(1), dim3(kQuantizeThreads), smem, a.stream, p, xq, xq_scale);
  p.xq = xq;
  p.xq_scale = xq_scale;
}

// One token: streamed through shared memory where it can be (gemv_streamed.cu); else two rows per warp,
// x read where used unless it must be staged (int8 not quantized once, the norm, unaligned x), chunks
// rotated. Several tokens: four rows per warp share each x value. (Measured on an H200: fewer warps per
// block for small matrices only multiplied the per-block staging.)
template <DType kW, int kTokens>
void launch_vector(GemvParams& p, const MatmulArgs& a, size_t smem, const DeviceLimits& device) {
  const cudaStream_t s = a.stream;
  if constexpr (kTokens == 1 && kW != DType::F32) {
    p.rotate = true;
    p.n_tiles = tiles_of(p, 2);
    if (a.stream_weights && launch_streamed(p, kW, smem, device, s)) return;
    if constexpr (kW == DType::I8) quantize_once(p, a, smem);
    const bool staged = kW == DType::I8 ? p.xq == nullptr : p.norm || !p.x_vec4;
    if (staged) launch(gemv_vector_kernel<kW, 1, 2, 4, true>, p, smem, device, s);
    else launch(gemv_vector_kernel<kW, 1, 2, 4, false>, p, 0, device, s);
  } else {
    p.rotate = false;
    p.n_tiles = tiles_of(p, 4);
    launch(gemv_vector_kernel<kW, kTokens, 4, 2, true>, p, smem, device, s);
  }
}

template <DType kW>
void launch_typed(GemvParams& p, const MatmulArgs& a, bool vector, size_t smem, const DeviceLimits& device) {
  const cudaStream_t s = a.stream;
  if (!vector) {
    p.n_tiles = tiles_of(p, 2);
    if (p.n_tokens == 1) launch(gemv_generic_kernel<kW, 1, 2>, p, smem, device, s);
    else launch(gemv_generic_kernel<kW, kGemvMaxTokens, 2>, p, smem, device, s);
  } else if (p.n_tokens == 1) {
    launch_vector<kW, 1>(p, a, smem, device);
  } else {
    launch_vector<kW, kGemvMaxTokens>(p, a, smem, device);
  }
}

// Shared memory for n_tokens: x in f32, then for int8 weights the quantized x's scales and values. Sets
// p's offsets.
size_t smem_bytes(GemvParams& p, DType dtype, int64_t n_tokens) {
  const bool int8 = dtype == DType::I8;
  const size_t xf = size_t(n_tokens * p.n_in) * sizeof(float);
  if (!int8) return xf;
  p.smem_qscale = align16(xf);
  p.smem_q = align16(p.smem_qscale + size_t(n_tokens * p.n_groups) * sizeof(float));
  return p.smem_q + size_t(n_tokens * p.n_in);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void gemv(const MatmulArgs& a) {
  const DeviceMatrix& w = a.weight;
  const bool int8 = w.dtype == DType::I8;
  const int per_load = 16 / int(dtype_bytes(w.dtype));
  GemvParams p{};
  p.group_shift = -1;
  for (int shift = 0; shift < 31 && int8; ++shift)
    if (int64_t(1) << shift == w.group_size) p.group_shift = shift;
  const bool vector = !a.force_generic && w.cols % per_load == 0 && aligned16(w.data) &&
                      (!int8 || (w.group_size >= 16 && p.group_shift >= 0));
  p.w = w.data;
  p.scales = w.scales;
  p.group_size = int8 ? int(w.group_size) : 0;
  p.n_groups = int8 ? w.cols / w.group_size : 0;
  p.n_out = w.rows;
  p.n_in = w.cols;
  p.bias = a.bias;
  p.gated = a.gated.enabled;
  p.act = a.gated.act;
  p.n_y = p.gated ? w.rows / 2 : w.rows;
  p.norm = a.norm.enabled;
  p.layer_norm = a.norm.kind == NormKind::Layer;
  p.norm_weight = a.norm.weight;
  p.norm_bias = a.norm.bias;
  p.eps = a.norm.eps;
  p.x_vec4 = aligned16(a.x) && w.cols % 4 == 0;

  // As many tokens per pass as shared memory holds (all of them, but for long rows and many tokens).
  const DeviceLimits device = device_limits();
  const size_t smem_limit = size_t(device.smem_optin) - 1024;  // the kernels' static scratch, with room
  int64_t per_pass = a.n_tokens;
  while (per_pass > 1 && smem_bytes(p, w.dtype, per_pass) > smem_limit) --per_pass;
  KILN_CHECK(smem_bytes(p, w.dtype, 1) <= smem_limit,
             "cuda matmul: rows of {} inputs do not fit the GEMV's {} bytes of shared memory", w.cols, smem_limit);
  for (int64_t t0 = 0; t0 < a.n_tokens; t0 += per_pass) {
    const int64_t n = std::min(per_pass, a.n_tokens - t0);
    p.n_tokens = int(n);
    p.x = a.x + t0 * w.cols;
    p.y = a.y + t0 * p.n_y;
    p.residual = a.residual != nullptr ? a.residual + t0 * p.n_y : nullptr;
    p.norm_out = a.norm.out != nullptr ? a.norm.out + t0 * w.cols : nullptr;
    const size_t smem = smem_bytes(p, w.dtype, n);
    switch (w.dtype) {
      case DType::F16: launch_typed<DType::F16>(p, a, vector, smem, device); break;
      case DType::BF16: launch_typed<DType::BF16>(p, a, vector, smem, device); break;
      case DType::I8: launch_typed<DType::I8>(p, a, vector, smem, device); break;
      default: launch_typed<DType::F32>(p, a, vector, smem, device); break;
    }
  }
}

}  // namespace kiln::cuda
