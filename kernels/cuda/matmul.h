// y = x · Wᵀ (+ bias) for every weight dtype (f32, f16, bf16, int8 with group scales), activations f32.
// The CUDA twin of kernels/cpu/matmul.h.
//
// Up to kGemvMaxTokens tokens (decode): a GEMV kernel, one warp per output row, 16-byte weight loads,
// several in flight per lane; f16/bf16/int8 are widened (int8 dequantized with its group scale) in
// registers and accumulated in f32 against the f32 x. It can normalise x itself (RMSNorm/LayerNorm
// fused into the GEMV input), which saves a launch and a pass over x for the QKV projection.
// More tokens (prefill): cuBLAS with f32 accumulation. f32 weights run an f32 GEMM (no TF32); f16
// weights multiply x rounded to f16; bf16 weights multiply x split into two bf16 terms (hi + lo, two
// GEMMs), as one bf16 rounding would be the coarsest of the forward; int8 weights are first dequantized
// to f16 into the workspace, one weight at a time (prefill only: decode never makes a dequantized copy),
// and multiply x rounded to f16.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "engine/model_config.h"
#include "kernels/cuda/device_matrix.h"

namespace kiln::cuda {

inline constexpr int64_t kGemvMaxTokens = 8;

// Owns the cuBLAS handle; the workspace is memory the caller owns, gemm_workspace_bytes(...) bytes.
class GemmContext {
 public:
  GemmContext(void* workspace, size_t bytes, int64_t max_tokens, int64_t max_n_in, int64_t max_int8_elems);
  ~GemmContext();
  GemmContext(const GemmContext&) = delete;
  GemmContext& operator=(const GemmContext&) = delete;

  cublasHandle_t handle() const { return handle_; }
  void* cublas_workspace() const { return workspace_; }
  size_t cublas_workspace_bytes() const;
  void* x16() const;  // [2, max_tokens, max_n_in] f16, or bf16 hi and lo
  void* w16() const;  // [max_int8_elems] f16
  int64_t max_tokens() const { return max_tokens_; }
  int64_t max_n_in() const { return max_n_in_; }
  int64_t max_int8_elems() const { return max_int8_elems_; }

 private:
  cublasHandle_t handle_ = nullptr;
  char* workspace_ = nullptr;
  int64_t max_tokens_, max_n_in_, max_int8_elems_;
};

// Bytes of the workspace a GemmContext needs: cuBLAS's own, x in 16 bits (two terms), one int8 weight
// dequantized.
size_t gemm_workspace_bytes(int64_t max_tokens, int64_t max_n_in, int64_t max_int8_elems);

// Optional normalisation of x before the product: y = W · norm(x), and norm(x) is written to `out`.
struct InputNorm {
  bool enabled = false;
  NormKind kind = NormKind::Rms;
  const float* weight = nullptr;  // [n_in]
  const float* bias = nullptr;    // [n_in] or nullptr
  float eps = 1e-5f;
  float* out = nullptr;           // [n_tokens, n_in]
};

struct MatmulArgs {
  DeviceMatrix weight;             // [n_out, n_in]
  const float* x = nullptr;        // [n_tokens, n_in]
  float* y = nullptr;              // [n_tokens, n_out], must not overlap x
  const float* bias = nullptr;     // [n_out] or nullptr
  int64_t n_tokens = 0;
  InputNorm norm;
  GemmContext* gemm = nullptr;     // needed above kGemvMaxTokens tokens
  bool force_generic = false;      // tests: the element-wise GEMV (the path for unaligned shapes)
  cudaStream_t stream = nullptr;
};

void matmul(const MatmulArgs& args);

}  // namespace kiln::cuda
