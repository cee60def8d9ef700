#include "kernels/cuda/matmul.h"

#include <algorithm>
#include <cstdint>

#include "engine/error.h"
#include "kernels/cuda/cublas_loader.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/norm.h"

namespace kiln::cuda {
namespace {

constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;
constexpr int kThreads = 256;

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

// The call's shapes against the GEMM context's buffers (before anything writes them).
void check_gemm_fits(const MatmulArgs& a) {
  const GemmContext& g = *a.gemm;
  const DeviceMatrix& w = a.weight;
  KILN_CHECK(!a.gated.enabled || (w.rows <= g.max_gated_out() && a.n_tokens <= g.max_tokens()),
             "cuda matmul: a gated product of {} x {} exceeds the GEMM context's gate_up buffer ({} x {})",
             a.n_tokens, w.rows, g.max_tokens(), g.max_gated_out());
  KILN_CHECK(a.n_tokens <= g.max_tokens() && w.cols <= g.max_n_in(),
             "cuda matmul: {} tokens of {} inputs exceed the GEMM workspace ({} of {})", a.n_tokens, w.cols,
             g.max_tokens(), g.max_n_in());
  KILN_CHECK(w.dtype != DType::I8 || w.rows * w.cols <= g.max_int8_elems(),
             "cuda matmul: an int8 weight of {} values exceeds the GEMM workspace of {}", w.rows * w.cols,
             g.max_int8_elems());
}

bool reads_f16(DType dtype) { return dtype == DType::F16 || dtype == DType::I8; }

// cuBLAS, then the epilogue: a residual is copied into y first unless it is y, and accumulated onto (beta =
// 1); a gated product goes to the context's gate_up buffer and the activation kernel. x16: x in f16
// already (f16 and int8 weights), or nullptr.
void gemm_launch(const MatmulArgs& a, const float* x, const __half* x16) {
  GemmContext& g = *a.gemm;
  const DeviceMatrix& w = a.weight;
  const int64_t n_x = a.n_tokens * w.cols;
  const void* w_in = w.data;
  const void* x_in = x;
  const void* x_lo = nullptr;  // bf16: the second half of the split x
  cudaDataType type = CUDA_R_32F;
  if (reads_f16(w.dtype)) {
    if (x16 == nullptr) {
      to_f16(x, static_cast<__half*>(g.x16()), n_x, a.stream);
      x16 = static_cast<const __half*>(g.x16());
    }
    x_in = x16;
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
    if (!a.weight_dequantized) {
      const int64_t n_w = w.rows * w.cols;
      dequantize_int8_kernel<<<grid_for(n_w), kThreads, 0, a.stream>>>(
          static_cast<const int8_t*>(w.data), w.scales, w.group_size, w.cols, n_w, static_cast<__half*>(g.w16()));
      KILN_CUDA_CHECK_LAUNCH();
    }
    w_in = g.w16();
  }
  float* out = a.gated.enabled ? g.gate_up() : a.y;
  float beta = 0.0f;
  if (a.residual != nullptr) {
    if (a.residual != a.y)
      KILN_CUDA_CHECK(cudaMemcpyAsync(a.y, a.residual, size_t(a.n_tokens * w.rows) * sizeof(float),
                                      cudaMemcpyDeviceToDevice, a.stream));
    beta = 1.0f;
  }
  KILN_CUBLAS_CHECK(cublas().set_stream(g.handle(), a.stream));
  // Setting the stream resets the workspace to cuBLAS's own pool; ours keeps it from allocating.
  KILN_CUBLAS_CHECK(cublas().set_workspace(g.handle(), g.cublas_workspace(), g.cublas_workspace_bytes()));
  const float alpha = 1.0f, one = 1.0f;
  // Column-major view: y^T [n_out, n_tokens] = W [n_in, n_out]^T x^T [n_in, n_tokens].
  const int k = int(w.cols / a.k_split);
  const auto product = [&](const void* x_term, const float* beta_term) {
    if (a.k_split == 1)
      KILN_CUBLAS_CHECK(cublas().gemm_ex(g.handle(), CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), int(a.n_tokens), k,
                                         &alpha, w_in, type, int(w.cols), x_term, type, int(w.cols), beta_term, out,
                                         CUDA_R_32F, int(w.rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    else  // product p: W's and x's columns from p * k on (strides in elements), into out + p * split_stride
      KILN_CUBLAS_CHECK(cublas().gemm_strided_batched_ex(
          g.handle(), CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), int(a.n_tokens), k, &alpha, w_in, type, int(w.cols), k,
          x_term, type, int(w.cols), k, beta_term, out, CUDA_R_32F, int(w.rows), a.split_stride, a.k_split,
          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  product(x_in, &beta);
  if (x_lo != nullptr) product(x_lo, &one);
  if (a.bias != nullptr) {
    const int64_t n_y = a.n_tokens * w.rows;
    add_bias_kernel<<<grid_for(n_y), kThreads, 0, a.stream>>>(out, a.bias, n_y, w.rows);
    KILN_CUDA_CHECK_LAUNCH();
  }
  if (a.gated.enabled) {
    GatedActivationArgs act;
    act.gate_up = out;
    act.out = a.y;
    act.n_tokens = a.n_tokens;
    act.ffn = w.rows / 2;
    act.act = a.gated.act;
    act.stream = a.stream;
    gated_activation(act);
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
  KILN_CHECK(!a.gated.enabled || (w.rows % 2 == 0 && a.residual == nullptr),
             "cuda matmul: a gated product needs an even number of rows ({}) and no residual", w.rows);
  KILN_CHECK(a.x16 == nullptr || !a.norm.enabled, "cuda matmul: an f16 x and an input norm together");
  KILN_CHECK(a.k_split == 1 || (a.k_split > 1 && a.n_tokens > kGemvMaxTokens && w.cols % (8 * a.k_split) == 0 &&
                                a.residual == nullptr && a.bias == nullptr && !a.gated.enabled &&
                                a.split_stride >= a.n_tokens * w.rows),
             "cuda matmul: a product split {} ways over {} inputs needs more than {} tokens, parts of a multiple of 8 "
             "inputs, no residual, bias or gate, and parts {} apart of at least {} values",
             a.k_split, w.cols, kGemvMaxTokens, a.split_stride, a.n_tokens * w.rows);
}

}  // namespace

size_t gemm_workspace_bytes(int64_t max_tokens, int64_t max_n_in, int64_t max_int8_elems, int64_t max_gated_out) {
  return kCublasWorkspaceBytes + align256(size_t(max_tokens) * size_t(max_n_in) * 4) +
         align256(size_t(max_int8_elems) * 2) + align256(size_t(max_tokens) * size_t(max_gated_out) * 4);
}

GemmContext::GemmContext(void* workspace, size_t bytes, int64_t max_tokens, int64_t max_n_in, int64_t max_int8_elems,
                         int64_t max_gated_out)
    : workspace_(static_cast<char*>(workspace)),
      max_tokens_(max_tokens),
      max_n_in_(max_n_in),
      max_int8_elems_(max_int8_elems),
      max_gated_out_(max_gated_out) {
  const size_t needed = gemm_workspace_bytes(max_tokens, max_n_in, max_int8_elems, max_gated_out);
  KILN_CHECK(workspace != nullptr && bytes >= needed, "GEMM workspace of {} bytes is smaller than the {} it needs",
             bytes, needed);
  KILN_CUBLAS_CHECK(cublas().create(&handle_));
}

GemmContext::~GemmContext() {
  if (handle_ != nullptr) cublas().destroy(handle_);
}

size_t GemmContext::cublas_workspace_bytes() const { return kCublasWorkspaceBytes; }
void* GemmContext::x16() const { return workspace_ + kCublasWorkspaceBytes; }
void* GemmContext::w16() const {
  return workspace_ + kCublasWorkspaceBytes + align256(size_t(max_tokens_) * size_t(max_n_in_) * 4);
}
float* GemmContext::gate_up() const {
  return reinterpret_cast<float*>(static_cast<char*>(w16()) + align256(size_t(max_int8_elems_) * 2));
}

void to_f16(const float* x, __half* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  to_f16_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, y, n);
  KILN_CUDA_CHECK_LAUNCH();
}

void matmul(const MatmulArgs& a) {
  check_args(a);
  if (a.n_tokens == 0) return;
  if (a.n_tokens <= kGemvMaxTokens) return gemv(a);  // the norm is fused there
  check_gemm_fits(a);
  const float* x = a.x;
  const __half* x16 = reads_f16(a.weight.dtype) ? a.x16 : nullptr;
  if (a.norm.enabled) {
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
    if (reads_f16(a.weight.dtype)) n.y16 = static_cast<__half*>(a.gemm->x16());  // the GEMM's input, directly
    norm(n);
    x = a.norm.out;
    x16 = n.y16;
  }
  gemm_launch(a, x, x16);
}

}  // namespace kiln::cuda
