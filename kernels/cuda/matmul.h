// y = x · Wᵀ (+ bias) for every weight dtype (f32, f16, bf16, int8 with group scales), activations f32.
// The CUDA twin of kernels/cpu/matmul.h.
//
// Up to kGemvMaxTokens tokens (decode): the GEMV of kernels/cuda/gemv.h (16-byte weight loads, several
// rows per warp; the input norm fused; for int8 weights x quantized to int8 per group as the CPU does and
// integer dot products). It can also add a residual or apply a gated activation to its outputs, each
// saving a launch.
// More tokens (prefill): cuBLAS with f32 accumulation. f32 weights run an f32 GEMM (no TF32); f16
// weights multiply x rounded to f16; bf16 weights multiply x split into two bf16 terms (hi + lo, two
// GEMMs), as one bf16 rounding would be the coarsest of the forward; int8 weights are first dequantized
// to f16 into the workspace, one weight at a time (prefill only: decode never makes a dequantized copy),
// and multiply x rounded to f16. x reaches f16 in the kernel that makes it where it can: the input norm
// writes it, and a caller may pass it (x16, from the activation or the batch's attention before); else a
// conversion pass. The residual is accumulated onto by cuBLAS itself (y = W x + y, copied into y first
// unless it is y); a gated product goes through the context's gate_up buffer and the activation kernel.
// A product split over its inputs (k_split) is left in parts for the caller to add.
#pragma once

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "engine/model_config.h"
#include "kernels/cuda/activation.h"
#include "kernels/cuda/device_matrix.h"

namespace kiln::cuda {

inline constexpr int64_t kGemvMaxTokens = 8;

// Owns the cuBLAS handle; the workspace is memory the caller owns, gemm_workspace_bytes(...) bytes.
class GemmContext {
 public:
  // max_gated_out: rows of the largest weight run with `gated` above kGemvMaxTokens tokens (2 * ffn), or 0.
  GemmContext(void* workspace, size_t bytes, int64_t max_tokens, int64_t max_n_in, int64_t max_int8_elems,
              int64_t max_gated_out = 0);
  ~GemmContext();
  GemmContext(const GemmContext&) = delete;
  GemmContext& operator=(const GemmContext&) = delete;

  cublasHandle_t handle() const { return handle_; }
  void* cublas_workspace() const { return workspace_; }
  size_t cublas_workspace_bytes() const;
  void* x16() const;  // [2, max_tokens, max_n_in] f16, or bf16 hi and lo
  void* w16() const;  // [max_int8_elems] f16
  float* gate_up() const;  // [max_tokens, max_gated_out]: the gated product before its activation
  int64_t max_tokens() const { return max_tokens_; }
  int64_t max_n_in() const { return max_n_in_; }
  int64_t max_int8_elems() const { return max_int8_elems_; }
  int64_t max_gated_out() const { return max_gated_out_; }

 private:
  cublasHandle_t handle_ = nullptr;
  char* workspace_ = nullptr;
  int64_t max_tokens_, max_n_in_, max_int8_elems_, max_gated_out_;
};

// Bytes of the workspace a GemmContext needs: cuBLAS's own, x in 16 bits (two terms), one int8 weight
// dequantized, the gated product.
size_t gemm_workspace_bytes(int64_t max_tokens, int64_t max_n_in, int64_t max_int8_elems,
                            int64_t max_gated_out = 0);

// Optional normalisation of x before the product: y = W · norm(x), and norm(x) is written to `out`.
struct InputNorm {
  bool enabled = false;
  NormKind kind = NormKind::Rms;
  const float* weight = nullptr;  // [n_in]
  const float* bias = nullptr;    // [n_in] or nullptr
  float eps = 1e-5f;
  float* out = nullptr;           // [n_tokens, n_in]
};

// With `gated` the weight is the fused [gate | up] one, [2 * ffn, n_in] (gate rows, then up rows), and
// y = act(gate + gate bias) * (up + up bias): [n_tokens, ffn]. Not combined with a residual.
struct GatedOutput {
  bool enabled = false;
  Activation act = Activation::Silu;
};

struct MatmulArgs {
  DeviceMatrix weight;             // [n_out, n_in]
  const float* x = nullptr;        // [n_tokens, n_in]
  float* y = nullptr;              // [n_tokens, n_out] ([n_tokens, n_out / 2] gated), must not overlap x
  const float* bias = nullptr;     // [n_out] or nullptr
  const float* residual = nullptr; // [n_tokens, n_out] or nullptr: y = residual + W x (+ bias); may equal y
  // [n_tokens, n_in] or nullptr: x already rounded to f16, which the GEMM path reads instead of converting
  // x for f16 and int8 weights (x itself is still read by the GEMV and for other weights). Not with norm.
  const __half* x16 = nullptr;
  int64_t n_tokens = 0;
  InputNorm norm;
  GatedOutput gated;
  // Needed above kGemvMaxTokens tokens; a one-token int8 GEMV uses its x16 scratch for x quantized once.
  GemmContext* gemm = nullptr;
  // GEMM path, int8 weights: the context's f16 copy already holds this weight (the call before, on the
  // same stream, dequantized it): the later calls of one matmul split into several.
  bool weight_dequantized = false;
  bool force_generic = false;      // tests: the element-wise GEMV (the path for unaligned shapes)
  // GEMM path: k_split > 1 writes k_split products, each over n_in / k_split consecutive inputs, part p at
  // y + p * split_stride, and adds nothing to them (no residual, bias or gate: the caller adds them). One
  // strided-batched cuBLAS call: a weight with few outputs gets more blocks to stream it, and no reduction
  // kernel runs. n_in / k_split must be a multiple of 8.
  int k_split = 1;
  int64_t split_stride = 0;
  // One token: f16, bf16 and int8 weights may stream through shared memory (gemv_streamed.cu) where that
  // applies; false keeps the register GEMV (the faster one beside attention over many keys).
  bool stream_weights = true;
  cudaStream_t stream = nullptr;
};

void matmul(const MatmulArgs& args);

// y = x rounded to f16, n values, on `stream`.
void to_f16(const float* x, __half* y, int64_t n, cudaStream_t stream);

}  // namespace kiln::cuda
