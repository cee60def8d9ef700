// Causal attention of query rows from many sequences over a paged KV cache (f32), and the store of each
// row's keys and values into its sequence's block. GQA, ALiBi, local window. The CUDA twin of
// kernels/cpu/paged_attention.h; the caller checks block ids and positions on the host (the tables live
// on the device).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kiln::cuda {

inline constexpr int kPagedAttentionMaxHeadDim = 256;

// The pool and block tables shared by both calls. Position j of sequence s is slot j % block_positions of
// block block_table[s * max_blocks_per_seq + j / block_positions].
struct PagedKvLayout {
  float* k_pool = nullptr;             // [n_blocks, n_kv_heads, block_positions, head_dim] (one layer)
  float* v_pool = nullptr;             // [n_blocks, n_kv_heads, block_positions, head_dim]
  const int32_t* block_table = nullptr;  // device [n_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq = 0;
  int64_t block_positions = 16;
  int n_kv_heads = 1;
  int head_dim = 64;                   // <= kPagedAttentionMaxHeadDim
};

struct PagedKvStoreArgs {
  PagedKvLayout kv;
  const float* k = nullptr;            // [n_rows, n_kv_heads, head_dim], rows k_stride floats apart
  int64_t k_stride = 0;
  const float* v = nullptr;            // [n_rows, n_kv_heads, head_dim], rows v_stride floats apart
  int64_t v_stride = 0;
  const int32_t* row_seq = nullptr;       // device [n_rows]
  const int32_t* row_position = nullptr;  // device [n_rows]
  int64_t n_rows = 0;
  cudaStream_t stream = nullptr;
};

struct PagedAttentionArgs {
  PagedKvLayout kv;
  const float* q = nullptr;            // [n_rows, n_heads, head_dim]
  float* out = nullptr;                // [n_rows, n_heads, head_dim]
  const int32_t* row_seq = nullptr;       // device [n_rows]
  const int32_t* row_position = nullptr;  // device [n_rows]: a row sees its sequence's keys [0, position]
  int64_t n_rows = 0;
  int n_heads = 1;                     // query head h reads kv head h / (n_heads / n_kv_heads)
  float scale = 0.125f;
  int64_t window = 0;                  // > 0: a row at p sees keys in (p - window, p]
  const float* alibi_slopes = nullptr;  // device [n_heads] or nullptr: score += slope[h] * (key - p)
  cudaStream_t stream = nullptr;
};

void paged_kv_store(const PagedKvStoreArgs& args);
// One thread block per (row, kv head, group of its query heads) walks the row's keys in order, so a row's
// output never depends on the other rows of the call.
void paged_attention(const PagedAttentionArgs& args);

}  // namespace kiln::cuda
