#include "kernels/cuda/attention_gemm.h"

#include <cuda_fp16.h>

#include <algorithm>

#include "engine/error.h"
#include "kernels/cuda/cublas_loader.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/matmul.h"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 256;

struct SoftmaxParams {
  const float* s;       // [n_heads][rows][n_keys] raw scores
  __half* p;            // the same layout, probabilities
  int64_t n_keys, rows;
  const int32_t* first_position;  // device: the position of the call's first token
  int64_t row0;                   // the pass's first row within the call
  float qk_scale;                 // scale * log2(e)
  const float* alibi_slopes;      // [n_heads] or nullptr
  bool causal;
  int64_t window;
};

// Block (row blockIdx.x, head blockIdx.y): the row's visible scores, scaled (log2 domain) and offset by
// ALiBi, become probabilities; hidden keys get 0. Three passes over the row (max, sum, write); it is in L2.
__global__ void __launch_bounds__(kThreads) masked_softmax_kernel(SoftmaxParams a) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x, h = blockIdx.y;
  const float* s = a.s + (h * a.rows + r) * a.n_keys;
  __half* p = a.p + (h * a.rows + r) * a.n_keys;
  const int64_t pos = *a.first_position + a.row0 + r;
  const float slope = a.alibi_slopes != nullptr ? a.alibi_slopes[h] * kLog2e : 0.0f;
  const auto visible = [&](int64_t key) {
    return (!a.causal || key <= pos) && (a.window <= 0 || (key > pos - a.window && (a.causal || key < pos + a.window)));
  };
  const auto score = [&](int64_t key) { return s[key] * a.qk_scale + slope * float(key - pos); };
  float big = -INFINITY;
  for (int64_t key = threadIdx.x; key < a.n_keys; key += blockDim.x)
    if (visible(key)) big = fmaxf(big, score(key));
  big = block_max(big, scratch);
  float sum = 0.0f;
  for (int64_t key = threadIdx.x; key < a.n_keys; key += blockDim.x)
    if (visible(key)) sum += exp2f(score(key) - big);
  sum = block_sum(sum, scratch);
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (int64_t key = threadIdx.x; key < a.n_keys; key += blockDim.x)
    p[key] = __float2half_rn(visible(key) ? exp2f(score(key) - big) * inv : 0.0f);
}

// The scratch's parts: the queries in f16, then S (f32) and P (f16) of one pass.
struct Scratch {
  __half* q16;
  float* scores;
  __half* probs;
  size_t bytes;
};

Scratch scratch_layout(void* base, int64_t max_tokens, int n_heads, int head_dim, int64_t max_keys,
                       int64_t rows_per_pass) {
  const size_t q = size_t(max_tokens) * size_t(n_heads) * size_t(head_dim) * sizeof(__half);
  const size_t scores = size_t(rows_per_pass) * size_t(n_heads) * size_t(max_keys);
  char* p = static_cast<char*>(base);
  const size_t scores_at = align256(q), probs_at = scores_at + align256(scores * sizeof(float));
  return {reinterpret_cast<__half*>(p), reinterpret_cast<float*>(p + scores_at), reinterpret_cast<__half*>(p + probs_at),
          probs_at + align256(scores * sizeof(__half))};
}

}  // namespace

int64_t attention_gemm_rows_per_pass(int64_t max_tokens, int n_heads, int64_t max_keys, size_t budget) {
  const size_t per_row = size_t(n_heads) * size_t(max_keys) * (sizeof(float) + sizeof(__half));
  const int64_t rows = std::min<int64_t>(max_tokens, int64_t(budget / std::max<size_t>(per_row, 1)));
  return rows >= 16 ? rows : 0;
}

size_t attention_gemm_bytes(int64_t max_tokens, int n_heads, int head_dim, int64_t max_keys, int64_t rows_per_pass) {
  return scratch_layout(nullptr, max_tokens, n_heads, head_dim, max_keys, rows_per_pass).bytes;
}

void attention_gemm(const AttentionArgs& a, int64_t first_position_host, const AttentionGemmSpace& g) {
  const int64_t n = a.n_tokens, n_keys = first_position_host + n, D = a.head_dim;
  KILN_CHECK(a.kv_dtype == KvDType::F16 && g.handle != nullptr && g.scratch != nullptr && g.rows_per_pass >= 1,
             "cuda attention_gemm: needs an f16 cache, a cuBLAS handle and its scratch");
  KILN_CHECK(n >= 1 && n <= g.max_tokens && first_position_host >= 0 && n_keys <= g.max_keys && n_keys <= a.kv_stride,
             "cuda attention_gemm: {} tokens at position {} exceed its space ({} tokens, {} keys)", n,
             first_position_host, g.max_tokens, g.max_keys);
  KILN_CHECK(a.n_heads % a.n_kv_heads == 0 && D >= 1 && n_keys < (int64_t(1) << 31),
             "cuda attention_gemm: bad shape: {} heads, {} kv heads, head_dim {}", a.n_heads, a.n_kv_heads, D);
  const int group = a.n_heads / a.n_kv_heads;
  const Scratch s = scratch_layout(g.scratch, g.max_tokens, a.n_heads, int(D), g.max_keys, g.rows_per_pass);
  __half* q16 = s.q16;
  float* scores = s.scores;
  __half* probs = s.probs;
  to_f16(a.q, q16, n * a.n_heads * D, a.stream);
  KILN_CUBLAS_CHECK(cublas().set_stream(g.handle, a.stream));
  KILN_CUBLAS_CHECK(cublas().set_workspace(g.handle, g.cublas_workspace, g.cublas_workspace_bytes));
  const float one = 1.0f, zero = 0.0f;
  const long long kv_stride = a.kv_stride * D;  // elements between kv heads in the cache
  for (int64_t t0 = 0; t0 < n; t0 += g.rows_per_pass) {
    const int64_t rows = std::min(g.rows_per_pass, n - t0);
    const long long per_head = rows * n_keys;  // S and P of one head: [rows][n_keys]
    // Row-major S_h [rows, n_keys] = Q_h K_gᵀ, as column-major S_hᵀ = K_g Q_hᵀ; one batched call per
    // query head within the group, batched over the kv heads.
    for (int j = 0; j < group; ++j)
      KILN_CUBLAS_CHECK(cublas().gemm_strided_batched_ex(
          g.handle, CUBLAS_OP_T, CUBLAS_OP_N, int(n_keys), int(rows), int(D), &one, a.k_cache, CUDA_R_16F, int(D),
          kv_stride, q16 + (t0 * a.n_heads + j) * D, CUDA_R_16F, int(a.n_heads * D), group * D, &zero,
          scores + j * per_head, CUDA_R_32F, int(n_keys), group * per_head, a.n_kv_heads, CUBLAS_COMPUTE_32F,
          CUBLAS_GEMM_DEFAULT));
    SoftmaxParams sp{scores, probs, n_keys, rows, a.first_position, t0, a.scale * kLog2e, a.alibi_slopes, a.causal,
                     a.window};
    masked_softmax_kernel<<<dim3(unsigned(rows), unsigned(a.n_heads)), kThreads, 0, a.stream>>>(sp);
    KILN_CUDA_CHECK_LAUNCH();
    // out_h [rows, D] (row stride n_heads * D) = P_h V_g, as column-major out_hᵀ = V_gᵀ P_hᵀ.
    for (int j = 0; j < group; ++j)
      KILN_CUBLAS_CHECK(cublas().gemm_strided_batched_ex(
          g.handle, CUBLAS_OP_N, CUBLAS_OP_N, int(D), int(rows), int(n_keys), &one, a.v_cache, CUDA_R_16F, int(D),
          kv_stride, probs + j * per_head, CUDA_R_16F, int(n_keys), group * per_head, &zero,
          a.out + (t0 * a.n_heads + j) * D, CUDA_R_32F, int(a.n_heads * D), group * D, a.n_kv_heads,
          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace kiln::cuda
