// Causal attention of query rows from many sequences over a paged KV cache (f32, f16 or fp8), and the store of
// each row's keys and values into its sequence's block (with the rotary embedding at each row's own
// position). GQA, ALiBi, local window. The CUDA twin of kernels/cpu/paged_attention.h; the caller checks
// block ids and positions on the host (the tables live on the device).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/kv_dtype.h"
#include "kernels/cuda/rotary.h"

namespace kiln::cuda {

inline constexpr int kPagedAttentionMaxHeadDim = 256;
// Keys per split of a row's attention, unless a call says otherwise: fixed for a caller, so the split
// boundaries depend on the row's position alone.
inline constexpr int64_t kPagedAttentionChunkKeys = 256;

// The pool and block tables shared by every call. Position j of sequence s is slot j % block_positions of
// block block_table[s * max_blocks_per_seq + j / block_positions].
struct PagedKvLayout {
  void* k_pool = nullptr;              // [n_blocks, n_kv_heads, block_positions, head_dim] of dtype (one layer)
  void* v_pool = nullptr;              // [n_blocks, n_kv_heads, block_positions, head_dim] of dtype
  const int32_t* block_table = nullptr;  // device [n_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq = 0;
  int64_t block_positions = 16;
  int n_kv_heads = 1;
  int head_dim = 64;                   // <= kPagedAttentionMaxHeadDim
  KvDType dtype = KvDType::F32;
};

// Splits the fused QKV projection of each row: the query rotated (in place, or to q_out), the key rotated
// and stored, the value stored, each at the row's own position. Rotary semantics as rotary_kv_append
// (RotaryMode, theta, position_scale, rotary_dim; angles in double).
struct PagedRotaryStoreArgs {
  PagedKvLayout kv;
  float* qkv = nullptr;                // [n_rows, qkv_stride]: q [n_heads, head_dim], k, v [n_kv_heads, head_dim]
  int64_t qkv_stride = 0;
  float* q_out = nullptr;              // [n_rows, n_heads, head_dim], or nullptr: q rotated in place in qkv
  float* k_out = nullptr;              // [n_rows, n_kv_heads, head_dim] or nullptr (debugging output)
  const int32_t* row_seq = nullptr;       // device [n_rows]
  const int32_t* row_position = nullptr;  // device [n_rows]
  int64_t n_rows = 0;
  int n_heads = 1;
  RotaryMode mode = RotaryMode::RotateHalf;
  int rotary_dim = 0;                  // even, <= head_dim
  float theta = 10000.0f;
  float position_scale = 1.0f;
  cudaStream_t stream = nullptr;
};

struct PagedAttentionArgs {
  PagedKvLayout kv;
  const float* q = nullptr;            // [n_rows, n_heads, head_dim], rows q_stride floats apart
  int64_t q_stride = 0;                // 0: n_heads * head_dim (set qkv_stride to read q in place from the QKV rows)
  float* out = nullptr;                // [n_rows, n_heads, head_dim]
  __half* out16 = nullptr;             // [n_rows, n_heads, head_dim]: out in f16 as well, or nullptr
  const int32_t* row_seq = nullptr;       // device [n_rows]
  const int32_t* row_position = nullptr;  // device [n_rows]: a row sees its sequence's keys [0, position]
  int64_t n_rows = 0;
  int n_heads = 1;                     // query head h reads kv head h / (n_heads / n_kv_heads)
  float scale = 0.125f;
  int64_t window = 0;                  // > 0: a row at p sees keys in (p - window, p]
  const float* alibi_slopes = nullptr;  // device [n_heads] or nullptr: score += slope[h] * (key - p)
  // Split the keys of each row into chunks of chunk_keys (many blocks per row, then a merge): partial holds
  // paged_attention_partial_floats(...) floats. nullptr: one block walks a row's keys.
  float* partial = nullptr;
  // Keys of a split: fewer, more blocks for few rows; more, less work folding and merging for many rows.
  int64_t chunk_keys = kPagedAttentionChunkKeys;
  int64_t max_keys = 0;                // > 0: every row position < max_keys (fewer split blocks); 0: the layout's capacity
  // device [n_rows] or nullptr: rows whose entry is non-zero are left alone (paged_prompt_attention's)
  const int32_t* skip_rows = nullptr;
  cudaStream_t stream = nullptr;
};

void paged_rotary_kv_store(const PagedRotaryStoreArgs& args);
// Floats of the partial buffer for n_rows rows whose positions stay below max_keys.
size_t paged_attention_partial_floats(int64_t n_rows, int n_heads, int head_dim, int64_t max_keys,
                                      int64_t chunk_keys = kPagedAttentionChunkKeys);
// A row's output never depends on the other rows of the call: its split boundaries are multiples of
// chunk_keys, and it is computed alike whatever the batch holds.
void paged_attention(const PagedAttentionArgs& args);

// Prompt rows on the tensor cores: tiles of consecutive rows of one sequence share each tile of its keys
// (paged_prompt_attention.cu). The queries and probabilities are rounded to f16, so a row differs from
// paged_attention's by ~2^-11 relative; but it is bit for bit the same in any tile of any call.
// True when the layout and heads allow it: an f16 pool with head_dim a multiple of 8, or an fp8 pool with
// head_dim a multiple of 16 (the f16 values it holds, read exactly), head_dim up to 128, and at most
// 64 query heads a kv head.
bool paged_prompt_attention_supported(const PagedKvLayout& kv, int n_heads);
// Rows a tile holds at most: 64 query slots over the query heads of a kv head.
int paged_prompt_tile_rows(int n_heads, int n_kv_heads);
// args as for paged_attention (skip_rows, partial, chunk_keys and max_keys unused); tiles: device
// [n_tiles, 2], each a first row and a row count (1 to paged_prompt_tile_rows), the rows consecutive
// positions of one sequence.
void paged_prompt_attention(const PagedAttentionArgs& args, const int32_t* tiles, int64_t n_tiles);

}  // namespace kiln::cuda
