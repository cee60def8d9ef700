// Prompt attention over an f16 KV cache on the tensor cores, through cuBLAS: per head, the scores
// S = Q Kᵀ (f16 inputs, f32 sums), a softmax kernel that applies the mask (causal or bidirectional, local
// window), ALiBi and the scale and writes the probabilities P in f16, then out = P V (f32 sums). The tiled
// kernel of attention.h does the same on the CUDA cores, far slower for long prompts; this path rounds the
// queries and the probabilities to f16 too (2^-11 relative, as the cache's keys and values already are).
// Rows go in passes of at most `rows_per_pass`, so S and P take a fixed workspace whatever the prompt.
#pragma once

#include <cublas_v2.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/attention.h"

namespace kiln::cuda {

struct AttentionGemmSpace {
  cublasHandle_t handle = nullptr;
  void* cublas_workspace = nullptr;  // cuBLAS's own scratch (set on the handle for each call)
  size_t cublas_workspace_bytes = 0;
  void* scratch = nullptr;           // attention_gemm_bytes(...) bytes
  int64_t max_tokens = 0;            // query tokens a call takes at most
  int64_t max_keys = 0;              // keys a call sees at most (the cache's positions)
  int64_t rows_per_pass = 0;         // from attention_gemm_rows_per_pass
};

// Query tokens per pass so that S and P of every head fit `budget` bytes (at most max_tokens); 0 when fewer
// than 16 would fit (the tiled kernel is then the better choice).
int64_t attention_gemm_rows_per_pass(int64_t max_tokens, int n_heads, int64_t max_keys, size_t budget);
// Scratch bytes: the queries in f16, then S (f32) and P (f16) of one pass.
size_t attention_gemm_bytes(int64_t max_tokens, int n_heads, int head_dim, int64_t max_keys, int64_t rows_per_pass);

// args as for attention(), with an f16 cache, n_splits ignored, and first_position_host the value of
// *args.first_position (the GEMM shapes depend on it).
void attention_gemm(const AttentionArgs& args, int64_t first_position_host, const AttentionGemmSpace& space);

}  // namespace kiln::cuda
