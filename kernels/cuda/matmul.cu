#include "kernels/cuda/matmul.h"

#include <algorithm>
#include <cstdint>

#include "engine/error.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/norm.h"

#define KILN_CUBLAS_CHECK(call)                                                                      \
  do {                                                                                               \
    const cublasStatus_t kiln_status_ = (call);                                                      \
    if (kiln_status_ != CUBLAS_STATUS_SUCCESS)                                                       \
      ::kiln::fail("cuBLAS error {} in `{}` at {}:{}", cublasGetStatusString(kiln_status_), #call, __FILE__, \
                   __LINE__);                                                                        \
  } while (0)

namespace kiln::cuda {
namespace {

constexpr int kGemvThreads = 128;                   // 4 warps, one output row each
constexpr int kGemvRowsPerBlock = kGemvThreads / 32;
constexpr int kLoadsInFlight = 8;                   // 16-byte weight loads per lane before the first use
constexpr size_t kFusedNormMaxBytes = 44 * 1024;    // x of every token in shared memory (48 KB without opt-in)
// Every block of a fused-norm GEMV normalises all of x again: worth a launch saved for a small matrix
// (decode of a small model is launch-bound), a loss for a large one, whose GEMV is bandwidth-bound.
constexpr size_t kFusedNormMaxWeightBytes = size_t(16) << 20;
constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;
constexpr int kThreads = 256;

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

struct GemvParams {
  const void* w;
  const uint16_t* scales;
  int64_t group_size, n_out, n_in;
  const float* x;
  float* y;
  const float* bias;
  int n_tokens;
  bool norm, layer_norm;
  const float* norm_weight;
  const float* norm_bias;
  float eps;
  float* norm_out;
};

template <DType kW> constexpr int kBytesOf = kW == DType::F32 ? 4 : kW == DType::I8 ? 1 : 2;

// The 16 bytes of one load as 16 / element-size f32 values.
template <DType kW>
__device__ __forceinline__ void widen(const uint4& raw, float* out) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t word = i == 0 ? raw.x : i == 1 ? raw.y : i == 2 ? raw.z : raw.w;
    if constexpr (kW == DType::F32) {
      out[i] = __uint_as_float(word);
    } else if constexpr (kW == DType::F16) {
      out[2 * i] = fp16_bits_to_float(uint16_t(word & 0xffffu));
      out[2 * i + 1] = fp16_bits_to_float(uint16_t(word >> 16));
    } else if constexpr (kW == DType::BF16) {
      out[2 * i] = __uint_as_float(word << 16);
      out[2 * i + 1] = __uint_as_float(word & 0xffff0000u);
    } else {
#pragma unroll
      for (int b = 0; b < 4; ++b) out[4 * i + b] = float(int8_t((word >> (8 * b)) & 0xffu));
    }
  }
}

// The fused input norm: every block normalises all of x into shared memory (x is small when the GEMV
// runs); block 0 also writes the result out for the stages that read it later.
__device__ void normalise_input(const GemvParams& p, float* xs, float* scratch) {
  const int64_t n = int64_t(p.n_tokens) * p.n_in;
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) xs[e] = p.x[e];
  __syncthreads();
  for (int t = 0; t < p.n_tokens; ++t) {
    float* row = xs + int64_t(t) * p.n_in;
    float mean = 0.0f;
    if (p.layer_norm) {
      float sum = 0.0f;
      for (int64_t i = threadIdx.x; i < p.n_in; i += blockDim.x) sum += row[i];
      mean = block_sum(sum, scratch) / float(p.n_in);
    }
    float sum_sq = 0.0f;
    for (int64_t i = threadIdx.x; i < p.n_in; i += blockDim.x) sum_sq += (row[i] - mean) * (row[i] - mean);
    const float scale = rsqrtf(block_sum(sum_sq, scratch) / float(p.n_in) + p.eps);
    // Each thread rewrites only the elements it summed, so no barrier is needed before the writes.
    for (int64_t i = threadIdx.x; i < p.n_in; i += blockDim.x) {
      float v = (row[i] - mean) * scale * p.norm_weight[i];
      if (p.norm_bias != nullptr) v += p.norm_bias[i];
      row[i] = v;
      if (blockIdx.x == 0) p.norm_out[int64_t(t) * p.n_in + i] = v;
    }
  }
  __syncthreads();
}

// One warp per output row. kVector: 16-byte weight loads (n_in a multiple of the values per load,
// 16-byte aligned rows, int8 groups a multiple of 16); else one element per lane and step.
template <DType kW, int kMaxTokens, bool kVector>
__global__ void __launch_bounds__(kGemvThreads) gemv_kernel(GemvParams p) {
  extern __shared__ float xs[];  // [n_tokens, n_in], fused norm only
  __shared__ float scratch[32];
  const float* x = p.x;
  if (p.norm) {
    normalise_input(p, xs, scratch);
    x = xs;
  }
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kGemvRowsPerBlock + threadIdx.x / 32;
  if (row >= p.n_out) return;
  const int n_tokens = p.n_tokens;
  float acc[kMaxTokens];
#pragma unroll
  for (int m = 0; m < kMaxTokens; ++m) acc[m] = 0.0f;

  if constexpr (kVector) {
    constexpr int kPer = 16 / kBytesOf<kW>;
    const char* w_row = static_cast<const char*>(p.w) + row * p.n_in * kBytesOf<kW>;
    const int64_t groups_per_row = kW == DType::I8 ? p.n_in / p.group_size : 0;
    for (int64_t base = 0; base < p.n_in; base += int64_t(32) * kPer * kLoadsInFlight) {
      uint4 raw[kLoadsInFlight];
#pragma unroll
      for (int u = 0; u < kLoadsInFlight; ++u) {
        const int64_t c = base + int64_t(u * 32 + lane) * kPer;
        raw[u] = c < p.n_in ? __ldg(reinterpret_cast<const uint4*>(w_row + c * kBytesOf<kW>)) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kLoadsInFlight; ++u) {
        const int64_t c = base + int64_t(u * 32 + lane) * kPer;
        if (c >= p.n_in) break;
        float w[kPer];
        widen<kW>(raw[u], w);
        float scale = 1.0f;
        if constexpr (kW == DType::I8) scale = fp16_bits_to_float(p.scales[row * groups_per_row + c / p.group_size]);
#pragma unroll
        for (int m = 0; m < kMaxTokens; ++m) {
          if (m < n_tokens) {
            const float4* xv = reinterpret_cast<const float4*>(x + int64_t(m) * p.n_in + c);
            float dot = 0.0f;
#pragma unroll
            for (int q = 0; q < kPer / 4; ++q) {
              const float4 v = xv[q];
              dot += w[4 * q] * v.x + w[4 * q + 1] * v.y + w[4 * q + 2] * v.z + w[4 * q + 3] * v.w;
            }
            acc[m] += kW == DType::I8 ? dot * scale : dot;
          }
        }
      }
    }
  } else {
    for (int64_t c = lane; c < p.n_in; c += 32) {
      const float w = weight_value<kW>(p.w, p.scales, p.group_size, p.n_in, row, c);
#pragma unroll
      for (int m = 0; m < kMaxTokens; ++m) {
        if (m >= n_tokens) break;
        acc[m] += w * x[int64_t(m) * p.n_in + c];
      }
    }
  }
#pragma unroll
  for (int m = 0; m < kMaxTokens; ++m) {
    if (m >= n_tokens) break;
    const float v = warp_sum(acc[m]);
    if (lane == 0) p.y[int64_t(m) * p.n_out + row] = p.bias != nullptr ? v + p.bias[row] : v;
  }
}

template <DType kW>
void gemv_launch_typed(const GemvParams& p, bool vector, cudaStream_t stream) {
  const unsigned grid = unsigned((p.n_out + kGemvRowsPerBlock - 1) / kGemvRowsPerBlock);
  const size_t smem = p.norm ? size_t(p.n_tokens) * size_t(p.n_in) * sizeof(float) : 0;
  if (p.n_tokens == 1) {
    if (vector) gemv_kernel<kW, 1, true><<<grid, kGemvThreads, smem, stream>>>(p);
    else gemv_kernel<kW, 1, false><<<grid, kGemvThreads, smem, stream>>>(p);
  } else {
    if (vector) gemv_kernel<kW, kGemvMaxTokens, true><<<grid, kGemvThreads, smem, stream>>>(p);
    else gemv_kernel<kW, kGemvMaxTokens, false><<<grid, kGemvThreads, smem, stream>>>(p);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void gemv_launch(const MatmulArgs& a, const float* x, bool fuse_norm) {
  const DeviceMatrix& w = a.weight;
  const int per_load = 16 / int(dtype_bytes(w.dtype));
  const bool vector = !a.force_generic && w.cols % per_load == 0 && aligned16(w.data) &&
                      (fuse_norm || aligned16(x)) && (w.dtype != DType::I8 || w.group_size % 16 == 0);
  const GemvParams p{w.data, w.scales, w.group_size, w.rows, w.cols, x, a.y, a.bias, int(a.n_tokens),
                     fuse_norm, a.norm.kind == NormKind::Layer, a.norm.weight, a.norm.bias, a.norm.eps, a.norm.out};
  switch (w.dtype) {
    case DType::F16: gemv_launch_typed<DType::F16>(p, vector, a.stream); break;
    case DType::BF16: gemv_launch_typed<DType::BF16>(p, vector, a.stream); break;
    case DType::I8: gemv_launch_typed<DType::I8>(p, vector, a.stream); break;
    default: gemv_launch_typed<DType::F32>(p, vector, a.stream); break;
  }
}

__global__ void to_f16_kernel(const float* __restrict__ x, __half* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __float2half_rn(x[i]);
}

// x = hi + lo in bf16 to 2^-16: bf16 alone (2^-8) would be the coarsest rounding of the whole forward.
__global__ void to_bf16_pair_kernel(const float* __restrict__ x, __nv_bfloat16* __restrict__ hi,
                                    __nv_bfloat16* __restrict__ lo, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const __nv_bfloat16 h = __float2bfloat16_rn(x[i]);
    hi[i] = h;
    lo[i] = __float2bfloat16_rn(x[i] - __bfloat162float(h));
  }
}

__global__ void dequantize_int8_kernel(const int8_t* __restrict__ q, const uint16_t* __restrict__ scales,
                                       int64_t group_size, int64_t cols, int64_t n, __half* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / cols, col = i % cols;
    out[i] = __float2half_rn(float(q[i]) * fp16_bits_to_float(scales[row * (cols / group_size) + col / group_size]));
  }
}

__global__ void add_bias_kernel(float* __restrict__ y, const float* __restrict__ bias, int64_t n, int64_t n_out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += bias[i % n_out];
}

unsigned grid_for(int64_t n) { return unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536)); }

void gemm_launch(const MatmulArgs& a, const float* x) {
  GemmContext& g = *a.gemm;
  const DeviceMatrix& w = a.weight;
  KILN_CHECK(a.n_tokens <= g.max_tokens() && w.cols <= g.max_n_in(),
             "cuda matmul: {} tokens of {} inputs exceed the GEMM workspace ({} of {})", a.n_tokens, w.cols,
             g.max_tokens(), g.max_n_in());
  KILN_CHECK(w.dtype != DType::I8 || w.rows * w.cols <= g.max_int8_elems(),
             "cuda matmul: an int8 weight of {} values exceeds the GEMM workspace of {}", w.rows * w.cols,
             g.max_int8_elems());
  const int64_t n_x = a.n_tokens * w.cols;
  const void* w_in = w.data;
  const void* x_in = x;
  const void* x_lo = nullptr;  // bf16: the second half of the split x
  cudaDataType type = CUDA_R_32F;
  if (w.dtype == DType::F16 || w.dtype == DType::I8) {
    to_f16_kernel<<<grid_for(n_x), kThreads, 0, a.stream>>>(x, static_cast<__half*>(g.x16()), n_x);
    KILN_CUDA_CHECK_LAUNCH();
    x_in = g.x16();
    type = CUDA_R_16F;
  } else if (w.dtype == DType::BF16) {
    auto* hi = static_cast<__nv_bfloat16*>(g.x16());
    to_bf16_pair_kernel<<<grid_for(n_x), kThreads, 0, a.stream>>>(x, hi, hi + n_x, n_x);
    KILN_CUDA_CHECK_LAUNCH();
    x_in = hi;
    x_lo = hi + n_x;
    type = CUDA_R_16BF;
  }
  if (w.dtype == DType::I8) {
    const int64_t n_w = w.rows * w.cols;
    dequantize_int8_kernel<<<grid_for(n_w), kThreads, 0, a.stream>>>(
        static_cast<const int8_t*>(w.data), w.scales, w.group_size, w.cols, n_w, static_cast<__half*>(g.w16()));
    KILN_CUDA_CHECK_LAUNCH();
    w_in = g.w16();
  }
  KILN_CUBLAS_CHECK(cublasSetStream(g.handle(), a.stream));
  // Setting the stream resets the workspace to cuBLAS's own pool; ours keeps it from allocating.
  KILN_CUBLAS_CHECK(cublasSetWorkspace(g.handle(), g.cublas_workspace(), g.cublas_workspace_bytes()));
  const float alpha = 1.0f, zero = 0.0f, one = 1.0f;
  // Column-major view: y^T [n_out, n_tokens] = W [n_in, n_out]^T x^T [n_in, n_tokens].
  KILN_CUBLAS_CHECK(cublasGemmEx(g.handle(), CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), int(a.n_tokens), int(w.cols),
                                 &alpha, w_in, type, int(w.cols), x_in, type, int(w.cols), &zero, a.y, CUDA_R_32F,
                                 int(w.rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  if (x_lo != nullptr)
    KILN_CUBLAS_CHECK(cublasGemmEx(g.handle(), CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), int(a.n_tokens), int(w.cols),
                                   &alpha, w_in, type, int(w.cols), x_lo, type, int(w.cols), &one, a.y, CUDA_R_32F,
                                   int(w.rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  if (a.bias != nullptr) {
    const int64_t n_y = a.n_tokens * w.rows;
    add_bias_kernel<<<grid_for(n_y), kThreads, 0, a.stream>>>(a.y, a.bias, n_y, w.rows);
    KILN_CUDA_CHECK_LAUNCH();
  }
}

void check_args(const MatmulArgs& a) {
  const DeviceMatrix& w = a.weight;
  KILN_CHECK(w.rows > 0 && w.cols > 0 && w.rows < (int64_t(1) << 31) && w.cols < (int64_t(1) << 31),
             "cuda matmul: weight shape [{}, {}] is empty or too large", w.rows, w.cols);
  KILN_CHECK(w.dtype == DType::F32 || w.dtype == DType::F16 || w.dtype == DType::BF16 || w.dtype == DType::I8,
             "cuda matmul: dtype {} is not a weight dtype", dtype_name(w.dtype));
  KILN_CHECK(w.data != nullptr, "cuda matmul: the weight has no data");
  if (w.dtype == DType::I8)
    KILN_CHECK(w.scales != nullptr && w.group_size > 0 && w.cols % w.group_size == 0,
               "cuda matmul: int8 weight [{}, {}] lacks scales or has group size {} that does not divide its columns",
               w.rows, w.cols, w.group_size);
  KILN_CHECK(a.n_tokens >= 0 && a.n_tokens < (int64_t(1) << 31), "cuda matmul: n_tokens is {}", a.n_tokens);
  if (a.n_tokens == 0) return;
  KILN_CHECK(a.x != nullptr && a.y != nullptr, "cuda matmul: x or y is null");
  KILN_CHECK(!a.norm.enabled || (a.norm.weight != nullptr && a.norm.out != nullptr),
             "cuda matmul: the input norm needs its weight and an output");
  KILN_CHECK(a.n_tokens <= kGemvMaxTokens || a.gemm != nullptr, "cuda matmul: {} tokens need a GEMM context",
             a.n_tokens);
}

}  // namespace

size_t gemm_workspace_bytes(int64_t max_tokens, int64_t max_n_in, int64_t max_int8_elems) {
  return kCublasWorkspaceBytes + align256(size_t(max_tokens) * size_t(max_n_in) * 4) +
         align256(size_t(max_int8_elems) * 2);
}

GemmContext::GemmContext(void* workspace, size_t bytes, int64_t max_tokens, int64_t max_n_in, int64_t max_int8_elems)
    : workspace_(static_cast<char*>(workspace)),
      max_tokens_(max_tokens),
      max_n_in_(max_n_in),
      max_int8_elems_(max_int8_elems) {
  KILN_CHECK(workspace != nullptr && bytes >= gemm_workspace_bytes(max_tokens, max_n_in, max_int8_elems),
             "GEMM workspace of {} bytes is smaller than the {} it needs", bytes,
             gemm_workspace_bytes(max_tokens, max_n_in, max_int8_elems));
  KILN_CUBLAS_CHECK(cublasCreate(&handle_));
}

GemmContext::~GemmContext() {
  if (handle_ != nullptr) cublasDestroy(handle_);
}

size_t GemmContext::cublas_workspace_bytes() const { return kCublasWorkspaceBytes; }
void* GemmContext::x16() const { return workspace_ + kCublasWorkspaceBytes; }
void* GemmContext::w16() const {
  return workspace_ + kCublasWorkspaceBytes + align256(size_t(max_tokens_) * size_t(max_n_in_) * 4);
}

void matmul(const MatmulArgs& a) {
  check_args(a);
  if (a.n_tokens == 0) return;
  const float* x = a.x;
  const bool gemv = a.n_tokens <= kGemvMaxTokens;
  const bool fuse_norm = a.norm.enabled && gemv &&
                         size_t(a.n_tokens) * size_t(a.weight.cols) * sizeof(float) <= kFusedNormMaxBytes &&
                         size_t(a.weight.rows) * size_t(a.weight.cols) * dtype_bytes(a.weight.dtype) <=
                             kFusedNormMaxWeightBytes;
  if (a.norm.enabled && !fuse_norm) {
    NormArgs n;
    n.kind = a.norm.kind;
    n.x = a.x;
    n.weight = a.norm.weight;
    n.bias = a.norm.bias;
    n.y = a.norm.out;
    n.n_tokens = a.n_tokens;
    n.dim = a.weight.cols;
    n.eps = a.norm.eps;
    n.stream = a.stream;
    norm(n);
    x = a.norm.out;
  }
  if (gemv) gemv_launch(a, x, fuse_norm);
  else gemm_launch(a, x);
}

}  // namespace kiln::cuda
